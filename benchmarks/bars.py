"""Issue 18's bars on Redis and PostgreSQL: a run's cost per step against the raw floor, at
N = 10 and 100 steps, and a warm resume of a run that failed halfway.

The workload is the peers benchmark's (``benchmarks/peers``): a linear workflow of N built-in
``set`` steps, each adding ``k<i>`` (a 40-character value, ~50 bytes) to the state, a
checkpoint after every step with the Runner's defaults (``durability: sync``, leases on),
servers on loopback (the throwaway servers of ``tests/servers``, as ``drivers`` starts them).

- **The floor** is no framework: each step puts ``k<i>`` in a dict, encodes the whole dict
  (orjson) and writes it under the run's id in one round trip, with the clients blokrun
  uses: redis-py asyncio ``SET`` (hiredis), asyncpg ``INSERT ... ON CONFLICT (id) DO
  UPDATE`` on a pool of 10.
- **Per step**: wall time of one run / N, a new request id each run, in a warm process with
  its connections open. blokrun, the floor and blokrun with persistence off are interleaved
  in rounds (order rotated), medians. The fixed cost of a run and the cost of one more step
  are fitted from the N = 10 and N = 100 medians (``T(N) = fixed + N * step``).
- **Warm resume**: runs whose step N/2 failed (the ``halfway`` node below raises while
  :data:`FAIL` is set), prepared before timing so each resume is a fresh one, then
  ``runner.resume(id)`` until the run completes (N/2 steps re-run). The floor's resume reads
  the state (one ``GET`` / ``SELECT``), then does the N/2 remaining steps' writes.
- **Resume's own cost**: from calling ``runner.resume(id)`` to the first re-run step's node
  body starting (``time.perf_counter()`` taken in the node).
- **Round trips** per run and per resume, counted (not timed) afterwards by a store wrapper
  on the same server (``tests/integration/test_round_trips.py`` states the design).

100 runs at once are ``throughput``'s rows (``drivers`` runs it), not repeated here.
``python -m benchmarks.bars --profile redis|postgresql`` prints where the time goes
(``benchmarks/PROFILE.md``): 200 runs of N = 10 split into start / steps / end at the node
bodies, with the time spent in store calls in each (no profiler); the round trips of a
resume before its first re-run step, timed, then under cProfile; on Redis, the floor's
``SET`` and a checkpoint's ``EVALSHA`` one at a time; cProfile of 200 runs by layer.
"""

from __future__ import annotations

import argparse
import cProfile
import inspect
import pstats
import statistics
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from uuid import uuid4

import anyio
import orjson

from benchmarks.bare import bare_run
from benchmarks.drivers import _launch, _Skipped, _stop
from benchmarks.harness import Report
from benchmarks.peers.common import VALUE
from blokrun import Runner
from blokrun.errors import StepFailed

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

PER_STEP = "Issue 18: per step against the raw floor (one run at a time)"
RESUME = "Issue 18: warm resume of a run failed at step N/2"
DRIVERS = ("redis", "postgresql")
SIZES = (10, 100)
FLOOR_TABLE = "bars_floor"
NODE = "benchmarks.bars:halfway"

#: While true, :func:`halfway` fails (the runs being prepared for resuming).
FAIL = {"now": False}
#: When :func:`halfway` bodies started (``time.perf_counter()``), in order.
STARTED: list[float] = []
#: Called as a :func:`halfway` body starts (the round-trip count of a resume reads its
#: counter then).
ON_START: list[Callable[[], None]] = []


async def halfway(ctx: Any, inputs: dict[str, Any]) -> None:
    """Step N/2 of the resume workflow: a ``set`` that fails while ``FAIL["now"]``."""
    STARTED.append(time.perf_counter())
    for hook in ON_START:
        hook()
    if FAIL["now"]:
        raise RuntimeError("step N/2 failed on purpose (the benchmark's crash)")
    ctx.vars.update(inputs)


def workflow(n: int, target: str | None, *, fail_at: int | None = None) -> dict[str, Any]:
    """N ``set`` steps checkpointing to ``target`` (``None``: persistence off)."""
    steps: list[dict[str, Any]] = [
        {"name": f"s{i}", "node": "set", "inputs": {f"k{i}": VALUE}} for i in range(n)
    ]
    if fail_at is not None:
        steps[fail_at]["node"] = NODE
    persistence = {"enabled": False} if target is None else {"targets": [target]}
    kind = "off" if target is None else target
    return {
        "name": f"bars-{kind}-{n}{'-halfway' if fail_at is not None else ''}",
        "persistence": persistence,
        "steps": steps,
    }


@dataclass(frozen=True)
class Plan:
    rounds: int  # interleaved rounds of per-step runs (after one warm-up round)
    runs: dict[int, int]  # runs per round of each (system, N)
    resumes: int  # timed warm resumes per (driver, N), after 2 warm-up ones


def plan(quick: bool) -> Plan:
    if quick:
        return Plan(rounds=3, runs={10: 2, 100: 1}, resumes=3)
    return Plan(rounds=40, runs={10: 6, 100: 1}, resumes=40)


# -- the floor -------------------------------------------------------------------------------


class Floor(Protocol):
    async def save(self, run_id: str, data: bytes) -> None: ...

    async def load(self, run_id: str) -> bytes: ...

    async def close(self) -> None: ...


class RedisFloor:
    def __init__(self, url: str) -> None:
        from redis.asyncio import Redis

        self.client = Redis.from_url(url)  # hiredis parses replies when installed

    async def save(self, run_id: str, data: bytes) -> None:
        await self.client.set(run_id, data)

    async def load(self, run_id: str) -> bytes:
        data = await self.client.get(run_id)
        if not isinstance(data, bytes):
            raise AssertionError(f"floor: no state under {run_id}")
        return data

    async def close(self) -> None:
        await self.client.aclose()


class PostgresFloor:
    UPSERT = (
        f"INSERT INTO {FLOOR_TABLE} (id, state) VALUES ($1, $2) "
        "ON CONFLICT (id) DO UPDATE SET state = excluded.state"
    )
    SELECT = f"SELECT state FROM {FLOOR_TABLE} WHERE id = $1"

    def __init__(self, pool: Any) -> None:
        self.pool = pool

    @classmethod
    async def connect(cls, url: str) -> PostgresFloor:
        import asyncpg  # type: ignore[import-untyped,unused-ignore]  # asyncpg ships no hints

        # reset=: asyncpg's default sends a reset query each time a connection goes back
        # to the pool -- a second round trip per upsert, which is not the floor
        pool = await asyncpg.create_pool(url, min_size=1, max_size=10, reset=_no_reset)
        await pool.execute(
            f"CREATE TABLE IF NOT EXISTS {FLOOR_TABLE} (id text PRIMARY KEY, state bytea NOT NULL)"
        )
        return cls(pool)

    async def save(self, run_id: str, data: bytes) -> None:
        await self.pool.execute(self.UPSERT, run_id, data)

    async def load(self, run_id: str) -> bytes:
        data: bytes = await self.pool.fetchval(self.SELECT, run_id)
        return data

    async def close(self) -> None:
        with anyio.fail_after(10):
            await self.pool.close()


async def _no_reset(connection: Any) -> None:
    """The floor's pool ``reset``: nothing (one round trip per upsert)."""


async def floor_run(floor: Floor, n: int, run_id: str, *, start: int = 0) -> None:
    """Steps ``start`` to ``n - 1``: one write of the whole encoded state each (a resume,
    ``start > 0``, first reads the state back)."""
    state: dict[str, str] = {} if start == 0 else orjson.loads(await floor.load(run_id))
    for i in range(start, n):
        state[f"k{i}"] = VALUE
        await floor.save(run_id, orjson.dumps(state))
    if len(state) != n:
        raise AssertionError(f"floor: {len(state)} entries after {n} steps")


# -- one driver's systems ----------------------------------------------------------------------


@dataclass
class Target:
    driver: str
    runner: Runner
    floor: Floor
    workflows: dict[int, Any] = field(default_factory=dict)
    failing: dict[int, Any] = field(default_factory=dict)


async def open_target(driver: str, server: Any) -> Target:
    if driver == "redis":
        settings = server.settings(driver, prefix=f"bars-{uuid4().hex[:6]}/")
        floor: Floor = RedisFloor(f"{server.url}/{await anyio.to_thread.run_sync(server.fresh_db)}")
    else:
        settings = server.settings(driver)  # a table of its own
        floor = await PostgresFloor.connect(server.url)
    runner = Runner([settings])  # the defaults: durability sync, leases on (30 s)
    await runner.connect()
    t = Target(driver, runner, floor)
    for n in SIZES:
        t.workflows[n] = runner.load(workflow(n, driver))
        t.failing[n] = runner.load(workflow(n, driver, fail_at=n // 2))
    return t


async def close_target(t: Target) -> None:
    with anyio.CancelScope(shield=True):
        await t.runner.close()
        await t.floor.close()


async def blokrun_run(runner: Runner, wf: Any, n: int) -> float:
    t0 = time.perf_counter()
    result = await runner.run(wf, request_id=uuid4().hex)
    elapsed = time.perf_counter() - t0
    if len(result.vars) != n:
        raise AssertionError(f"{n}-step run ended with {len(result.vars)} vars")
    return elapsed


async def raw_run(floor: Floor, n: int) -> float:
    t0 = time.perf_counter()
    await floor_run(floor, n, uuid4().hex)
    return time.perf_counter() - t0


# -- per step --------------------------------------------------------------------------------

Job = tuple[str, int, "Callable[[], Awaitable[float]]"]


async def per_step_medians(targets: dict[str, Target], p: Plan) -> dict[tuple[str, int], float]:
    """Median wall time per step of each (system, N), the systems interleaved in rounds."""
    any_runner = next(iter(targets.values())).runner
    off = {n: any_runner.load(workflow(n, None)) for n in SIZES}
    jobs: list[Job] = []
    for n in SIZES:
        jobs.append(("off", n, partial(blokrun_run, any_runner, off[n], n)))
        for t in targets.values():
            jobs.append((f"{t.driver}: floor", n, partial(raw_run, t.floor, n)))
            jobs.append(
                (f"{t.driver}: blokrun", n, partial(blokrun_run, t.runner, t.workflows[n], n))
            )
            for fenced in (True, False):
                what = f"{t.driver}: bare, {'fenced' if fenced else 'unfenced'}"
                jobs.append((what, n, partial(bare_run, t.runner, t.driver, n, fenced=fenced)))
    samples: dict[tuple[str, int], list[float]] = defaultdict(list)
    for r in range(p.rounds + 1):  # round 0 warms up: connections, definitions, statements
        k = r % len(jobs)
        for what, n, job in jobs[k:] + jobs[:k]:
            for _ in range(p.runs[n]):
                elapsed = await job()
                if r:
                    samples[(what, n)].append(elapsed / n)
    return {key: statistics.median(values) for key, values in samples.items()}


async def per_step(report: Report, targets: dict[str, Target], p: Plan) -> None:
    med = await per_step_medians(targets, p)
    count = {n: p.rounds * p.runs[n] for n in SIZES}
    trips = {t.driver: await count_run_trips(t) for t in targets.values()}
    for t in targets.values():
        d = t.driver
        for n in SIZES:
            floor, ours, base = med[(f"{d}: floor", n)], med[(f"{d}: blokrun", n)], med[("off", n)]
            report.add(PER_STEP, f"{d}: floor per step, N={n}", floor, "s",
                       f"median of {count[n]} runs; {n} round trips a run")  # fmt: skip
            report.add(
                PER_STEP, f"{d}: blokrun per step, N={n}", ours, "s",
                f"{ours / floor:.2f}x the floor (goal <= 1.3x); {trips[d][n]} round trips a run; "
                f"{(ours - base) * 1e6:.0f} µs/step over persistence off",
            )  # fmt: skip
            for kind, writes in BARE.items():
                bare = med[(f"{d}: bare, {kind}", n)]
                report.add(PER_STEP, f"{d}: bare loop, {kind}, N={n}", bare, "s",
                           f"{bare / floor:.2f}x the floor; {writes[d]} (bare.py)")  # fmt: skip
        fixed, step = fit(med[(f"{d}: blokrun", SIZES[0])], med[(f"{d}: blokrun", SIZES[1])])
        report.add(PER_STEP, f"{d}: blokrun fixed cost per run", fixed, "s",
                   f"T(N) = fixed + N x step through the N={SIZES[0]} and N={SIZES[1]} "
                   "medians; the floor's is ~0")  # fmt: skip
        floor = med[(f"{d}: floor", SIZES[1])]
        report.add(PER_STEP, f"{d}: blokrun cost of one more step", step, "s",
                   f"the same fit; {step / floor:.2f}x the floor's per step at "
                   f"N={SIZES[1]}")  # fmt: skip
    for n in SIZES:
        report.add(PER_STEP, f"persistence off per step, N={n}", med[("off", n)], "s",
                   f"median of {count[n]} runs")  # fmt: skip


#: what a bare loop's step writes (benchmarks/bare.py), by driver
BARE = {
    "fenced": {
        "redis": "blokrun's 3 records in its fenced EVALSHA, nothing else of blokrun",
        "postgresql": "blokrun's 3 records in its fenced statement, nothing else of blokrun",
    },
    "unfenced": {
        "redis": "the same 3 records in one plain MSET: no lease check, no owned alias",
        "postgresql": "the same 3 records in one plain upsert: no lease check, no owned alias",
    },
}


def fit(small: float, large: float) -> tuple[float, float]:
    """``(fixed, step)`` of ``T(N) = fixed + N * step`` through two per-step medians."""
    n1, n2 = SIZES
    t1, t2 = small * n1, large * n2
    step = (t2 - t1) / (n2 - n1)
    return t1 - n1 * step, step


# -- warm resume -------------------------------------------------------------------------------


async def prepare(t: Target, n: int, k: int) -> tuple[list[str], list[str]]:
    """``k`` blokrun runs failed at step N/2 and ``k`` floor runs holding N/2 steps' state."""
    ids = [uuid4().hex for _ in range(k)]
    FAIL["now"] = True
    try:
        for rid in ids:
            try:
                await t.runner.run(t.failing[n], request_id=rid)
            except StepFailed:
                continue
            raise AssertionError(f"step {n // 2} of {rid} did not fail")
    finally:
        FAIL["now"] = False
    floor_ids = [uuid4().hex for _ in range(k)]
    half = orjson.dumps({f"k{i}": VALUE for i in range(n // 2)})
    for rid in floor_ids:
        await t.floor.save(rid, half)
    return ids, floor_ids


async def blokrun_resume(t: Target, n: int, rid: str) -> tuple[float, float]:
    """Wall time of the resume, and of its part before the first re-run step started."""
    STARTED.clear()
    t0 = time.perf_counter()
    result = await t.runner.resume(rid)
    elapsed = time.perf_counter() - t0
    if result.status != "completed" or len(result.vars) != n:
        raise AssertionError(f"resume of {rid}: {result.status}, {len(result.vars)} vars")
    if len(result.steps_run) != n - n // 2 or not STARTED:
        raise AssertionError(f"resume of {rid} re-ran {result.steps_run}")
    return elapsed, STARTED[0] - t0


async def floor_resume(t: Target, n: int, rid: str) -> float:
    t0 = time.perf_counter()
    await floor_run(t.floor, n, rid, start=n // 2)
    return time.perf_counter() - t0


async def resume(report: Report, targets: dict[str, Target], p: Plan) -> None:
    warm = 2
    prepared = {
        (d, n): await prepare(t, n, warm + p.resumes) for d, t in targets.items() for n in SIZES
    }
    ours: dict[tuple[str, int], list[float]] = defaultdict(list)
    before: dict[tuple[str, int], list[float]] = defaultdict(list)
    raw: dict[tuple[str, int], list[float]] = defaultdict(list)
    keys = list(prepared)
    for i in range(warm + p.resumes):
        k = i % len(keys)
        for d, n in keys[k:] + keys[:k]:
            ids, floor_ids = prepared[(d, n)]
            t = targets[d]
            if i % 2:  # which of the two goes first alternates too
                floor = await floor_resume(t, n, floor_ids[i])
                elapsed, own = await blokrun_resume(t, n, ids[i])
            else:
                elapsed, own = await blokrun_resume(t, n, ids[i])
                floor = await floor_resume(t, n, floor_ids[i])
            if i >= warm:
                ours[(d, n)].append(elapsed)
                before[(d, n)].append(own)
                raw[(d, n)].append(floor)
    for d, t in targets.items():
        trips = await count_resume_trips(t, SIZES[-1])
        for n in SIZES:
            floor = statistics.median(raw[(d, n)])
            value = statistics.median(ours[(d, n)])
            left = n - n // 2
            report.add(RESUME, f"{d}: floor warm resume, N={n}", floor, "s",
                       f"median of {p.resumes}; 1 read + {left} writes")  # fmt: skip
            report.add(
                RESUME, f"{d}: blokrun warm resume, N={n}", value, "s",
                f"{value / floor:.2f}x the floor (goal <= 1.5x); {left} steps re-run; "
                f"{statistics.median(before[(d, n)]) * 1e6:.0f} µs before the first of them",
            )  # fmt: skip
        n = SIZES[-1]
        report.add(
            RESUME, f"{d}: resume's own cost before the first re-run step, N={n}",
            statistics.median(before[(d, n)]), "s",
            f"median of {p.resumes}; resume() called to step {n // 2}'s node starting; "
            f"{trips['before']} round trips in it ({trips['calls']}); goal <= 1 ms",
        )  # fmt: skip


# -- round trips -------------------------------------------------------------------------------

NOT_TRIPS = frozenset({"connect", "close", "describe", "size"})


class Counting:
    """A store whose coroutine methods (each a round trip) are counted by name, and timed:
    ``events`` holds ``(name, start, end)`` of each call (``time.perf_counter()``)."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.calls: Counter[str] = Counter()
        self.events: list[tuple[str, float, float]] = []

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if name in NOT_TRIPS or not inspect.iscoroutinefunction(attr):
            return attr

        async def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls[name] += 1
            t0 = time.perf_counter()
            try:
                return await attr(*args, **kwargs)
            finally:
                self.events.append((name, t0, time.perf_counter()))

        return counted


def _counting(t: Target) -> Counting:
    ds = t.runner.datasources[t.driver]
    counting = Counting(ds.store)
    ds.store = counting
    return counting


def _uncount(t: Target, counting: Counting) -> None:
    t.runner.datasources[t.driver].store = counting._inner


async def count_run_trips(t: Target) -> dict[int, int]:
    """Round trips of one run of each size (after the timing: the wrapper costs a little)."""
    counting = _counting(t)
    try:
        found = {}
        for n in SIZES:
            counting.calls.clear()
            await t.runner.run(t.workflows[n], request_id=uuid4().hex)
            found[n] = sum(counting.calls.values())
        return found
    finally:
        _uncount(t, counting)


async def count_resume_trips(t: Target, n: int) -> dict[str, Any]:
    """Round trips of a resume of an N-step run failed at N/2: before its first re-run step
    (and which), and in all."""
    (rid,), _ = await prepare(t, n, 1)
    counting = _counting(t)
    seen: list[Counter[str]] = []
    ON_START.append(lambda: seen.append(counting.calls.copy()))
    try:
        await t.runner.resume(rid)
    finally:
        ON_START.clear()
        _uncount(t, counting)
    first = seen[0] if seen else Counter()
    calls = ", ".join(f"{name} {k}" for name, k in sorted(first.items()))
    return {"before": sum(first.values()), "calls": calls, "total": sum(counting.calls.values())}


# -- profile -----------------------------------------------------------------------------------

#: When :func:`stamp` bodies started, in order (the phases of a profiled run).
STAMPS: list[float] = []


async def stamp(ctx: Any, inputs: dict[str, Any]) -> None:
    """The built-in ``set``, noting when it started."""
    STAMPS.append(time.perf_counter())
    ctx.vars.update(inputs)


def _phase_of(start: float, stamps: list[float]) -> str:
    if start < stamps[0]:
        return "start"
    return "steps" if start < stamps[-1] else "end"


@dataclass
class Phases:
    """Per run: wall and store-call time of its start (call to first node), its steps
    (first node to last node: the checkpoints of all but the last step) and its end (last
    node to return: the last checkpoint, the release), the store calls in each, CPU."""

    wall: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    store: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    calls: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    cpu: list[float] = field(default_factory=list)
    floor: list[float] = field(default_factory=list)  # the floor's run, per step

    def add(self, t0: float, t1: float, stamps: list[float], counting: Counting) -> None:
        bounds = {"start": (t0, stamps[0]), "steps": (stamps[0], stamps[-1]),
                  "end": (stamps[-1], t1)}  # fmt: skip
        inside: dict[str, float] = defaultdict(float)
        for name, start, end in counting.events:
            phase = _phase_of(start, stamps)
            inside[phase] += end - start
            self.calls[phase][name] += 1
        for phase, (a, b) in bounds.items():
            self.wall[phase].append(b - a)
            self.store[phase].append(inside[phase])

    def table(self, runs: int, n: int) -> list[str]:
        med = statistics.median
        lines = [
            "| phase | wall | in store calls | blokrun's own (the rest) | store calls |",
            "|---|---:|---:|---:|---|",
        ]
        for phase in ("start", "steps", "end"):
            per = n - 1 if phase == "steps" else 1
            wall, inside = med(self.wall[phase]) / per, med(self.store[phase]) / per
            calls = ", ".join(
                f"{name} {k / runs / per:g}" for name, k in sorted(self.calls[phase].items())
            )
            what = f"{phase} (per step)" if phase == "steps" else phase
            lines.append(
                f"| {what} | {wall * 1e6:.0f} µs | {inside * 1e6:.0f} µs "
                f"| {(wall - inside) * 1e6:.0f} µs | {calls} |"
            )
        return lines


async def phases(t: Target, runs: int, n: int) -> Phases:
    """``runs`` runs of N ``stamp`` steps, each after a floor run of N steps (interleaved)."""
    wf = t.runner.load(
        {**workflow(n, t.driver), "name": f"bars-stamp-{n}",
         "steps": [{"name": f"s{i}", "node": "benchmarks.bars:stamp",
                    "inputs": {f"k{i}": VALUE}} for i in range(n)]}
    )  # fmt: skip
    found = Phases()
    counting = _counting(t)
    try:
        for r in range(runs + 20):
            floor = await raw_run(t.floor, n)
            STAMPS.clear()
            counting.events.clear()
            cpu0, t0 = time.process_time(), time.perf_counter()
            await t.runner.run(wf, request_id=uuid4().hex)
            t1, cpu = time.perf_counter(), time.process_time() - cpu0
            if r >= 20:
                found.add(t0, t1, list(STAMPS), counting)
                found.cpu.append(cpu)
                found.floor.append(floor / n)
    finally:
        _uncount(t, counting)
    return found


async def resume_phases(t: Target, k: int, n: int) -> list[str]:
    """Where a resume's time before its first re-run step goes: ``k`` resumes of N-step
    runs failed at N/2, the store calls before step N/2's node starts."""
    ids, _ = await prepare(t, n, k + 2)
    counting = _counting(t)
    before: list[float] = []
    inside: list[float] = []
    calls: list[list[tuple[str, float]]] = []
    try:
        for i, rid in enumerate(ids):
            counting.events.clear()
            STARTED.clear()
            t0 = time.perf_counter()
            await t.runner.resume(rid)
            first = STARTED[0]
            early = [(name, b - a) for name, a, b in counting.events if a < first]
            if i >= 2:
                before.append(first - t0)
                inside.append(sum(d for _, d in early))
                calls.append(early)
    finally:
        _uncount(t, counting)
    med = statistics.median
    lines = [
        f"resume of a {n}-step run failed at step {n // 2}, up to that step's node starting "
        f"(median of {k}): {med(before) * 1e6:.0f} µs wall, {med(inside) * 1e6:.0f} µs in "
        f"{len(calls[0])} store calls, {(med(before) - med(inside)) * 1e6:.0f} µs blokrun's own",
    ]
    for j, (name, _) in enumerate(calls[0]):
        lines.append(f"  {j + 1}. {name}: {med(c[j][1] for c in calls) * 1e6:.0f} µs")
    ids, _ = await prepare(t, n, k)
    prof = cProfile.Profile()
    ON_START.append(prof.disable)  # the profile stops as the first re-run step starts
    try:
        for rid in ids:
            prof.enable()
            await t.runner.resume(rid)
            prof.disable()
    finally:
        ON_START.clear()
    lines += ["", "the same, under cProfile: blokrun functions by cumulative time per resume "
              "(µs), until the first re-run step starts"]  # fmt: skip
    lines += _top(prof, k, 30)
    return lines


def _top(prof: cProfile.Profile, runs: int, count: int) -> list[str]:
    raw: dict[Any, Any] = pstats.Stats(prof).stats  # type: ignore[attr-defined]
    rows = []
    for (filename, line, func), (_, _, _, cumtime, _) in raw.items():
        if "/blokrun/" in filename:
            where = filename.split("/blokrun/", 1)[1]
            rows.append((cumtime / runs * 1e6, f"{where}:{line} {func}"))
    return [f"  {cum:8.1f}  {name}" for cum, name in sorted(rows, reverse=True)[:count]]


class Recording(Counting):
    """:class:`Counting` that also keeps the arguments of each ``save_batch_fenced``."""

    def __init__(self, inner: Any) -> None:
        super().__init__(inner)
        self.saves: list[tuple[Any, ...]] = []

    def __getattr__(self, name: str) -> Any:
        attr = super().__getattr__(name)
        if name != "save_batch_fenced":
            return attr

        async def recorded(*args: Any) -> Any:
            self.saves.append(args)
            return await attr(*args)

        return recorded


async def _server_usec(client: Any) -> dict[str, tuple[int, int]]:
    """redis-server's ``(calls, usec)`` by command so far (``INFO commandstats``)."""
    info = await client.info("commandstats")
    return {k.removeprefix("cmdstat_"): (v["calls"], v["usec"]) for k, v in info.items()}


async def ladder(server: Any, calls: int = 50, rounds: int = 40) -> list[str]:
    """Redis: from the floor's ``SET`` to the checkpoint's driver call, one call at a time,
    interleaved in rounds: wall time per call, and redis-server's time in the command."""
    from redis.asyncio import Redis

    from blokrun.datasources.redis import RedisStore, _last_wins, _script_entry

    settings = server.settings("redis", prefix="ladder/")
    runner = Runner([settings])
    await runner.connect()
    ds = runner.datasources["redis"]
    recording = Recording(ds.store)
    ds.store = recording
    await runner.run(runner.load(workflow(10, "redis")), request_id="ladder")
    store: RedisStore = recording._inner
    ds.store = store
    entries, lease_key, token = recording.saves[len(recording.saves) // 2]  # a mid-run step
    client = store.client()
    await client.hset(lease_key, mapping={"owner": "bench", "token": token, "expires_ms": 2**50})
    keys: list[str] = [lease_key]  # what the driver sends (RedisStore.save_batch_fenced)
    args: list[bytes | str | int] = [token]
    for entry in _last_wins(entries):
        key, value, px = _script_entry(*entry, lease_key)
        keys.append(key)
        args += (value, px)
    size = sum(len(x) for x in args if isinstance(x, bytes | str))
    plain = Redis.from_url(settings.url)
    small = orjson.dumps({f"k{i}": VALUE for i in range(5)})  # the floor's, mid-run at N=10
    big = b"x" * size
    script = store._lua().save_fenced
    noop = client.register_script("return {1}")
    steps: dict[str, tuple[str, Callable[[], Awaitable[Any]]]] = {
        f"floor: SET of {len(small)} B, plain client": ("set", partial(plain.set, "l", small)),
        f"SET of {len(big)} B, plain client": ("set", partial(plain.set, "l", big)),
        f"SET of {len(big)} B, blokrun's client (blocking pool, timeouts)": (
            "set", partial(client.set, "l", big)),
        "EVALSHA of `return {1}`, the same keys and args": (
            "evalsha", partial(noop, keys=keys, args=args)),
        # what a script's arguments cost the server, by size (Lua copies and hashes each)
        "EVALSHA of `return {1}`, one 5 KB argument": (
            "evalsha", partial(noop, keys=[], args=[b"x" * 5_000])),
        "EVALSHA of `return {1}`, one 50 KB argument": (
            "evalsha", partial(noop, keys=[], args=[b"x" * 50_000])),
        f"the fenced EVALSHA: {len(keys)} keys, {len(args)} args, {size} B": (
            "evalsha", partial(script, keys=keys, args=args)),
        "the driver's save_batch_fenced (that EVALSHA)": (
            "evalsha", partial(store.save_batch_fenced, entries, lease_key, token)),
    }  # fmt: skip
    wall: dict[str, list[float]] = defaultdict(list)  # every call
    srv: dict[str, list[int]] = defaultdict(lambda: [0, 0])  # calls, usec in the command
    names = list(steps)
    try:
        if not await store.save_batch_fenced(entries, lease_key, token):
            raise AssertionError("the replayed checkpoint was refused (lease not held?)")
        for r in range(rounds + 1):  # round 0 warms up; the order rotates each round
            for name in names[r % len(names) :] + names[: r % len(names)]:
                command, call = steps[name]
                s0 = (await _server_usec(client)).get(command, (0, 0))
                for _ in range(calls):
                    t0 = time.perf_counter()
                    await call()
                    if r:
                        wall[name].append(time.perf_counter() - t0)
                s1 = (await _server_usec(client)).get(command, (0, 0))
                if r:
                    srv[name][0] += s1[0] - s0[0]
                    srv[name][1] += s1[1] - s0[1]
    finally:
        await plain.aclose()
        await runner.close()
    med = statistics.median
    lines = [f"| redis command, one at a time ({rounds} rounds of {calls}) | median wall "
             "| redis-server time in the command |", "|---|---:|---:|"]  # fmt: skip
    for name in steps:
        usec = srv[name][1] / max(1, srv[name][0])
        lines.append(f"| {name} | {med(wall[name]) * 1e6:.0f} µs | {usec:.1f} µs |")
    return lines


async def profile(driver: str, runs: int = 200, n: int = 10) -> None:
    """The phases of ``runs`` runs of N steps (timed, no profiler), where a resume's time
    before its first re-run step goes, then cProfile of ``runs`` runs: time by layer and
    blokrun's functions by cumulative time."""
    from benchmarks.profile_step import layer

    with tempfile.TemporaryDirectory(prefix="blokrun-bench-bars-") as tmp:
        server, reason = await anyio.to_thread.run_sync(_launch, driver, Path(tmp))
        if server is None:
            raise SystemExit(f"{driver}: {reason}")
        try:
            t = await open_target(driver, server)
            try:
                found = await phases(t, runs, n)
                resumed = await resume_phases(t, 30, SIZES[-1])
                if driver == "redis":
                    resumed += ["", *await ladder(server)]
                wf = t.workflows[n]
                prof = cProfile.Profile()
                prof.enable()
                for _ in range(runs):
                    await t.runner.run(wf, request_id=uuid4().hex)
                prof.disable()
            finally:
                await close_target(t)
        finally:
            await anyio.to_thread.run_sync(_stop, server)
    med = statistics.median
    total = sum(med(found.wall[phase]) for phase in ("start", "steps", "end"))
    print(f"{driver}: {runs} runs of {n} steps, each after a floor run: {total * 1e6:.0f} µs a "
          f"run, {med(found.cpu) * 1e6:.0f} µs of CPU (process_time); the floor "
          f"{med(found.floor) * 1e6:.0f} µs per step\n")  # fmt: skip
    print("\n".join(found.table(runs, n)))
    print()
    print("\n".join(resumed))
    stats = pstats.Stats(prof)
    by_layer: dict[str, float] = defaultdict(float)
    raw: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    for (filename, _, func), (_, _, tottime, _, _) in raw.items():
        by_layer[layer(filename, func)] += tottime
    prof_total = sum(by_layer.values())
    print(f"\n| layer ({driver}, N={n}, under cProfile) | µs per run | share |")
    print("|---|---:|---:|")
    for name, seconds in sorted(by_layer.items(), key=lambda kv: -kv[1]):
        print(f"| {name} | {seconds / runs * 1e6:.1f} | {seconds / prof_total:.0%} |")
    print(f"| **total** | {prof_total / runs * 1e6:.1f} | |\n")
    print("blokrun functions by cumulative time per run under cProfile (µs):")
    print("\n".join(_top(prof, runs, 40)))


# -- entry point -------------------------------------------------------------------------------


async def run(report: Report, quick: bool = False) -> None:
    p = plan(quick)
    with tempfile.TemporaryDirectory(prefix="blokrun-bench-bars-") as tmp:
        t0 = time.perf_counter()
        servers: dict[str, Any] = {}
        skipped: dict[str, str] = {}

        async def launch(driver: str) -> None:
            server, reason = await anyio.to_thread.run_sync(_launch, driver, Path(tmp))
            if server is None:
                skipped[driver] = str(reason)[:300]
            else:
                servers[driver] = server

        async with anyio.create_task_group() as tg:
            for driver in DRIVERS:
                tg.start_soon(launch, driver)
        print(f"  (servers started in {time.perf_counter() - t0:.1f}s)", flush=True)
        targets: dict[str, Target] = {}
        try:
            for driver in DRIVERS:
                if driver in servers:
                    targets[driver] = await open_target(driver, servers[driver])
            for driver, reason in skipped.items():
                report.add(PER_STEP, f"{driver}: floor per step, N={SIZES[0]}", _Skipped(), "",
                           reason)  # fmt: skip
            if targets:
                await per_step(report, targets, p)
                await resume(report, targets, p)
        finally:
            for target in targets.values():
                await close_target(target)
            with anyio.CancelScope(shield=True):
                for server in servers.values():
                    await anyio.to_thread.run_sync(_stop, server)


if __name__ == "__main__":
    # the workflows name this module's nodes as ``benchmarks.bars``: use that module (with
    # the flags they read), not this ``__main__`` copy of it
    from benchmarks import bars  # noqa: PLW0406

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer repeats (a smoke run)")
    parser.add_argument("--profile", choices=DRIVERS, help="where a run's time goes, instead")
    args = parser.parse_args()
    if args.profile:
        anyio.run(bars.profile, args.profile)
    else:
        anyio.run(bars.run, Report(), args.quick)
