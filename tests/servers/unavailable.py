"""A server that can never be started: the pool's behaviour when a server is missing is
tested with it (tests/unit/test_server_pool.py)."""

from __future__ import annotations

from pathlib import Path
from typing import NoReturn

from tests.servers.base import ServerUnavailable


def launch(workdir: Path) -> NoReturn:
    raise ServerUnavailable(f"this server never starts (asked to start in {workdir})")
