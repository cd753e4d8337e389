"""Shared fixtures: the pool of throwaway servers, started lazily, stopped at session end."""

from __future__ import annotations

import importlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.integration import wfnodes
from tests.servers.base import ServerUnavailable, ThrowawayServer

if TYPE_CHECKING:
    from tests.servers.redis import RedisServer

#: Every driver the contract suite runs on, in the order they appear in test ids.
DRIVERS = ["memory", "filesystem", "redis", "postgresql", "mongodb", "s3"]
#: The drivers that need no server process.
LOCAL = frozenset({"memory", "filesystem"})


def servers_required() -> bool:
    """Under ``CI=true`` or ``BLOKRUN_TEST_SERVERS=required`` (``make test`` sets it), a server
    that cannot be started fails its tests instead of skipping them: a broken install must
    not pass as a green run with every test of that driver skipped."""
    return (
        os.environ.get("CI", "").lower() == "true"
        or os.environ.get("BLOKRUN_TEST_SERVERS", "") == "required"
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that starts a server ``server``, so ``-m "not server"`` leaves them out:
    tests that use the pool, unless their ``server``/``driver`` parameter is a local driver."""
    for item in items:
        if "server_pool" not in getattr(item, "fixturenames", ()):
            continue
        callspec = getattr(item, "callspec", None)
        params = callspec.params if callspec is not None else {}
        driver = params.get("server", params.get("driver"))
        if driver not in LOCAL:
            item.add_marker(pytest.mark.server)


class ServerPool:
    def __init__(self, root: Path) -> None:
        self._root = root
        self._servers: dict[str, ThrowawayServer] = {}
        self._failed: dict[str, str] = {}

    def get(self, driver: str) -> ThrowawayServer:
        if driver in self._failed:
            self._unavailable(driver)
        if driver not in self._servers:
            try:
                module = importlib.import_module(f"tests.servers.{driver}")
            except ModuleNotFoundError as exc:
                if exc.name == f"tests.servers.{driver}":
                    self._failed[driver] = f"no throwaway {driver} server module yet"
                    self._unavailable(driver)
                raise
            workdir = self._root / driver
            workdir.mkdir(parents=True, exist_ok=True)
            try:
                self._servers[driver] = module.launch(workdir)
            except ServerUnavailable as exc:
                self._failed[driver] = f"{driver}: {exc}"
                self._unavailable(driver)
        return self._servers[driver]

    def _unavailable(self, driver: str) -> None:
        reason = self._failed[driver]
        if servers_required():
            pytest.fail(f"the throwaway server could not be started: {reason}", pytrace=False)
        pytest.skip(reason)

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


@pytest.fixture
def redis_server(server_pool: ServerPool) -> RedisServer:
    """The session's throwaway redis-server."""
    from tests.servers.redis import RedisServer

    srv = server_pool.get("redis")
    assert isinstance(srv, RedisServer)
    return srv


@pytest.fixture(autouse=True)
def _fresh_nodes() -> Iterator[None]:
    """The test nodes' shared state (calls, failures to inject, the gate) is empty for each
    test, and left empty after it."""
    wfnodes.reset()
    yield
    wfnodes.reset()
