from __future__ import annotations

from pathlib import Path

from tests.servers.base import LocalServer


def launch(workdir: Path) -> LocalServer:
    return LocalServer(driver="memory", label="memory", workdir=workdir)
