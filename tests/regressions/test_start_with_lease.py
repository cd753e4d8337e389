"""A new run's start record is written with its lease, in one round trip (Redis and
PostgreSQL: ``Capabilities.lease_writes``). Attacked on the real servers: a run that fails
or is cancelled in its first step is still found and resumed with its inputs; a run is
listed as running while its first step runs; two starts of one new id race; the id's head
or run record already holds something (another run's, or bytes blokrun never wrote);
a restart and a run whose lease outlived its records.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from uuid import uuid4

import anyio
import pytest

from blokrun import Runner, StepFailed
from blokrun.datasources import build_datasource
from blokrun.errors import ResumeError, RunBusy, RunExists
from blokrun.persistence.keys import head_key, run_key
from tests.integration import wfnodes

if TYPE_CHECKING:
    from blokrun.config import DatasourceSettings
    from blokrun.datasources import Datasource
    from tests.conftest import ServerPool

NODE = "tests.integration.wfnodes"
pytestmark = pytest.mark.parametrize("driver", ["redis", "postgresql"])


def flow(n: int = 3, node: str = "add") -> dict[str, Any]:
    return {
        "name": "folded",
        "steps": [
            {"name": f"s{i}", "node": f"{NODE}:{node}", "inputs": {"n": i}} for i in range(1, n + 1)
        ],
    }


@pytest.fixture
def settings(server_pool: ServerPool, driver: str) -> DatasourceSettings:
    """One store of this test's own (every datasource built from it shares it)."""
    return server_pool.get(driver).settings("default", prefix=f"sl-{uuid4().hex[:8]}/")


def _ds(settings: DatasourceSettings) -> Datasource:
    return build_datasource(settings)


async def test_a_run_failed_in_its_first_step_is_resumed_with_its_inputs(
    settings: DatasourceSettings,
) -> None:
    async with Runner([_ds(settings)]) as runner:
        wfnodes.FAIL_AT.add("s1")
        try:
            with pytest.raises(StepFailed):
                await runner.run(flow(), {"total": 100}, request_id="first")
        finally:
            wfnodes.FAIL_AT.clear()
        head = await runner.head("first")
        assert head is not None and head.status == "failed" and head.failed_step == "s1"
    async with Runner([_ds(settings)]) as runner:  # another process
        result = await runner.resume("first")
    assert result.status == "completed"
    assert result.vars["total"] == 106  # the stored inputs, then s1..s3


async def test_a_run_cancelled_in_its_first_step_is_listed_and_resumable(
    settings: DatasourceSettings,
) -> None:
    wf: dict[str, Any] = {
        "name": "slow",
        "steps": [
            {"name": "s1", "node": f"{NODE}:nap", "inputs": {"seconds": 30}},
            {"name": "s2", "node": f"{NODE}:add", "inputs": {"n": 1}},
        ],
    }
    seen: list[tuple[str, str]] = []
    async with Runner([_ds(settings)]) as runner:

        async def watch(scope: anyio.CancelScope) -> None:
            with anyio.fail_after(10):
                while not seen:
                    await anyio.sleep(0.02)
                    seen.extend((r.request_id, r.status) for r in await runner.list_runs())
            scope.cancel()  # as SIGINT would, while s1 still runs

        async with anyio.create_task_group() as tg:
            tg.start_soon(watch, tg.cancel_scope)
            await runner.run(wf, {"total": 5}, request_id="slow")
        assert seen == [("slow", "running")]  # listed from its start, not its first checkpoint
        head = await runner.head("slow")
        assert head is not None and head.status == "cancelled"
        wf["steps"][0]["inputs"] = {"seconds": 0}
        result = await runner.resume("slow", workflow=wf, force=True)
    assert result.status == "completed" and result.vars["total"] == 6


async def test_of_two_racing_starts_of_one_id_one_runs_and_keeps_its_inputs(
    settings: DatasourceSettings,
) -> None:
    ds_a, ds_b = _ds(settings), _ds(settings)
    outcomes: dict[str, Any] = {}
    async with Runner([ds_a]) as a, Runner([ds_b]) as b:

        async def start(name: str, runner: Runner, total: int) -> None:
            try:
                outcomes[name] = await runner.run(flow(), {"total": total}, request_id="race")
            except (RunBusy, RunExists) as exc:
                outcomes[name] = exc

        async with anyio.create_task_group() as tg:
            tg.start_soon(start, "a", a, 1000)
            tg.start_soon(start, "b", b, 2000)
        won = [n for n, o in outcomes.items() if not isinstance(o, Exception)]
        assert len(won) == 1, outcomes
        total = outcomes[won[0]].vars["total"]
        assert total in (1006, 2006)
        again = await a.run(flow(), {"total": total - 6}, request_id="race")
        assert again.existing and again.vars["total"] == total  # its own inputs were stored


@pytest.mark.parametrize("taken", ["head", "run"])
async def test_bytes_blokrun_never_wrote_under_the_id_are_left_as_they_are(
    settings: DatasourceSettings, taken: str
) -> None:
    ds = _ds(settings)
    key = head_key("squat") if taken == "head" else run_key("squat", 1)
    async with Runner([ds]) as runner:
        await ds.save(key, b"not blokrun's")
        with pytest.raises((RunExists, ResumeError)):  # taken, or not a record that verifies
            await runner.run(flow(), request_id="squat")
        assert await ds.load(key) == b"not blokrun's"
        other = head_key("squat") if taken == "run" else run_key("squat", 1)
        assert await ds.load(other) is None  # nothing of a start record was written


async def test_a_lease_that_outlived_its_records_starts_a_run_anew(
    settings: DatasourceSettings,
) -> None:
    """The run's records deleted, its lease row kept (token 1, released): the id is free
    again; its start record is written (with the lease where the driver can vouch for the
    check: Redis; in its own write on PostgreSQL, whose lease had a holder)."""
    ds = _ds(settings)
    async with Runner([ds]) as runner:
        await runner.run(flow(), request_id="again")
        doomed = [k for k in await ds.keys("") if not k.startswith("_blokrun.lease.")]
        await ds.delete_batch(doomed)
        result = await runner.run(flow(), {"total": 10}, request_id="again")
        assert result.status == "completed" and not result.existing
        assert result.vars["total"] == 16
        again = await runner.run(flow(), {"total": 10}, request_id="again")
        assert again.existing and again.vars["total"] == 16


async def test_a_restart_of_a_folded_run_is_a_new_incarnation(settings: DatasourceSettings) -> None:
    async with Runner([_ds(settings)]) as runner:
        first = await runner.run(flow(), {"total": 1}, request_id="twice")
        with pytest.raises(RunExists):
            await runner.run(flow(), {"total": 2}, request_id="twice")
        second = await runner.run(flow(), {"total": 2}, request_id="twice", restart=True)
        head = await runner.head("twice")
    assert (first.vars["total"], second.vars["total"]) == (7, 8)
    assert head is not None and head.incarnation == 2 and head.status == "completed"
