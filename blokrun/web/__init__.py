"""The run dashboard: ``blokrun ui``, or ``blokrun_app(runner)`` mounted in a service.

Needs the ``ui`` extra (``pip install 'blokrun[ui]'``: Starlette, and uvicorn for
``blokrun ui``); the rest of blokrun never imports this package.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from blokrun.errors import MissingExtraError

if TYPE_CHECKING:
    from collections.abc import Sequence

    from blokrun.runner import Runner

__all__ = ["blokrun_app"]


def blokrun_app(
    runner: Runner,
    *,
    read_only: bool = False,
    token: str | None = None,
    allowed_hosts: Sequence[str] | None = None,
) -> Any:
    """The dashboard as an ASGI app (see :func:`blokrun.web.app.blokrun_app`)."""
    try:
        from blokrun.web.app import blokrun_app as build
    except ModuleNotFoundError as exc:  # starlette is not installed
        raise MissingExtraError(
            f"the dashboard needs {exc.name!r}: pip install 'blokrun[ui]'"
        ) from exc
    return build(runner, read_only=read_only, token=token, allowed_hosts=allowed_hosts)
