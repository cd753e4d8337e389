"""An acquire that writes (a run's start record, a resume's start) whose answer is lost
after the server ran it -- a connection cut or timed out between the script or statement
and its reply. Found by review: the start record stood ("running", a recovery counted)
with nothing running, a retried ``run`` was refused as existing, and resumes failing this
way pushed a run to the dead letter without running a step. Now the acquire asks the
datasource whether it landed (its lease is ours; the keys hold its bytes) and the run goes
on; and the same command sent again (redis-py's resend after a dropped connection) finds
its own bytes and writes them again rather than refusing them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from uuid import uuid4

import pytest

from blokrun import Runner, StepFailed
from blokrun.datasources import Datasource, create_store
from blokrun.errors import DatasourceUnavailable, RunNotFound
from tests.integration import wfnodes

if TYPE_CHECKING:
    from blokrun.config import DatasourceSettings
    from tests.conftest import ServerPool

NODE = "tests.integration.wfnodes"
pytestmark = pytest.mark.parametrize("driver", ["redis", "postgresql"])


def flow() -> dict[str, Any]:
    return {
        "name": "lost",
        "steps": [
            {"name": f"s{i}", "node": f"{NODE}:add", "inputs": {"n": i}} for i in range(1, 5)
        ],
    }


class Lossy:
    """The driver, whose next acquire-with-write loses its answer: after the server ran it
    (``ran``), or before it was sent."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.lose: str | None = None  # "after" / "before"

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def acquire_lease_writing(self, *args: Any, **kwargs: Any) -> Any:
        lose, self.lose = self.lose, None
        if lose == "before":
            raise DatasourceUnavailable("connection lost before the script was sent")
        answer = await self._inner.acquire_lease_writing(*args, **kwargs)
        if lose == "after":
            raise DatasourceUnavailable("connection lost: the reply never came")
        return answer


@pytest.fixture
def settings(server_pool: ServerPool, driver: str) -> DatasourceSettings:
    return server_pool.get(driver).settings("default", prefix=f"lr-{uuid4().hex[:8]}/")


def _runner(settings: DatasourceSettings, **kwargs: Any) -> tuple[Runner, Lossy]:
    lossy = Lossy(create_store(settings))
    return Runner([Datasource(settings, lossy)], **kwargs), lossy


async def test_a_start_whose_answer_was_lost_goes_on(settings: DatasourceSettings) -> None:
    runner, lossy = _runner(settings)
    async with runner:
        lossy.lose = "after"
        wfnodes.CALLS.clear()
        result = await runner.run(flow(), {"total": 0}, request_id="after")
        head = await runner.head("after")
    assert result.status == "completed" and result.vars["total"] == 10
    assert [step for _, step in wfnodes.CALLS] == ["s1", "s2", "s3", "s4"]
    assert head is not None and (head.status, head.attempt) == ("completed", 1)


async def test_a_start_that_never_went_leaves_nothing_and_runs_when_retried(
    settings: DatasourceSettings,
) -> None:
    runner, lossy = _runner(settings)
    async with runner:
        lossy.lose = "before"
        with pytest.raises(DatasourceUnavailable):
            await runner.run(flow(), {"total": 0}, request_id="before")
        with pytest.raises(RunNotFound):
            await runner.head("before")
        result = await runner.run(flow(), {"total": 0}, request_id="before")
    assert result.status == "completed" and not result.existing


async def test_resumes_whose_answers_were_lost_count_once_each(
    settings: DatasourceSettings,
) -> None:
    runner, lossy = _runner(settings, max_resumes=3)
    async with runner:
        wfnodes.FAIL_AT.add("s3")
        try:
            with pytest.raises(StepFailed):
                await runner.run(flow(), {"total": 0}, request_id="again")
            for attempt in (2, 3):
                lossy.lose = "after"
                with pytest.raises(StepFailed):  # it ran: s3 failed again
                    await runner.resume("again")
                head = await runner.head("again")
                assert head is not None
                assert (head.status, head.attempt, head.recoveries) == (
                    "failed",
                    attempt,
                    attempt - 1,
                )
        finally:
            wfnodes.FAIL_AT.clear()
        lossy.lose = "after"
        wfnodes.CALLS.clear()
        result = await runner.resume("again")
    assert result.status == "completed" and result.vars["total"] == 10
    assert [step for _, step in wfnodes.CALLS] == ["s3", "s4"]


async def test_the_same_acquire_sent_again_writes_its_own_bytes_again(
    settings: DatasourceSettings,
) -> None:
    """redis-py sends a command once more after a dropped connection: the second run of the
    acquire finds the keys holding exactly what it writes, and writes (PostgreSQL never
    sends twice; its second acquire has a lease that had a holder, and writes nothing)."""
    async with Datasource(settings, create_store(settings)) as ds:
        batch = [("head", b"mine", None), ("run", b"my run", None)]
        first = await ds.acquire_lease_writing("_blokrun.lease.x", "me", 30, ["head", "run"], batch)
        again = await ds.acquire_lease_writing("_blokrun.lease.x", "me", 30, ["head", "run"], batch)
        assert first[2]
        assert again[2] == (settings.type == "redis")
        other = [("head", b"not mine", None), ("run", b"my run", None)]
        third = await ds.acquire_lease_writing("_blokrun.lease.x", "me", 30, ["head", "run"], other)
        assert not third[2]
        assert await ds.load("head") == b"mine"
