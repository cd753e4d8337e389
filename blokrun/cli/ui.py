"""``blokrun ui [--host 127.0.0.1] [--port 8765] [--read-only]``: the run dashboard.

Serves :func:`blokrun.web.blokrun_app` over the configured datasources (the embedded
default included) until SIGINT/SIGTERM. It binds to loopback by default; any other address
needs ``BLOKRUN_UI_TOKEN`` (at least 16 characters), without which it refuses to start.
Open ``http://HOST:PORT/?token=...`` once; the browser keeps it in a cookie.
"""

from __future__ import annotations

import ipaddress
import os
import sys
from typing import TYPE_CHECKING, Any

from blokrun.cli.common import EXIT_OK, with_runner
from blokrun.cli.telemetry import add_metrics_options

if TYPE_CHECKING:
    import argparse

    from blokrun.runner import Runner

__all__ = ["add_parser", "handle"]


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``ui`` to the ``blokrun`` subcommands."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "ui", help="serve the run dashboard in a browser (needs blokrun[ui])"
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback)")
    p.add_argument("--port", type=int, default=8765, help="port (default 8765)")
    p.add_argument("--read-only", action="store_true", help="hide and refuse every action")
    add_metrics_options(p)
    p.set_defaults(handler=handle)
    return p


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


async def handle(args: argparse.Namespace) -> int:
    """Serve until a signal; the exit code (2: a non-loopback address without a token)."""
    from blokrun.config import ui_token
    from blokrun.errors import ConfigError

    token = ui_token(os.environ)
    if not _loopback(args.host) and token is None:
        raise ConfigError(
            f"--host {args.host} is not loopback: set BLOKRUN_UI_TOKEN (at least 16 "
            "characters) first; every request must then carry it",
            variable="BLOKRUN_UI_TOKEN",
        )

    async def body(runner: Runner) -> int:
        import uvicorn

        from blokrun.web import blokrun_app

        hosts = None
        if _loopback(args.host):  # a page elsewhere must not reach it by DNS rebinding
            hosts = ["127.0.0.1", "localhost", "::1", "[::1]", args.host]
        app = blokrun_app(runner, read_only=args.read_only, token=token, allowed_hosts=hosts)
        config = uvicorn.Config(app, host=args.host, port=args.port, log_level="warning")
        server = uvicorn.Server(config)
        sys.stderr.write(
            f"blokrun ui: http://{args.host}:{args.port}/"
            f"{' (read-only)' if args.read_only else ''}{' (token required)' if token else ''}\n"
        )
        sys.stderr.flush()
        await server.serve()
        return EXIT_OK

    return await with_runner(body, metrics_port=args.metrics_port, metrics_host=args.metrics_host)
