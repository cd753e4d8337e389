"""Shared fixtures: the pool of throwaway servers, started lazily, stopped at session end."""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.servers.base import ServerUnavailable, ThrowawayServer

#: Every driver the contract suite runs on, in the order they appear in test ids.
DRIVERS = ["memory", "filesystem", "redis", "postgresql", "mongodb", "s3"]


class ServerPool:
    def __init__(self, root: Path) -> None:
        self._root = root
        self._servers: dict[str, ThrowawayServer] = {}
        self._failed: dict[str, str] = {}

    def get(self, driver: str) -> ThrowawayServer:
        if driver in self._failed:
            pytest.skip(self._failed[driver])
        if driver not in self._servers:
            try:
                module = importlib.import_module(f"tests.servers.{driver}")
            except ModuleNotFoundError as exc:
                if exc.name == f"tests.servers.{driver}":
                    self._failed[driver] = f"no throwaway {driver} server module yet"
                    pytest.skip(self._failed[driver])
                raise
            workdir = self._root / driver
            workdir.mkdir(parents=True, exist_ok=True)
            try:
                self._servers[driver] = module.launch(workdir)
            except ServerUnavailable as exc:
                self._failed[driver] = f"{driver}: {exc}"
                pytest.skip(self._failed[driver])
        return self._servers[driver]

    def close(self) -> None:
        for server in self._servers.values():
            server.stop()


@pytest.fixture(scope="session")
def server_pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerPool]:
    pool = ServerPool(tmp_path_factory.mktemp("servers"))
    yield pool
    pool.close()


@pytest.fixture(params=DRIVERS)
def server(request: pytest.FixtureRequest, server_pool: ServerPool) -> ThrowawayServer:
    """One throwaway server per driver (memory and filesystem need none)."""
    return server_pool.get(request.param)
