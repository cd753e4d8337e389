"""``python -m benchmarks.ab_cpu redis|postgresql [N] [RUNS]``: one checkout's client CPU
and wall time per checkpointed step of an N-step run (default 100), beside the raw floor,
and a warm resume's own cost before its first re-run step -- to compare two checkouts back
to back (run it from each tree with ``PYTHONPATH=.``, interleaved; copy this file into an
older tree that lacks it: it uses only ``benchmarks.bars``'s helpers).

The workload and the floor are ``benchmarks.bars``'s, on a throwaway server. Per step: 7
rounds of RUNS runs (default 10), each round followed by RUNS floor runs; medians of the
rounds (the floor's client CPU too), and the least round's CPU. CPU is
``time.process_time()`` of this process (the client: the server is another process), so
it moves less with the machine's load than wall time does; the least round moves least.
Resume: 3 rounds of 20 runs failed at step N/2, each resumed, the floor's resume beside it.
Then 100 runs at once: ``benchmarks.throughput``'s default row (a 10-step workflow, leases
and group commit on), checkpointed steps per second, the median of 5 batches.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from uuid import uuid4

import anyio

from benchmarks import bars
from benchmarks.drivers import _launch, _stop


async def main(driver: str, n: int, runs: int) -> None:
    with tempfile.TemporaryDirectory(prefix="blokrun-ab-cpu-") as tmp:
        server, reason = await anyio.to_thread.run_sync(_launch, driver, Path(tmp))
        if server is None:
            raise SystemExit(f"{driver}: {reason}")
        t = await bars.open_target(driver, server)
        try:
            wf = t.workflows[n]
            for _ in range(20):
                await t.runner.run(wf, request_id=uuid4().hex)
            cpu, wall, floor, floor_cpu = [], [], [], []
            for _ in range(7):
                c0, w0 = time.process_time(), time.perf_counter()
                for _ in range(runs):
                    await t.runner.run(wf, request_id=uuid4().hex)
                cpu.append((time.process_time() - c0) / runs / n)
                wall.append((time.perf_counter() - w0) / runs / n)
                c0, w0 = time.process_time(), time.perf_counter()
                for _ in range(runs):
                    await bars.floor_run(t.floor, n, uuid4().hex)
                floor_cpu.append((time.process_time() - c0) / runs / n)
                floor.append((time.perf_counter() - w0) / runs / n)
            med = statistics.median
            print(
                f"{driver} N={n}: client CPU {med(cpu) * 1e6:.0f} µs/step (least of the rounds "
                f"{min(cpu) * 1e6:.0f}: what a busy VM inflates least), wall "
                f"{med(wall) * 1e6:.0f} µs/step, floor {med(floor) * 1e6:.0f} µs/step "
                f"({med(wall) / med(floor):.2f}x; its client CPU {med(floor_cpu) * 1e6:.0f} µs)"
            )
            own, whole, floor_resume = [], [], []
            for _ in range(3):
                ids, floor_ids = await bars.prepare(t, n, 20)
                for rid, fid in zip(ids, floor_ids, strict=True):
                    elapsed, before_first = await bars.blokrun_resume(t, n, rid)
                    own.append(before_first)
                    whole.append(elapsed)
                    floor_resume.append(await bars.floor_resume(t, n, fid))
            print(
                f"{driver} N={n}: resume's own cost {med(own) * 1e3:.2f} ms, whole resume "
                f"{med(whole) * 1e3:.2f} ms, floor {med(floor_resume) * 1e3:.2f} ms "
                f"({med(whole) / med(floor_resume):.2f}x)"
            )
            await at_once(driver, server)
        finally:
            await bars.close_target(t)
            await anyio.to_thread.run_sync(_stop, server)


async def at_once(driver: str, server: Any) -> None:
    from benchmarks import throughput
    from benchmarks.runner_overhead import workflow
    from blokrun import Runner

    settings = server.settings("tp", prefix=f"tp-{uuid4().hex[:6]}/")
    async with Runner([settings], lease_ttl=30.0) as runner:
        wf = runner.load(workflow(10, persistence=True, target="tp"))
        rate = await throughput._steps_per_second(runner, wf, 100, 5)
    print(f"{driver}: 100 runs at once: {rate:,.0f} checkpointed steps/s")


if __name__ == "__main__":
    args = sys.argv[1:]
    if not args or args[0] not in ("redis", "postgresql"):
        raise SystemExit("usage: python -m benchmarks.ab_cpu redis|postgresql [N] [RUNS]")
    anyio.run(main, args[0], int(args[1]) if len(args) > 1 else 100,
              int(args[2]) if len(args) > 2 else 10)  # fmt: skip
