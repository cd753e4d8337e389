"""Who may use the dashboard, and how a form post is told from a forged one.

* **Token.** With a token (``BLOKRUN_UI_TOKEN``; required off loopback), every request must
  carry it: ``Authorization: Bearer <token>``, or the ``blokrun_ui`` cookie that visiting
  any page with ``?token=<token>`` sets (HttpOnly, SameSite=Strict). Compared in constant time.
* **CSRF.** Every page sets a random ``blokrun_csrf`` cookie (SameSite=Strict) and puts the
  same value in its forms; a POST must send it back as the ``csrf`` form field or the
  ``X-CSRF-Token`` header, equal to the cookie (double submit). A site that cannot read the
  cookie cannot forge the field.
"""

from __future__ import annotations

import hmac
import secrets
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from starlette.requests import Request

__all__ = ["CSRF_COOKIE", "TOKEN_COOKIE", "authorized", "csrf_ok", "new_csrf"]

TOKEN_COOKIE = "blokrun_ui"  # noqa: S105 (a cookie name)
CSRF_COOKIE = "blokrun_csrf"


def _same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


def authorized(request: Request, token: str | None) -> bool:
    """Whether the request carries the token (always, when there is none)."""
    if token is None:
        return True
    header = request.headers.get("authorization", "")
    if header.startswith("Bearer ") and _same(header[7:], token):
        return True
    given = request.query_params.get("token") or request.cookies.get(TOKEN_COOKIE) or ""
    return bool(given) and _same(given, token)


def new_csrf() -> str:
    return secrets.token_urlsafe(24)


def csrf_ok(request: Request, form: Any) -> bool:
    """The double-submit check of a POST (``form``: its parsed form, or a JSON body)."""
    cookie = request.cookies.get(CSRF_COOKIE, "")
    sent = request.headers.get("x-csrf-token") or ""
    if not sent and form is not None and hasattr(form, "get"):
        value = form.get("csrf")
        sent = value if isinstance(value, str) else ""
    return bool(cookie) and bool(sent) and _same(cookie, sent)
