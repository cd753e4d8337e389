"""Per-driver datasource costs: single ops, batches, checkpoints, and the checkpoint fan-out.

Every figure goes through the public :class:`~blokrun.datasources.Datasource` wrapper (or a
:class:`~blokrun.Runner`) with 1 KB values, against the throwaway servers of the test suite
(``tests/servers/<driver>.py``: fresh processes on free loopback ports, stopped at the end).
A server that cannot be had here is recorded as skipped, with the reason.

- ``save`` / ``load``: per-op latency, p50 and p99 of N sequential ops after a warm-up.
- ``save_batch``: N entries in one call into a fresh store, median of a few (fewer if
  the emulators exhaust :data:`BATCH_BUDGET`; the note says how many).
- checkpoint per step: a linear workflow of built-in ``set`` steps (as in
  ``runner_overhead``) checkpointing to the driver alone, minus the same workflow with
  persistence off, divided by the step count (the run start/end records are included,
  spread over the steps).
- fan-out: one workflow checkpointing to redis, postgresql and s3 at once against each of
  them alone, runs interleaved so all four see the same machine load. The checkpointer
  writes to every target concurrently, so fan-out should cost about the slowest alone.
  moto is ~40x slower than the others, so sequential would cost only ~1.05x the slowest
  as well: the notes give both references. redis + postgresql at once (without s3) shows
  what concurrency does for fast targets, whose cost is mostly client CPU on the one
  event loop (which no concurrency overlaps).

Two servers are not production servers and are labelled so: MongoDB is **mongoeco**, a
Python wire-protocol emulator (~5-15 ms per write), and S3 is **moto** (~20-40 ms per
request); they get smaller counts. The PostgreSQL test cluster runs with ``fsync=off``.
"""

from __future__ import annotations

import importlib
import math
import os
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio

from benchmarks.harness import Report, percentile
from benchmarks.runner_overhead import per_step, workflow
from blokrun import Runner
from blokrun.datasources import build_datasource

if TYPE_CHECKING:
    from blokrun.spec.loader import Workflow

DRIVERS = ("memory", "filesystem", "redis", "postgresql", "mongodb", "s3")
FANOUT = ("redis", "postgresql", "s3")
SLOW = frozenset({"mongodb", "s3"})  # emulators: small counts
BATCH_BUDGET = 4.0  # seconds of save_batch per driver before repeats stop early
VALUE = os.urandom(1024)
#: what a reader must know to compare the save rows (on the save p50 row)
SAVE_NOTES = {
    "filesystem": "temp file + fsync + rename + folder fsync per save",
    "redis": "no RDB/AOF: in memory",
    "postgresql": "test cluster runs fsync=off",
}

OPS = "Datasource ops (1 KB values)"
CHECKPOINT = "Checkpoint overhead per step, by driver"
FAN = "Checkpoint fan-out: redis + postgresql + s3"


class _Skipped(float):
    """A NaN that prints as ``skipped`` in the table (the reason goes in the note)."""

    def __new__(cls) -> _Skipped:
        return super().__new__(cls, math.nan)

    def __format__(self, spec: str) -> str:
        return "skipped"


@dataclass(frozen=True)
class Plan:
    ops: int  # sequential save then load ops
    warmup: int
    batch: int  # entries per save_batch
    batch_repeats: int
    batch_warmup: int
    steps: int  # checkpointed workflow length
    step_repeats: int
    quick: bool = False


def plan(driver: str, quick: bool) -> Plan:
    slow = driver in SLOW
    if quick:
        return Plan(
            ops=10 if slow else 50, warmup=2 if slow else 5, batch=20 if slow else 100,
            batch_repeats=1, batch_warmup=0, steps=5 if slow else 10, step_repeats=1, quick=True,
        )  # fmt: skip
    if slow:  # no batch warm-up: each batch store is warmed by one save first
        return Plan(ops=100, warmup=10, batch=200, batch_repeats=3, batch_warmup=0,
                    steps=20, step_repeats=3)  # fmt: skip
    if driver == "filesystem":  # fsync on: 1-8 ms per save, 0.4-3.5 ms per batched entry
        return Plan(ops=300, warmup=20, batch=1000, batch_repeats=3, batch_warmup=0,
                    steps=50, step_repeats=3)  # fmt: skip
    return Plan(ops=1000, warmup=100, batch=1000, batch_repeats=5, batch_warmup=1,
                steps=50, step_repeats=5)  # fmt: skip


def label(driver: str, server: Any) -> str:
    if driver == "mongodb":
        emulated = getattr(server, "emulator", True)
        return "mongodb (mongoeco emulator)" if emulated else "mongodb (real mongod)"
    return {"filesystem": "filesystem (fsync on)", "s3": "s3 (moto)"}.get(driver, driver)


# -- servers -------------------------------------------------------------------------------


def _launch(driver: str, workdir: Path) -> tuple[Any, str | None]:
    """``(server, None)`` or ``(None, reason)``; never raises (a skip is not a failure)."""
    from tests.servers.base import ServerUnavailable

    folder = workdir / driver
    folder.mkdir(parents=True, exist_ok=True)
    try:
        module = importlib.import_module(f"tests.servers.{driver}")
        return module.launch(folder), None
    except ServerUnavailable as exc:
        return None, str(exc)
    except Exception as exc:  # e.g. a server module still being written
        return None, f"{type(exc).__name__}: {exc}"


def _stop(server: Any) -> None:
    cleanup = getattr(server, "cleanup", None)  # postgresql: stop and remove the cluster
    (cleanup or server.stop)()


async def launch_all(workdir: Path) -> tuple[dict[str, Any], dict[str, str]]:
    """Start every server at once (threads: launches are sync and mostly wait)."""
    servers: dict[str, Any] = {}
    skipped: dict[str, str] = {}

    async def one(driver: str) -> None:
        server, reason = await anyio.to_thread.run_sync(_launch, driver, workdir)
        if server is not None:
            servers[driver] = server
        else:
            skipped[driver] = reason or "unavailable"

    async with anyio.create_task_group() as tg:
        for driver in DRIVERS:
            tg.start_soon(one, driver)
    return servers, skipped


async def stop_all(servers: dict[str, Any]) -> None:
    with anyio.CancelScope(shield=True):
        async with anyio.create_task_group() as tg:
            for server in servers.values():
                tg.start_soon(anyio.to_thread.run_sync, _stop, server)


# -- measures ------------------------------------------------------------------------------


async def ops(report: Report, name: str, server: Any, p: Plan) -> None:
    settings = server.settings("bench")  # a fresh, empty store
    async with build_datasource(settings) as ds:
        for i in range(p.warmup):
            await ds.save(f"warm/{i}", VALUE)
            await ds.load(f"warm/{i}")
        saves: list[float] = []
        for i in range(p.ops):
            t0 = time.perf_counter()
            await ds.save(f"op/{i}", VALUE)
            saves.append(time.perf_counter() - t0)
        loads: list[float] = []
        for i in range(p.ops):
            t0 = time.perf_counter()
            data = await ds.load(f"op/{i}")
            loads.append(time.perf_counter() - t0)
            if data != VALUE:
                raise AssertionError(f"{name}: load(op/{i}) returned other bytes")
    for op, samples in (("save", saves), ("load", loads)):
        for pct in (50, 99):
            note = f"n={p.ops}"
            if (op, pct) == ("save", 50) and settings.type in SAVE_NOTES:
                note += f"; {SAVE_NOTES[settings.type]}"
            report.add(OPS, f"{name}: {op} p{pct}", percentile(samples, pct), "s", note)


async def batch(report: Report, name: str, server: Any, p: Plan) -> None:
    """``save_batch`` into a fresh store each time (connected and warmed by one save).

    Fresh, because mongoeco's writes slow down as its collection grows (~5 ms per write
    when empty, ~30 ms at 600 documents). Repeats stop early once :data:`BATCH_BUDGET`
    seconds are spent (the note says how many were taken), so a loaded machine cannot
    push the emulators past the benchmark's time budget.
    """
    entries = [(f"batch/{i}", VALUE, None) for i in range(p.batch)]
    samples: list[float] = []
    spent = 0.0
    for r in range(p.batch_warmup + p.batch_repeats):
        if samples and spent > BATCH_BUDGET:
            break
        async with build_datasource(server.settings("bench")) as ds:
            await ds.save("warm", VALUE)
            t0 = time.perf_counter()
            await ds.save_batch(entries)
            elapsed = time.perf_counter() - t0
        spent += elapsed
        if r >= p.batch_warmup:
            samples.append(elapsed)
    value = statistics.median(samples)
    note = f"median of {len(samples)}; {value / p.batch * 1e6:,.0f} µs per entry"
    if len(samples) < p.batch_repeats:
        note += f" (stopped after {BATCH_BUDGET:g}s)"
    if p.batch < 1000 and server.driver in SLOW and not p.quick:
        note += f" (only {p.batch} entries: slow server)"
    report.add(OPS, f"{name}: save_batch of {p.batch}", value, "s", note)


async def checkpoint(report: Report, name: str, server: Any, p: Plan) -> None:
    settings = server.settings("bench")  # a fresh, empty store
    async with Runner([settings]) as runner:
        off = runner.load(workflow(p.steps, persistence=False))
        on = runner.load(workflow(p.steps, persistence=True, target=settings.name))
        base = await per_step(runner, off, p.steps, max(5, p.step_repeats))
        value = await per_step(runner, on, p.steps, p.step_repeats) - base
    note = f"{p.steps} steps, median of {p.step_repeats}, minus {base * 1e6:.1f} µs/step off"
    report.add(CHECKPOINT, name, value, "s", note)


def fanout_workflow(n: int, targets: tuple[str, ...]) -> dict[str, Any]:
    wf = workflow(n, persistence=True)
    wf["name"] = f"fanout-{'-'.join(targets)}-{n}"
    wf["persistence"]["targets"] = list(targets)
    return wf


async def fanout(
    report: Report, servers: dict[str, Any], names: dict[str, str], quick: bool
) -> None:
    drivers = tuple(d for d in FANOUT if d in servers)
    missing = [d for d in FANOUT if d not in servers]
    if len(drivers) < 2:
        report.add(FAN, "fan-out", _Skipped(), "", f"needs 2+ of {FANOUT}; missing {missing}")
        return
    n = 5 if quick else 20  # s3 (moto) sets the pace: ~2 requests per step
    rounds = 1 if quick else 5
    async with Runner([servers[d].settings(d) for d in drivers]) as runner:
        off = runner.load(workflow(n, persistence=False))
        configs: dict[tuple[str, ...], Workflow] = {
            (d,): runner.load(fanout_workflow(n, (d,))) for d in drivers
        }
        configs[drivers] = runner.load(fanout_workflow(n, drivers))
        fast = tuple(d for d in drivers if d not in SLOW)
        if len(fast) >= 2 and fast != drivers:  # fast targets only: is their cost overlapped?
            configs[fast] = runner.load(fanout_workflow(n, fast))
        base = await per_step(runner, off, n, 5)
        times: dict[tuple[str, ...], list[float]] = {c: [] for c in configs}
        for r in range(rounds + 1):  # round 0 warms up (connections, definitions)
            for targets, wf in configs.items():
                t0 = time.perf_counter()
                await runner.run(wf)
                if r:
                    times[targets].append((time.perf_counter() - t0) / n - base)
    per = {targets: statistics.median(ts) for targets, ts in times.items()}
    note = f"{n} steps, median of {rounds} interleaved runs"
    for d in drivers:
        report.add(FAN, f"{names[d]} alone", per[(d,)], "s", note)
    together = per[drivers]
    alone = [per[(d,)] for d in drivers]
    what = " + ".join(names[d] for d in drivers)
    report.add(FAN, f"all {len(drivers)} at once (fan-out)", together, "s", f"{what}; {note}")
    if missing:
        gone = ", ".join(names[d] for d in missing)
        report.add(FAN, f"{gone} (not in the fan-out)", _Skipped(), "", "no server: see above")
    total, slowest = sum(alone), max(alone)
    report.add(FAN, "sum of the alone costs", total, "s", "what sequential writes would cost")
    report.add(
        FAN, "fan-out / slowest alone", together / slowest, "x",
        f"concurrent: ~1.00x; sequential: {total / slowest:.2f}x",
    )  # fmt: skip
    report.add(
        FAN, "fan-out / sum", together / total, "x",
        f"concurrent: ~{slowest / total:.2f}x; sequential: 1.00x",
    )  # fmt: skip
    if fast in per:
        pair = [per[(d,)] for d in fast]
        report.add(
            FAN, f"{' + '.join(names[d] for d in fast)} at once", per[fast], "s",
            f"{per[fast] / max(pair):.2f}x the slowest alone, {per[fast] / sum(pair):.2f}x the sum",
        )  # fmt: skip


# -- entry point ---------------------------------------------------------------------------


async def run(report: Report, quick: bool = False) -> None:
    with tempfile.TemporaryDirectory(prefix="blokrun-bench-drivers-") as tmp:
        t0 = time.perf_counter()
        servers, skipped = await launch_all(Path(tmp))
        print(f"  (servers started in {time.perf_counter() - t0:.1f}s)", flush=True)
        try:
            names = {d: label(d, servers.get(d)) for d in DRIVERS}
            # one section at a time: RESULTS.md starts a new table at each change of section
            for section, measures in ((OPS, (ops, batch)), (CHECKPOINT, (checkpoint,))):
                for driver in DRIVERS:
                    if driver in skipped:
                        reason = skipped[driver][:300]
                        report.add(section, names[driver], _Skipped(), "", reason)
                        continue
                    for measure in measures:
                        await measure(report, names[driver], servers[driver], plan(driver, quick))
            await fanout(report, servers, names, quick)
            from benchmarks import throughput

            await throughput.run_all(report, servers, quick)
            from benchmarks import workers

            await workers.run_all(report, servers, quick)
        finally:
            await stop_all(servers)
