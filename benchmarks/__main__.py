"""``python -m benchmarks [--quick]``: run every benchmark, print a table, write RESULTS.md."""

from __future__ import annotations

import argparse
import time

import anyio

from benchmarks import drivers, lifecycle, runner_overhead, startup, state
from benchmarks.harness import Report, write_results

INTRO = (
    "Written by `make bench` (`python -m benchmarks`). Every figure is a median measured in "
    "the same run on the machine below; ratios compare figures of this run only."
)


async def main(quick: bool) -> None:
    report = Report()
    t0 = time.perf_counter()
    for bench in (runner_overhead, startup, drivers, state, lifecycle):
        await bench.run(report, quick=quick)
    write_results(report, INTRO)
    print(f"benchmarks took {time.perf_counter() - t0:.1f}s")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer repeats (a smoke run)")
    anyio.run(main, parser.parse_args().quick)
