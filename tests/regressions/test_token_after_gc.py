"""A paused holder's fencing token is never issued again: not after gc deleted the run's
lease, nor after the datasource lost it.

Before, a lease's token counted from 1 in its stored record, and gc deletes that record
with the run (a Redis restarted without its data loses it too). So: process A runs ``z``
and freezes mid-step holding token 1; its lease expires; B resumes ``z`` to its end (token
2); gc collects ``z`` (token 3) and deletes its lease; a new run under ``z`` takes token 1
again. When A woke, its checkpoint was fenced by token 1 -- the latest -- and landed over
the new run's head. Tokens now come from the clock where no count is stored (the server's
clock on Redis and PostgreSQL; ``protocol.next_token``), so A's token is below any issued
after it, and A's write is refused (``LeaseLost``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from uuid import uuid4

import anyio
import pytest

from blokrun import Runner
from blokrun.config import DatasourceSettings
from blokrun.datasources import Datasource, build_datasource
from blokrun.errors import BlokrunError
from blokrun.persistence.keys import lease_key
from tests.integration import wfnodes
from tests.regressions import nodes

if TYPE_CHECKING:
    from pathlib import Path

    from tests.conftest import ServerPool

NODE = "tests.regressions.nodes"


def flow(name: str, n: int) -> dict[str, Any]:
    return {
        "name": name,
        "steps": [
            {"name": "s1", "node": f"{NODE}:pause_first", "inputs": {"n": n}},
            {"name": "s2", "node": f"{NODE}:pause_first", "inputs": {"n": n}},
        ],
    }


@pytest.fixture(params=["redis", "postgresql", "filesystem"])
def settings(request: pytest.FixtureRequest, tmp_path: Path) -> DatasourceSettings:
    if request.param == "filesystem":
        return DatasourceSettings(name="default", type="filesystem", path=str(tmp_path / "fs"))
    pool: ServerPool = request.getfixturevalue("server_pool")
    return pool.get(request.param).settings("default", prefix=f"tk-{uuid4().hex[:8]}/")


class Frozen:
    """Stalls ``ds``'s lease renewals until the test thaws it: with its step paused too,
    the holder is a frozen process whose lease runs out."""

    def __init__(self, ds: Datasource, monkeypatch: pytest.MonkeyPatch) -> None:
        self.thawed = anyio.Event()
        original = type(ds).renew_lease

        async def renew(inner: Datasource, key: str, owner: str, token: int, ttl: float) -> bool:
            if inner is ds:
                await self.thawed.wait()
            ok: bool = await original(inner, key, owner, token, ttl)
            return ok

        monkeypatch.setattr(type(ds), "renew_lease", renew)


async def _zombie(
    settings: DatasourceSettings, monkeypatch: pytest.MonkeyPatch, forget: str
) -> None:
    wfnodes.reset()
    nodes.PAUSED[:] = [anyio.Event()]
    nodes.PAUSED_ONCE.clear()
    ds_a, ds_b = build_datasource(settings), build_datasource(settings)
    frozen = Frozen(ds_a, monkeypatch)
    outcome: list[Any] = []
    async with Runner([ds_a], lease_ttl=0.3) as a, Runner([ds_b], lease_ttl=0.3) as b:

        async def run_a() -> None:
            try:
                outcome.append(await a.run(flow("old", 1), {"total": 0}, request_id="z"))
            except BlokrunError as exc:
                outcome.append(exc)

        async with anyio.create_task_group() as tg:
            tg.start_soon(run_a)
            with anyio.fail_after(10):
                while not wfnodes.CALLS:  # noqa: ASYNC110 -- A is in s1, holding its lease
                    await anyio.sleep(0.01)
            held = await ds_b.read_lease(lease_key("z"))
            assert held is not None
            await anyio.sleep(0.5)  # A's lease runs out
            resumed = await b.resume("z")  # B takes the run over and ends it
            assert resumed.status == "completed"
            if forget == "gc":
                report = await b.collect_garbage(completed_older_than=0.0, failed_older_than=None)
                assert [g.request_id for g in report.runs] == ["z"]
                assert await ds_b.read_lease(lease_key("z")) is None
            else:  # the datasource lost everything (a Redis restarted without its data)
                await ds_b.delete_batch(await ds_b.keys(""))
                await ds_b.delete_lease(lease_key("z"))
            fresh = await b.run(flow("new", 100), {"total": 0}, request_id="z")
            assert fresh.status == "completed" and fresh.vars["total"] == 200
            nodes.PAUSED[0].set()  # A wakes up and writes its checkpoint of s1
            frozen.thawed.set()
        head = await b.head("z")
        again = await b.run(flow("new", 100), {"total": 0}, request_id="z")
    assert isinstance(outcome[0], BlokrunError), outcome[0]  # A stopped: its lease is gone
    assert head is not None and head.workflow == "new" and head.status == "completed"
    assert again.existing and again.vars["total"] == 200  # the new run's result, intact


@pytest.mark.parametrize("forget", ["gc", "lost data"])
async def test_a_frozen_holder_cannot_write_over_a_new_run_of_its_id(
    settings: DatasourceSettings, monkeypatch: pytest.MonkeyPatch, forget: str
) -> None:
    await _zombie(settings, monkeypatch, forget)
