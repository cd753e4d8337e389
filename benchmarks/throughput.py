"""Issue 7's goals on Redis and PostgreSQL: the floor, durability modes, 100 runs at once.

* **Floor**: one raw round trip that saves the whole context (redis-py ``SET``; asyncpg
  upsert), against blokrun's checkpoint per step on the same server (same ~50 bytes a
  step). Ratio = checkpoint / floor.
* **Durability**: per-step cost of a checkpointed step that does real work (2 ms of a
  blocking call, in a worker thread), ``sync`` vs ``async`` (write-behind overlaps the save
  with the next step) vs ``exit``. Not an asyncio sleep: asyncio waits for timers in whole
  milliseconds (epoll), rounded up, so a sub-ms overlap hides behind that rounding.
* **100 runs at once**: 100 concurrent runs of a 10-step workflow in one process,
  checkpointed steps per second; with and without group commit, with and without leases.
"""

from __future__ import annotations

import statistics
import time
from typing import Any
from uuid import uuid4

import anyio
import orjson

from benchmarks import nodes
from benchmarks.harness import Report, median_of
from benchmarks.runner_overhead import per_step, workflow
from blokrun import Runner

FLOOR = "Checkpoint vs the floor (one raw round trip saving the context)"
DURABILITY = "Durability modes (steps that block 2 ms in a thread)"
CONCURRENCY = "100 runs of 10 steps at once (checkpointed steps/s)"


async def _raw_redis(url: str, n: int) -> float:
    from redis.asyncio import Redis

    client = Redis.from_url(url)
    state: dict[str, Any] = {}
    times = []
    try:
        for i in range(n):
            state[f"k{i % 100}"] = "x" * 40
            blob = orjson.dumps(state)
            t0 = time.perf_counter()
            await client.set("floor-run", blob)
            times.append(time.perf_counter() - t0)
    finally:
        await client.aclose()
    return statistics.median(times)


async def _raw_pg(url: str, n: int) -> float:
    import asyncpg  # type: ignore[import-untyped,unused-ignore]  # asyncpg ships no type hints

    con = await asyncpg.connect(url)
    state: dict[str, Any] = {}
    times = []
    try:
        await con.execute("CREATE TABLE IF NOT EXISTS floor (id text PRIMARY KEY, data bytea)")
        for i in range(n):
            state[f"k{i % 100}"] = "x" * 40
            blob = orjson.dumps(state)
            t0 = time.perf_counter()
            await con.execute(
                "INSERT INTO floor VALUES ($1, $2) ON CONFLICT (id) DO UPDATE SET data = $2",
                "floor-run",
                blob,
            )
            times.append(time.perf_counter() - t0)
    finally:
        await con.close()
    return statistics.median(times)


def _nap_workflow(n: int, durability: str) -> dict[str, Any]:
    return {
        "name": f"nap-{durability}-{n}",
        "persistence": {"durability": durability, "targets": ["tp"]},
        "steps": [
            {
                "name": f"s{i}",
                "node": "benchmarks.nodes:blocking_work",
                "inputs": {"seconds": 0.002},
            }
            for i in range(n)
        ],
    }


async def floor(report: Report, driver: str, server: Any, quick: bool) -> None:
    settings = server.settings("tp", prefix=f"tp-{uuid4().hex[:6]}/")
    n = 50
    raw = await (_raw_redis if driver == "redis" else _raw_pg)(
        settings.url, 300 if not quick else 50
    )
    async with Runner([settings]) as runner:
        off = runner.load(workflow(n, persistence=False))
        on = runner.load(workflow(n, persistence=True, target="tp"))
        base = await per_step(runner, off, n, 5)
        ck = await per_step(runner, on, n, 5 if not quick else 2) - base
    report.add(FLOOR, f"{driver}: raw round trip", raw, "s", "median of single saves")
    report.add(
        FLOOR, f"{driver}: blokrun checkpoint per step", ck, "s",
        f"{ck / raw:.2f}x the floor (goal <= 1.1x); minus {base * 1e6:.1f} µs/step off",
    )  # fmt: skip


async def durability(report: Report, driver: str, server: Any, quick: bool) -> None:
    settings = server.settings("tp", prefix=f"tp-{uuid4().hex[:6]}/")
    repeats = 5 if not quick else 2
    async with Runner([settings]) as runner:
        off_wf = runner.load({**_nap_workflow(20, "sync"), "persistence": {"enabled": False}})
        nap_off = await per_step(runner, off_wf, 20, repeats)
        for mode in ("sync", "async", "exit"):
            wf = runner.load(_nap_workflow(20, mode))
            value = await per_step(runner, wf, 20, repeats)
            report.add(
                DURABILITY, f"{driver}: {mode}", value, "s",
                f"per step; {(value - nap_off) * 1e6:.0f} µs over persistence off "
                f"({nap_off * 1e3:.2f} ms)",
            )  # fmt: skip


async def _steps_per_second(runner: Runner, wf: Any, runs: int, repeats: int) -> float:
    async def batch() -> float:
        t0 = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for _ in range(runs):
                tg.start_soon(runner.run, wf)
        return time.perf_counter() - t0

    seconds = await median_of(batch, repeats)
    return runs * 10 / seconds


async def concurrency(report: Report, driver: str, server: Any, quick: bool) -> None:
    repeats = 5 if not quick else 2
    for leases, grouped, label in (
        (True, True, "leases + group commit (default)"),
        (True, False, "leases, no group commit"),
        (False, True, "no leases, group commit"),
    ):
        settings = server.settings("tp", prefix=f"tp-{uuid4().hex[:6]}/")
        async with Runner([settings], lease_ttl=30.0 if leases else None) as runner:
            ds = runner.datasources["tp"]
            if not grouped:
                ds.group_commit = None
            wf = runner.load(workflow(10, persistence=True, target="tp"))
            value = await _steps_per_second(runner, wf, 100, repeats)
            gc = ds.group_commit
            note = f"median of {repeats}; goal >= 10,000"
            if gc is not None and gc.flushes:
                note += f"; {gc.groups / gc.flushes:.0f} saves per round trip"
            report.add(CONCURRENCY, f"{driver}: {label}", value, "/s", note)


async def run_all(report: Report, servers: dict[str, Any], quick: bool) -> None:
    present = [d for d in ("redis", "postgresql") if d in servers]
    for driver in present:
        await floor(report, driver, servers[driver], quick)
    for driver in present:
        await durability(report, driver, servers[driver], quick)
    for driver in present:
        await resume_warm(report, driver, servers[driver], quick)
    for driver in present:
        await concurrency(report, driver, servers[driver], quick)


RESUME = "Resume a 100-step run (failed at its last step)"


def _failing_workflow(n: int) -> dict[str, Any]:
    steps: list[dict[str, Any]] = [
        {"name": f"s{i}", "node": "set", "inputs": {f"k{i}": "x" * 40}} for i in range(n - 1)
    ]
    steps.append({"name": "last", "node": "benchmarks.nodes:provider"})
    return {"name": f"resumable-{n}", "persistence": {"targets": ["tp"]}, "steps": steps}


async def resume_warm(report: Report, driver: str, server: Any, quick: bool) -> None:
    """Runs fail at the last step; each is then resumed (the last step now a no-op)."""
    settings = server.settings("tp", prefix=f"rs-{uuid4().hex[:6]}/")
    reps = 20 if not quick else 5
    async with Runner([settings]) as runner:
        wf = runner.load(_failing_workflow(100))
        times = []
        for i in range(reps + 2):
            rid = f"resume-{i}"
            nodes.DOWN["now"] = True
            try:
                await runner.run(wf, request_id=rid)
            except Exception:  # the designed failure at the last step
                pass
            nodes.DOWN["now"] = False
            t0 = time.perf_counter()
            await runner.resume(rid)
            times.append(time.perf_counter() - t0)
    value = statistics.median(times[2:])
    note = f"median of {reps}; head lookup, chain read, lease, 1 step; goal <= 5 ms"
    report.add(RESUME, f"{driver}: warm, in-process", value, "s", note)
