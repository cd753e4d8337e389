"""A gc (or any process) paused at one datasource call, on throwaway servers: what the
attacks on gc's fences and tombstone share."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from uuid import uuid4

import anyio

from blokrun import Runner
from blokrun.config import DatasourceSettings
from blokrun.datasources import build_datasource

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    import pytest

    from blokrun.datasources import Datasource
    from tests.conftest import ServerPool

NODE = "tests.integration.wfnodes"
#: the lease TTL of the runners these tests pause past
TTL = 0.3


def pause_settings(
    request: pytest.FixtureRequest, driver: str, tmp_path: Path, name: str, tag: str
) -> DatasourceSettings:
    if driver == "filesystem":
        return DatasourceSettings(
            name=name, type="filesystem", path=str(tmp_path / f"{tag}-{name}"), fsync=False
        )
    pool: ServerPool = request.getfixturevalue("server_pool")
    return pool.get(driver).settings(name, prefix=f"gfa-{tag}-{name}/")


class Stall:
    """Calls of ``Datasource.<method>`` on the instance ``ds`` whose keys satisfy ``when``
    wait until thawed, once: gc paused (a long GC pause, a frozen VM, a slow store) right
    at that call -- after the renewal that preceded it."""

    def __init__(
        self,
        ds: Datasource,
        monkeypatch: pytest.MonkeyPatch,
        method: str,
        when: Callable[[list[str]], bool] = lambda keys: True,
    ) -> None:
        self.entered = anyio.Event()
        self.thawed = anyio.Event()
        self.done = False
        original = getattr(type(ds), method)
        stall = self

        async def patched(inner: Datasource, keys: Any, *args: Any, **kwargs: Any) -> Any:
            if inner is ds and not stall.done and when(list(keys)):
                stall.done = True
                stall.entered.set()
                await stall.thawed.wait()
            return await original(inner, keys, *args, **kwargs)

        monkeypatch.setattr(type(ds), method, patched)


def two_target_flow(name: str = "two") -> dict[str, Any]:
    return {
        "name": name,
        "persistence": {"targets": ["a", "b"]},
        "steps": [
            {"name": f"s{i}", "node": f"{NODE}:add", "inputs": {"n": i}} for i in range(1, 4)
        ],
    }


def two_target_runners(
    request: pytest.FixtureRequest, driver: str, tmp_path: Path
) -> Callable[[], Runner]:
    """Makes runners (processes) on the same two targets ``a`` and ``b`` of ``driver``,
    leases of :data:`TTL`."""
    tag = uuid4().hex[:8]
    a = pause_settings(request, driver, tmp_path, "a", tag)
    b = pause_settings(request, driver, tmp_path, "b", tag)

    def runner() -> Runner:
        return Runner([build_datasource(a), build_datasource(b)], lease_ttl=TTL)

    return runner
