"""Leases, group commit, durability modes and workers: behaviour that once broke, each
test named by what must hold."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import anyio
import pytest

from blokrun import Runner
from blokrun.config import DatasourceSettings
from blokrun.errors import RunBusy, StepFailed
from blokrun.workers import serve

HERE = "tests.regressions.test_leases_workers_durability"
GATES: dict[str, anyio.Event] = {}
ENTERED: dict[str, anyio.Event] = {}
FAIL: set[str] = set()
STARTED: list[str] = []


@pytest.fixture(autouse=True)
def _reset() -> Iterator[None]:
    GATES.clear()
    ENTERED.clear()
    FAIL.clear()
    STARTED.clear()
    yield
    for gate in GATES.values():
        gate.set()


def _runner(**kw: Any) -> Runner:
    kw.setdefault("lease_ttl", 1.0)
    return Runner([DatasourceSettings(name="default", type="memory")], **kw)


async def gated(ctx: Any, inputs: dict[str, Any]) -> Any:
    """Fails while its step is in FAIL; else, if a gate is set up for it, waits on it."""
    STARTED.append(f"{ctx.request.id}:{ctx.step}")
    if ctx.step in FAIL:
        raise RuntimeError(f"{ctx.step} failed on purpose")
    key = inputs.get("gate")
    if key is not None:
        ENTERED.setdefault(key, anyio.Event()).set()
        with anyio.fail_after(10):
            await GATES.setdefault(key, anyio.Event()).wait()
    ctx.vars["total"] = ctx.vars.get("total", 0) + 1
    return None


def _wf(name: str, steps: list[tuple[str, str | None]]) -> dict[str, Any]:
    return {
        "name": name,
        "steps": [
            {"name": s, "node": f"{HERE}:gated", "inputs": {} if g is None else {"gate": g}}
            for s, g in steps
        ],
    }


# -- 1. dead-letter check runs before the lease, and writes an unfenced "dead" head --------


async def test_resume_of_a_live_run_at_the_resume_limit_is_busy_not_dead() -> None:
    wf = _wf("dl", [("a", None), ("b", "b"), ("c", None)])
    async with _runner(max_resumes=1) as r:
        FAIL.add("b")
        with pytest.raises(StepFailed):
            await r.run(wf, {}, request_id="dl1")
        FAIL.clear()
        async with anyio.create_task_group() as tg:
            tg.start_soon(r.resume, "dl1")  # the first (allowed) recovery: blocks in b
            with anyio.fail_after(5):
                await ENTERED.setdefault("b", anyio.Event()).wait()
            # A second process (operator, or a worker whose claim expired) asks to resume.
            second: BaseException | None = None
            try:
                await r.resume("dl1")
            except Exception as exc:  # inspected below
                second = exc
            head_meanwhile = await r.head("dl1")
            GATES.setdefault("b", anyio.Event()).set()
        assert head_meanwhile is not None
        assert head_meanwhile.status == "running", "the live run's head was overwritten"
        assert isinstance(second, RunBusy), f"expected RunBusy, got {second!r}"


# -- 2. a per-workflow limit blocks every other workflow queued behind it ----------------


async def test_a_capped_workflow_does_not_starve_other_workflows_of_free_slots() -> None:
    slow = _wf("slow", [("a", "slow")])
    fast = _wf("fast", [("a", None)])
    async with _runner() as r:
        await r.submit(slow, request_id="s1")
        await r.submit(slow, request_id="s2")
        await r.submit(fast, request_id="f1")
        stop = anyio.Event()
        fast_done = False
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: serve(r, concurrency=2, per_workflow={"slow": 1}, stop=stop))
            with anyio.move_on_after(3):  # s1 holds the one "slow" slot; one slot is free
                fast_done = (await r.wait("f1")).status == "completed"
            GATES.setdefault("slow", anyio.Event()).set()
            with anyio.fail_after(10):
                for rid in ("s1", "s2", "f1"):
                    await r.wait(rid)
            stop.set()
        assert fast_done, "f1 did not run in 3 s although the worker had a free slot"


# -- 3. async / exit durability: a run whose final save fails keeps a "running" head ------


@pytest.mark.parametrize("durability", ["async", "exit"])
async def test_a_failed_final_save_is_recorded_as_failed(durability: str) -> None:
    from blokrun.datasources import Datasource
    from blokrun.datasources.memory import MemoryStore
    from blokrun.errors import CheckpointError

    class FailOnce(MemoryStore):
        """The checkpoint of step b fails once (a transient outage)."""

        armed = True

        async def save_batch(self, entries: Any) -> None:
            if self.armed and any(k == "fs-b" for k, _, _ in entries):
                self.armed = False
                raise OSError("disk full (simulated, once)")
            await super().save_batch(entries)

    store = FailOnce()
    ds = Datasource(DatasourceSettings(name="default", type="memory"), store)
    wf = _wf("fs", [("a", None), ("b", None)])
    async with Runner([ds], durability=durability, lease_ttl=5.0) as r:  # type: ignore[arg-type]
        with pytest.raises(CheckpointError):
            await r.run(wf, {}, request_id="fs")
        head = await r.head("fs")
    assert not store.armed
    assert head is not None
    # sync mode records "failed" here; a worker acks the run as failed either way, so a
    # "running" head leaves runner.wait() / `blokrun wait` polling forever.
    assert head.status == "failed"


# -- 4. workers spin on a run that is busy elsewhere ---------------------------------------


async def test_a_busy_run_is_not_reclaimed_in_a_hot_loop() -> None:
    from blokrun.persistence.leases import acquire

    async with _runner(lease_ttl=30.0) as r:
        await r.submit(_wf("busy", [("a", None)]), request_id="busy1")
        # Another process drives the run (an operator's `blokrun resume`, a worker whose
        # claim expired): it holds the run's lease.
        held = await acquire(r.datasources["default"], "busy1", 30.0)
        stop = anyio.Event()
        async with anyio.create_task_group() as tg:

            async def work() -> None:
                stats.append(await serve(r, concurrency=1, stop=stop))

            stats: list[Any] = []
            tg.start_soon(work)
            await anyio.sleep(1.0)
            stop.set()
        await held.release()
    released = stats[0].released
    assert released <= 25, f"released and re-claimed {released} times in 1 s"


# -- 5. a transient queue error ends the worker --------------------------------------------


async def test_a_transient_claim_error_does_not_end_the_worker() -> None:
    from blokrun.errors import DatasourceUnavailable

    async with _runner() as r:
        queue = await r.queue()
        real_claim = queue.claim
        blips = [1]

        async def flaky_claim(worker: str, n: int, ttl: float) -> Any:
            if blips:
                blips.pop()
                raise DatasourceUnavailable("claim timed out (simulated blip)", datasource="q")
            return await real_claim(worker, n, ttl)

        queue.claim = flaky_claim  # type: ignore[method-assign]
        await r.submit(_wf("blip", [("a", None)]), request_id="blip1")
        error: BaseException | None = None
        stop = anyio.Event()
        result = None
        async with anyio.create_task_group() as tg:

            async def work() -> None:
                nonlocal error
                try:
                    await serve(r, concurrency=1, stop=stop)
                except Exception as exc:  # a group wrapping the blip
                    error = exc

            tg.start_soon(work)
            with anyio.move_on_after(3):
                result = await r.wait("blip1")
            stop.set()
    assert error is None, f"the worker ended on a transient error: {error!r}"
    assert result is not None and result.status == "completed"


# -- 6. the worker heartbeat renews a slot lease that was just released ---------------------


async def test_a_released_slot_is_not_revived_by_the_heartbeat() -> None:
    from blokrun.datasources import Datasource
    from blokrun.datasources.memory import MemoryStore
    from blokrun.persistence.keys import SLOT_PREFIX
    from blokrun.workers.worker import Worker

    go = anyio.Event()
    in_renew = anyio.Event()

    class SlowSlotRenew(MemoryStore):
        """Renewing a slot lease takes a round trip (as on Redis/PostgreSQL); the first
        one is held until the test says go."""

        async def renew_lease(self, key: str, owner: str, token: int, ttl: float) -> bool:
            if key.startswith(SLOT_PREFIX) and not go.is_set():
                in_renew.set()
                with anyio.fail_after(5):
                    await go.wait()
            return await super().renew_lease(key, owner, token, ttl)

    store = SlowSlotRenew()
    ds = Datasource(DatasourceSettings(name="default", type="memory"), store)
    async with Runner([ds], lease_ttl=30.0) as r:
        await r.submit(_wf("w", [("a", "long")]), request_id="r1")
        await r.submit(_wf("w", [("a", "short")]), request_id="r2")
        worker = Worker(r, await r.queue(), concurrency=2, per_workflow={"w": 2}, claim_ttl=3.0)
        worker.poll = 0.01
        stop = anyio.Event()
        async with anyio.create_task_group() as tg:
            tg.start_soon(worker.serve, stop)
            with anyio.fail_after(5):
                await ENTERED.setdefault("long", anyio.Event()).wait()
                await ENTERED.setdefault("short", anyio.Event()).wait()
                await in_renew.wait()  # the heartbeat is renewing the first slot
                GATES.setdefault("short", anyio.Event()).set()  # r2 ends, its slot released
                for _ in range(500):  # until r2's worker task let go of its slot
                    if "r2" not in worker._slots:
                        break
                    await anyio.sleep(0.01)
                await anyio.sleep(0.05)
            go.set()  # the heartbeat goes on with its snapshot: r2's slot too
            await anyio.sleep(0.1)
            leases = [await ds.read_lease(k) for k in list(store._leases)]
            GATES.setdefault("long", anyio.Event()).set()
            with anyio.fail_after(5):
                await r.wait("r1")
            stop.set()
    now = time.time()
    revived = [s for s in leases if s is not None and s.owner.endswith(":r2") and s.live(now)]
    assert revived == [], f"r2 ended, yet its slot lease is held: {revived}"
