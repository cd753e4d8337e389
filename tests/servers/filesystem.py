from __future__ import annotations

from pathlib import Path

from tests.servers.base import LocalServer


def launch(workdir: Path) -> LocalServer:
    return LocalServer(driver="filesystem", label="filesystem", workdir=workdir)
