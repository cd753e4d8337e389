"""``python -m benchmarks [--quick] [--only NAME ...]``: run every benchmark, print a table,
write RESULTS.md. ``--only`` runs the benchmarks named (modules of this package) and prints
their rows without writing RESULTS.md, which holds the figures of one whole run."""

from __future__ import annotations

import argparse
import time
from typing import TYPE_CHECKING

import anyio

from benchmarks import (
    bars,
    dashboard,
    drivers,
    lifecycle,
    map_items,
    otel,
    redis_clients,
    runner_overhead,
    startup,
    state,
)
from benchmarks.harness import Report, write_results

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

INTRO = (
    "Written by `make bench` (`python -m benchmarks`). Every figure is a median measured in "
    "the same run on the machine below; ratios compare figures of this run only."
)
#: every benchmark, in the order a whole run takes them (drivers also runs the throughput
#: and workers benchmarks, on its servers)
BENCHMARKS: dict[str, Callable[..., Awaitable[None]]] = {
    "runner_overhead": runner_overhead.run,
    "startup": startup.run,
    "drivers": drivers.run,
    "bars": bars.run,
    "redis_clients": redis_clients.run,
    "state": state.run,
    "lifecycle": lifecycle.run,
    "map_items": map_items.run,
    "dashboard": dashboard.run,
    "otel": otel.run,
}


async def main(quick: bool, only: list[str] | None) -> None:
    report = Report()
    t0 = time.perf_counter()
    for name, bench in BENCHMARKS.items():
        if only is None or name in only:
            await bench(report, quick=quick)
    if only is None:
        write_results(report, INTRO)
    else:
        print("\n(--only: RESULTS.md not written; it holds the figures of one whole run)")
    print(f"benchmarks took {time.perf_counter() - t0:.1f}s")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer repeats (a smoke run)")
    parser.add_argument(
        "--only",
        action="append",
        choices=sorted(BENCHMARKS),
        metavar="NAME",
        help=f"run only this benchmark (repeatable): {', '.join(BENCHMARKS)}",
    )
    args = parser.parse_args()
    anyio.run(main, args.quick, args.only)
