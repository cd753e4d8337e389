"""Secrets never appear in a message, a log line or a traceback blokrun produces.

Two tools, used by every driver through the datasource wrapper, so no driver has its own:

* :func:`mask_url` -- a URL with its password replaced by ``***``, whatever characters the
  password holds (an unencoded ``/``, ``@``, ``#``, ``?`` or ``:`` included: the password is
  everything between the first ``:`` of the user part and the *last* ``@`` of the URL), and
  ``password=``/``token=``-style query parameters masked.
* :class:`Redactor` -- knows the secrets of one configuration (passwords in URLs, secret keys)
  in every form they may be printed in (raw, percent-encoded, percent-decoded, and the pieces
  a URL parser cuts an unencoded password into), and removes them from any text and from an
  exception and its whole ``__cause__``/``__context__`` chain. A library that quotes part of
  a URL it could not parse ("port could not be cast to integer value as 'Sup3r'") leaks
  nothing.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING
from urllib.parse import quote, unquote

if TYPE_CHECKING:
    from collections.abc import Iterable

__all__ = ["MASK", "Redactor", "mask_url", "unencoded_in_password", "url_secrets"]

MASK = "***"

_SECRET_PARAM_RE = re.compile(
    r"(?i)([?&;](?:password|passwd|pass|pwd|secret|token|sig|signature|key)=)([^&#;]*)"
)
#: Characters a URL parser splits on: an unencoded password is cut into pieces at these.
_URL_DELIMITERS = re.compile(r"[/@#?:;&=\s]+")
#: Pieces shorter than this are not redacted alone (``a``, ``12``: they are in everything).
_MIN_PIECE = 4


def _split(url: str) -> tuple[str, str, str, str]:
    """``(scheme://, userinfo, host and the rest, userinfo found)`` -- userinfo is everything
    up to the last ``@`` before which a ``:`` or nothing but a user name appears."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    at = rest.rfind("@")
    if at < 0:
        return scheme + sep, "", rest, ""
    return scheme + sep, rest[:at], rest[at + 1 :], "@"


def mask_url(url: str | None) -> str:
    """``url`` with any password replaced by ``***`` (safe to log and to show)."""
    if not url:
        return ""
    prefix, userinfo, host, at = _split(url)
    if at and ":" in userinfo:
        userinfo = userinfo.split(":", 1)[0] + ":" + MASK
    elif at and "/" in userinfo:  # no user:password, but an '@' in the path: mask it all
        userinfo = MASK
    return _SECRET_PARAM_RE.sub(lambda m: m.group(1) + MASK, f"{prefix}{userinfo}{at}{host}")


def url_secrets(url: str | None) -> tuple[str, ...]:
    """The secrets in ``url``: its password and secret query parameters, raw."""
    if not url:
        return ()
    _, userinfo, _, at = _split(url)
    found: list[str] = []
    if at and ":" in userinfo:
        found.append(userinfo.split(":", 1)[1])
    found.extend(m.group(2) for m in _SECRET_PARAM_RE.finditer(url))
    return tuple(s for s in found if s)


def unencoded_in_password(url: str | None) -> str:
    """The characters of ``url``'s password that a URL parser would cut it at ('/', '?',
    '#', '@'), in order of appearance; ``""`` when it has none (or no password).

    Such a URL is read by the drivers' libraries as another host or port -- at best an error
    quoting part of the password, at worst credentials sent to the wrong server.
    """
    for secret in url_secrets(url)[:1]:
        return "".join(dict.fromkeys(c for c in secret if c in "/?#@"))
    return ""


class Redactor:
    """Removes a configuration's secrets from text and exceptions."""

    __slots__ = ("_forms",)

    def __init__(self, secrets: Iterable[str | None]) -> None:
        forms: set[str] = set()
        for secret in secrets:
            if not secret:
                continue
            for form in (secret, unquote(secret), quote(secret, safe=""), quote(secret)):
                forms.add(form)
                forms.update(p for p in _URL_DELIMITERS.split(form) if len(p) >= _MIN_PIECE)
        self._forms = tuple(sorted(forms, key=len, reverse=True))  # longest first

    @classmethod
    def for_urls(cls, *urls: str | None, others: Iterable[str | None] = ()) -> Redactor:
        """The secrets of ``urls`` and the plain secrets ``others`` (keys, tokens)."""
        return cls([*(s for url in urls for s in url_secrets(url)), *others])

    def __bool__(self) -> bool:
        return bool(self._forms)

    def text(self, text: str) -> str:
        """``text`` with every form of every secret replaced by ``***``."""
        for form in self._forms:
            if form in text:
                text = text.replace(form, MASK)
        return text

    def exception(self, exc: BaseException) -> BaseException:
        """``exc`` and every exception it chains to, with secrets removed from their
        arguments and notes (in place); ``exc`` itself, for ``raise redactor.exception(e)``."""
        if not self._forms:
            return exc
        seen: set[int] = set()
        todo: list[BaseException | None] = [exc]
        while todo:
            current = todo.pop()
            if current is None or id(current) in seen:
                continue
            seen.add(id(current))
            self._clean(current)
            todo += [current.__cause__, current.__context__]
            if isinstance(current, BaseExceptionGroup):
                todo += list(current.exceptions)
        return exc

    def _clean(self, exc: BaseException) -> None:
        """One exception's arguments, string attributes and notes, in place."""
        exc.args = tuple(self.text(a) if isinstance(a, str) else a for a in exc.args)
        held = [(name, value) for name, value in vars(exc).items() if isinstance(value, str)]
        if isinstance(exc, OSError):  # printed from these, not from args
            held += [(name, getattr(exc, name)) for name in ("strerror", "filename", "filename2")]
        for name, value in held:
            if isinstance(value, str):
                self._set(exc, name, value)
        notes = getattr(exc, "__notes__", None)
        if notes:
            exc.__notes__ = [self.text(n) for n in notes]

    def _set(self, exc: BaseException, name: str, value: str) -> None:
        cleaned = self.text(value)
        if cleaned != value:
            try:
                setattr(exc, name, cleaned)
            except (AttributeError, TypeError):  # read-only on this type
                pass
