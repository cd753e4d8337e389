"""Attacks on issue 18's folding of a run's lease into its reads and writes (400705f):
``Capabilities.lease_reads`` (the acquire reads the run's head and first run record) and
``Capabilities.release_in_batch`` (the last checkpoint ends the lease in the same write).

The first tests are the bugs found (they fail on 400705f); the rest are guards of what
held: races of two runners on one request id, restart/fork/resume right after a
completion, write-behind durabilities, a failing last write, group commit of many runs
ending together, and workflows whose last step is skipped, parallel, a map or a child run.
Every completed run must leave its lease ended (``read_lease(...).live(now)`` false), or
the next process asking for it waits out the TTL with RunBusy.
"""

from __future__ import annotations

import json
import logging
import time
from typing import TYPE_CHECKING, Any, cast
from uuid import uuid4

import anyio
import pytest

from blokrun import Runner
from blokrun.datasources import Datasource, create_store
from blokrun.datasources.protocol import RELEASE_KEY
from blokrun.errors import LeaseLost, RunBusy, RunError, RunExists
from blokrun.execution.hooks import Hook
from blokrun.persistence.keys import checkpoint_key, head_key, lease_key, run_key
from blokrun.persistence.records import HeadRecord, decode_record
from tests.integration import wfnodes

if TYPE_CHECKING:
    from collections.abc import Sequence
    from pathlib import Path

    from blokrun.datasources import Entry
    from blokrun.datasources.protocol import Group
    from blokrun.execution.events import RunEnded
    from blokrun.types import Durability
    from tests.servers.base import ThrowawayServer

NODE = "tests.integration.wfnodes"
SHARED = ["redis", "postgresql"]  # the drivers with lease_reads and release_in_batch
pytestmark = pytest.mark.parametrize("server", SHARED, indirect=True)


def _settings(server: ThrowawayServer, name: str = "rb", prefix: str | None = None) -> Any:
    return server.settings(name, prefix=prefix or f"lf-{uuid4().hex[:8]}/")


def _wf(*steps: dict[str, Any], targets: Sequence[str] = ("rb",), **extra: Any) -> dict[str, Any]:
    return {
        "name": "w",
        "persistence": {"enabled": True, "targets": list(targets), **extra},
        "steps": list(steps),
    }


def _add(name: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "node": f"{NODE}:add", **extra}


def _nap(name: str, seconds: float, **extra: Any) -> dict[str, Any]:
    return {"name": name, "node": f"{NODE}:nap", "inputs": {"seconds": seconds}, **extra}


async def _lease_live(ds: Datasource, rid: str) -> bool:
    state = await ds.read_lease(lease_key(rid))
    return state is not None and state.live(time.time())


def _releases(entries: Sequence[Entry]) -> bool:
    return any(key == RELEASE_KEY for key, _, _ in entries)


class Proxy:
    """The real driver, with the round trips a test wants to stall or watch overridden."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


# -- bug 1: the heartbeat takes the lease its run ended itself for a lost one ------------------


class SlowEnd(Hook):
    """A user hook that takes its time when the run ends (a notification, say)."""

    async def on_run_end(self, event: RunEnded) -> None:
        await anyio.sleep(0.3)


async def test_a_hook_slower_than_a_heartbeat_at_the_end_does_not_cancel_a_completed_run(
    server: ThrowawayServer,
) -> None:
    """``fanout._Save.write`` calls ``lease.releasing()`` (``released = True``) before the last
    write; the next heartbeat's ``Lease.renew`` returns False for a released lease and
    ``Lease.heartbeat`` takes that for a takeover: it cancels the attempt's task group. A
    hook still awaiting anything then is cancelled and ``Runner.run`` raises a bare
    CancelledError for a run stored as completed (with the default TTL of 30 s: any hook
    that spends over 10 s after the last checkpoint, or less when the beat is near)."""
    cancelled = anyio.get_cancelled_exc_class()
    async with Runner([_settings(server)], lease_ttl=0.15, hooks=[SlowEnd()]) as runner:
        try:
            result = await runner.run(_wf(_add("a")), request_id="slow-end")
        except cancelled:  # the caller's own task was never cancelled
            pytest.fail("a completed run raised CancelledError (cancelled by its own heartbeat)")
        assert result.status == "completed"


class SlowLastWrite(Proxy):
    """Every write holding the release entry (the last checkpoint) takes ``delay``."""

    def __init__(self, inner: Any, delay: float) -> None:
        super().__init__(inner)
        self.delay = delay

    async def save_batch_fenced(self, entries: Sequence[Entry], lease: str, token: int) -> bool:
        if _releases(entries):
            await anyio.sleep(self.delay)
        held: bool = await self._inner.save_batch_fenced(entries, lease, token)
        return held

    async def save_groups(self, groups: Sequence[Group]) -> list[bool]:
        if any(_releases(entries) for entries, _, _ in groups):
            await anyio.sleep(self.delay)
        written: list[bool] = await self._inner.save_groups(groups)
        return written


class Events:
    """A datasource observer that keeps only the lease events."""

    def __init__(self) -> None:
        self.lease: list[str] = []

    def write_started(self, ds: Datasource, entries: Sequence[Entry]) -> object:
        return None

    def write_ended(self, started: object, error: BaseException | None) -> None:
        pass

    def flushed(self, ds: Datasource, groups: int) -> None:
        pass

    def lease_event(self, ds: Datasource, request_id: str, event: str) -> None:
        self.lease.append(event)


async def test_a_slow_last_write_is_not_reported_as_a_lost_lease(
    server: ThrowawayServer, caplog: pytest.LogCaptureFixture
) -> None:
    """The same false takeover without a hook: a last write that outlasts a beat logs
    "lease taken over by another process; stopping" and counts a ``lost`` lease event
    (``blokrun.lease.takeovers``) for a run nobody took over."""
    settings = _settings(server)
    ds = Datasource(settings, SlowLastWrite(create_store(settings), 0.3))
    events = Events()
    ds.observer = events
    async with Runner([ds], lease_ttl=0.15) as runner:
        with caplog.at_level(logging.WARNING, logger="blokrun.leases"):
            result = await runner.run(_wf(_add("a")), request_id="slow-write")
        assert result.status == "completed"
    assert [r.getMessage() for r in caplog.records if "taken over" in r.getMessage()] == []
    assert "lost" not in events.lease


class LateRenewal(Proxy):
    """A renewal reaches the server only once the run's last write ended the lease and
    another process took it; its answer is back before the run ends."""

    def __init__(self, inner: Any) -> None:
        super().__init__(inner)
        self.gate = anyio.Event()

    async def renew_lease(self, key: str, owner: str, token: int, ttl: float) -> bool:
        await self.gate.wait()
        ok: bool = await self._inner.renew_lease(key, owner, token, ttl)
        return ok


class TakeOverAtTheEnd(Hook):
    """When the run ends (its last write ended the lease): another process takes the run's
    lease, the renewal on its way lands, and the hook takes a moment (a notification)."""

    def __init__(self, ds: Datasource, driver: LateRenewal) -> None:
        self.ds = ds
        self.driver = driver
        self.other: int | None = None

    async def on_run_end(self, event: RunEnded) -> None:
        taken = await self.ds.acquire_lease(lease_key(event.request_id), "other-process", 30)
        self.other = taken.token if taken.owner == "other-process" else None
        self.driver.gate.set()
        await anyio.sleep(0.2)


async def test_a_renewal_refused_after_the_run_ended_its_lease_is_not_a_lost_run(
    server: ThrowawayServer,
) -> None:
    """``Lease.renew``: a renewal sent before the last write and answered after another
    process took the ended lease is refused (token mismatch) -- and sets ``lost``. The
    heartbeat cancels the attempt and ``RunDriver._attempt`` raises ``LeaseLost`` ("this
    process stopped without writing") for a run whose every checkpoint is stored and whose
    head says completed; a worker hands such a job back as "taken over"."""
    settings = _settings(server)
    driver = LateRenewal(create_store(settings))
    ds = Datasource(settings, driver)
    hook = TakeOverAtTheEnd(ds, driver)
    wf = _wf(_nap("a", 0.25))  # a beat (every 50 ms) sends a renewal while it runs
    async with Runner([ds], lease_ttl=0.15, hooks=[hook]) as runner:
        try:
            result = await runner.run(wf, request_id="late-renewal")
        except LeaseLost as exc:
            pytest.fail(f"a run that completed and stored everything raised {exc!r}")
        assert hook.other is not None  # the lease was free once the last write landed
        assert result.status == "completed"
        head = await runner.head("late-renewal")
        assert head is not None and head.status == "completed"


# -- bug 2: a renewal answered after the run ended brings its lease back for a TTL ---------------


class WireRenewal(Proxy):
    """A renewal on the wire: the server executes it whatever happens to the caller, after the
    run's last write (``landed``), and the answer takes ``latency`` to come back."""

    def __init__(self, inner: Any, wire: anyio.abc.TaskGroup, latency: float) -> None:
        super().__init__(inner)
        self.wire = wire
        self.latency = latency
        self.landed = anyio.Event()
        self.executed: list[bool] = []
        self.reached = anyio.Event()  # the renewal was executed by the server

    async def renew_lease(self, key: str, owner: str, token: int, ttl: float) -> bool:
        answered = anyio.Event()

        async def on_the_server() -> None:
            await self.landed.wait()
            self.executed.append(await self._inner.renew_lease(key, owner, token, ttl))
            self.reached.set()
            await anyio.sleep(self.latency)
            answered.set()

        self.wire.start_soon(on_the_server)
        await answered.wait()
        return self.executed[-1]

    async def save_batch_fenced(self, entries: Sequence[Entry], lease: str, token: int) -> bool:
        held: bool = await self._inner.save_batch_fenced(entries, lease, token)
        if _releases(entries):
            self.landed.set()
        return held

    async def save_groups(self, groups: Sequence[Group]) -> list[bool]:
        written: list[bool] = await self._inner.save_groups(groups)
        if any(_releases(entries) for entries, _, _ in groups):
            self.landed.set()
        return written


async def test_a_renewal_in_flight_when_the_run_ends_does_not_keep_its_lease(
    server: ThrowawayServer,
) -> None:
    """A heartbeat renewal sent before the last write and executed after it renews the
    lease the write ended (``_RENEW``/``renew`` check the token only). ``Lease.renew``'s
    post-check would end it again -- but ``RunDriver._attempt`` cancels the heartbeat as
    soon as the attempt returns, while the renewal's answer is still on its way, so the
    post-check never runs; ``Lease.release`` then sends nothing (``released_by_write``).
    The finished run's lease stays live for a whole TTL: RunBusy for everyone else."""
    settings = _settings(server)
    async with anyio.create_task_group() as wire:
        driver = WireRenewal(create_store(settings), wire, latency=0.1)
        ds = Datasource(settings, driver)
        async with Runner([ds], lease_ttl=1.2) as runner:  # a beat every 0.4 s
            result = await runner.run(_wf(_nap("a", 0.5)), request_id="in-flight")
            assert result.status == "completed"
            with anyio.fail_after(5):
                await driver.reached.wait()
            await anyio.sleep(driver.latency + 0.05)
            assert len(driver.executed) == 1  # it reached the server after the last write
            assert not await _lease_live(ds, "in-flight"), "a completed run's lease is live"


# -- bug 3: the lease ends while the run still writes its last checkpoint elsewhere ------------


class StallCheckpoint(Proxy):
    """A second target whose write of one checkpoint stalls until ``go`` is set."""

    def __init__(self, inner: Any, suffix: str) -> None:
        super().__init__(inner)
        self.suffix = suffix
        self.stalled = anyio.Event()
        self.go = anyio.Event()

    async def _hold(self, entries: Sequence[Entry]) -> None:
        if any(key.endswith(self.suffix) for key, _, _ in entries) and not self.go.is_set():
            self.stalled.set()
            await self.go.wait()

    async def save_batch(self, entries: Sequence[Entry]) -> None:
        await self._hold(entries)
        await self._inner.save_batch(entries)

    async def save_groups(self, groups: Sequence[Group]) -> list[bool]:
        for entries, _, _ in groups:
            await self._hold(entries)
        written: list[bool] = await self._inner.save_groups(groups)
        return written


async def test_the_lease_is_held_until_every_target_has_the_last_checkpoint(
    server: ThrowawayServer,
) -> None:
    """A run with two targets writes its last checkpoint to both at once
    (``fanout.save_everywhere``); the lease target's write ends the lease while the other
    target's write is still on its way. Another process takes the run over then -- here a
    restart, a new incarnation -- and the first process's late write lands on the second
    target over the new incarnation's head: that target says "incarnation 1, completed"
    while incarnation 2 runs. Before 400705f the release was sent after every target's
    write."""
    rid = "two-targets"
    first, second = _settings(server, "rb"), _settings(server, "t2")
    stall = StallCheckpoint(create_store(second), checkpoint_key(rid, 1, 1))
    two = Datasource(second, stall)
    wf = _wf(_add("a"), targets=("rb", "t2"))
    later = _wf({"name": "hold", "node": f"{NODE}:wait_gate"}, targets=("rb", "t2"))
    async with (
        Runner([first, two], lease_ttl=30) as a,
        Runner([first, second], lease_ttl=30) as b,
        anyio.create_task_group() as tg,
    ):
        tg.start_soon(lambda: a.run(wf, request_id=rid))
        with anyio.fail_after(5):
            await stall.stalled.wait()  # the last checkpoint is stored on rb, not yet on t2
        if await _lease_live(a.datasources["rb"], rid):  # held until t2 has it too
            with pytest.raises(RunBusy):
                await b.run(later, request_id=rid, restart=True)
            stall.go.set()
            return
        tg.start_soon(lambda: b.run(later, request_id=rid, restart=True))
        with anyio.fail_after(5):
            await wfnodes.wait_for_gate_waiters(1)  # incarnation 2 runs
        stall.go.set()
        await anyio.sleep(0.2)  # the first process's late write lands
        raw = await b.datasources["t2"].load(head_key(rid))
        assert raw is not None
        shown = decode_record(raw, HeadRecord, bind=head_key(rid))
        wfnodes.GATE.set()
        assert (shown.incarnation, shown.status) == (2, "running"), (
            "the lease ended before the run's last write reached its second target: "
            f"another process took the run over and the late write left t2's head at "
            f"incarnation {shown.incarnation}, {shown.status}"
        )


# -- guards: what held -------------------------------------------------------------------------


async def test_two_runners_starting_one_new_id_together_start_it_once(
    server: ThrowawayServer,
) -> None:
    """Two runners (separate connections and owners, as two processes) run the same new
    request id at the same moment, 20 times: one starts it; the other gets RunBusy or the
    stored result -- never a second start record or an incarnation 2."""
    settings = _settings(server)
    wf = _wf(_add("a"), _add("b"))
    async with Runner([settings], lease_ttl=30) as one, Runner([settings], lease_ttl=30) as two:
        for i in range(20):
            rid = f"race-{i}"
            outcomes: list[str] = []

            async def start(runner: Runner, rid: str = rid, outcomes: list[str] = outcomes) -> None:
                try:
                    result = await runner.run(wf, {"n": 1}, request_id=rid)
                except RunBusy:
                    outcomes.append("busy")
                else:
                    outcomes.append("existing" if result.existing else "ran")

            async with anyio.create_task_group() as tg:
                tg.start_soon(start, one)
                tg.start_soon(start, two)
            assert sorted(outcomes) in (["busy", "ran"], ["existing", "ran"]), (i, outcomes)
            ds = one.datasources["rb"]
            assert await ds.load(run_key(rid, 2)) is None
            assert [s for r, s in wfnodes.CALLS if r == rid] == ["a", "b"]
            assert not await _lease_live(ds, rid)


async def test_restart_fork_and_resume_right_after_a_completion(server: ThrowawayServer) -> None:
    """Right after another runner completed a run (its lease ended by the last write): a
    restart is incarnation 2, a fork onto it is refused, a resume finds it completed, a
    plain run gets the stored result -- and each leaves the lease ended."""
    settings = _settings(server)
    wf = _wf(_add("a"), _add("b"))
    async with Runner([settings], lease_ttl=30) as one, Runner([settings], lease_ttl=30) as two:
        ds = two.datasources["rb"]
        await one.run(wf, {"n": 1}, request_id="done")
        again = await two.run(wf, {"n": 1}, request_id="done")
        assert again.existing and again.vars["total"] == 2
        resumed = await two.resume("done")
        assert resumed.status == "completed" and resumed.steps_run == ()
        await one.run(wf, {"n": 1}, request_id="src")
        with pytest.raises(RunExists):
            await two.fork("src", new_id="done")
        restarted = await two.run(wf, {"n": 5}, request_id="done", restart=True)
        assert restarted.status == "completed" and not restarted.existing
        head = await two.head("done")
        assert head is not None and head.incarnation == 2 and head.status == "completed"
        for rid in ("done", "src"):
            assert not await _lease_live(ds, rid), rid


@pytest.mark.parametrize("durability", ["sync", "async", "exit"])
async def test_every_durability_ends_the_lease_with_the_last_checkpoint(
    server: ThrowawayServer, durability: str
) -> None:
    settings = _settings(server)
    async with Runner(
        [settings], lease_ttl=30, durability=cast("Durability", durability)
    ) as runner:
        ds = runner.datasources["rb"]
        for i in range(5):
            result = await runner.run(_wf(_add("a"), _add("b"), _add("c")), request_id=f"d{i}")
            assert result.status == "completed"
            head = await runner.head(f"d{i}")
            assert head is not None and head.status == "completed" and head.last_done == "c"
            assert not await _lease_live(ds, f"d{i}")


class FailLastWrite(Proxy):
    """The first write of a last checkpoint fails (the connection dropped); the rest go
    through."""

    def __init__(self, inner: Any) -> None:
        super().__init__(inner)
        self.failed = 0

    def _maybe_fail(self, releasing: bool) -> None:
        if releasing and not self.failed:
            self.failed += 1
            raise OSError("connection reset while writing the last checkpoint")

    async def save_batch_fenced(self, entries: Sequence[Entry], lease: str, token: int) -> bool:
        self._maybe_fail(_releases(entries))
        held: bool = await self._inner.save_batch_fenced(entries, lease, token)
        return held

    async def save_groups(self, groups: Sequence[Group]) -> list[bool]:
        self._maybe_fail(any(_releases(entries) for entries, _, _ in groups))
        written: list[bool] = await self._inner.save_groups(groups)
        return written


@pytest.mark.parametrize("durability", ["sync", "async", "exit"])
async def test_a_failed_last_checkpoint_fails_the_run_and_still_ends_its_lease(
    server: ThrowawayServer, durability: str
) -> None:
    settings = _settings(server)
    driver = FailLastWrite(create_store(settings))
    ds = Datasource(settings, driver)
    async with Runner([ds], lease_ttl=30, durability=cast("Durability", durability)) as runner:
        with pytest.raises(RunError):
            await runner.run(_wf(_add("a"), _add("b")), request_id="fails")
        assert driver.failed == 1
        head = await runner.head("fails")
        assert head is not None and head.status == "failed"
        assert not await _lease_live(ds, "fails")
        resumed = await runner.resume("fails")  # nothing holds it: resumed at once
        assert resumed.status == "completed"
        assert not await _lease_live(ds, "fails")


async def test_a_hundred_runs_ending_together_end_every_lease(server: ThrowawayServer) -> None:
    """Group commit: 100 runs released together at a gate write their last checkpoints in
    shared flushes (one script or statement each); every lease is ended afterwards."""
    settings = _settings(server)
    wf = _wf({"name": "hold", "node": f"{NODE}:wait_gate"}, _add("last"))
    async with Runner([settings], lease_ttl=30) as runner:
        ds = runner.datasources["rb"]
        assert ds.group_commit is not None

        async def one(i: int) -> None:
            await runner.run(wf, request_id=f"g{i}")

        async with anyio.create_task_group() as tg:
            for i in range(100):
                tg.start_soon(one, i)
            with anyio.fail_after(10):
                await wfnodes.wait_for_gate_waiters(100)
            flushes, groups = ds.group_commit.flushes, ds.group_commit.groups
            wfnodes.GATE.set()
        assert ds.group_commit.groups - groups >= 100
        assert ds.group_commit.flushes - flushes < 100  # some shared a round trip
        live = [i for i in range(100) if await _lease_live(ds, f"g{i}")]
        assert live == []
        heads = [await runner.head(f"g{i}") for i in range(100)]
        assert all(h is not None and h.status == "completed" for h in heads)


@pytest.mark.parametrize(
    "steps",
    [
        pytest.param([_add("a"), _add("b", when="${ctx.vars.total > 5}")], id="when-skips-last"),
        pytest.param(
            [
                _add("start"),
                _nap("x", 0.02, depends_on=["start"]),
                _nap("y", 0.05, depends_on=["start"]),
                _nap("z", 0.01, depends_on=["start"]),
            ],
            id="parallel-last-level",
        ),
        pytest.param(
            [
                {"name": "make", "node": "set", "inputs": {"xs": list(range(6))}},
                {
                    "name": "square",
                    "node": f"{NODE}:map_item",
                    "map": {"items": "${ctx.vars.xs}", "concurrency": 3},
                    "inputs": {"x": "${ctx.item}"},
                },
            ],
            id="map-last",
        ),
        pytest.param([_add("a"), _add("b", persistence={"enabled": False})], id="unsaved-last"),
    ],
)
async def test_last_steps_of_every_shape_end_the_lease(
    server: ThrowawayServer, steps: list[dict[str, Any]]
) -> None:
    settings = _settings(server)
    async with Runner([settings], lease_ttl=30) as runner:
        ds = runner.datasources["rb"]
        result = await runner.run(_wf(*steps), request_id="shape")
        assert result.status == "completed"
        head = await runner.head("shape")
        assert head is not None and head.status == "completed"
        assert not await _lease_live(ds, "shape")
        again = await runner.run(_wf(*steps), request_id="shape")  # no RunBusy: not held
        assert again.existing


async def test_child_runs_end_their_leases(server: ThrowawayServer, tmp_path: Path) -> None:
    settings = _settings(server)
    persistence = {"enabled": True, "targets": ["rb"]}
    child = {"name": "child", "persistence": persistence, "steps": [_add("c1"), _add("c2")]}
    (tmp_path / "child.json").write_text(json.dumps(child))
    parent = {
        "name": "parent",
        "persistence": persistence,
        "steps": [_add("p1"), {"name": "kid", "workflow": "child.json"}],
    }
    (tmp_path / "parent.json").write_text(json.dumps(parent))
    async with Runner([settings], lease_ttl=30) as runner:
        ds = runner.datasources["rb"]
        result = await runner.run(tmp_path / "parent.json", request_id="fam")
        assert result.status == "completed"
        for rid in ("fam", "fam:kid"):
            head = await runner.head(rid)
            assert head is not None and head.status == "completed", rid
            assert not await _lease_live(ds, rid), rid
