"""``python -m benchmarks.uvloop_check``: a checkpointed step on Redis with asyncio and with
uvloop (issue 18's lever), interleaved, on a throwaway redis-server. Needs ``uvloop``
installed (``pip install uvloop``); not part of ``make bench`` (uvloop is no dependency).
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

import anyio

from benchmarks.drivers import _launch, _stop
from blokrun import Runner

N = 100


def flow(name: str, n: int, *, persistence: bool = True) -> dict[str, object]:
    return {
        "name": name,
        "persistence": {"enabled": persistence},
        "steps": [
            {"name": f"s{i}", "node": "set", "inputs": {f"k{i}": "x" * 40}} for i in range(n)
        ],
    }


async def measure(settings: object) -> tuple[float, float]:
    async with Runner([settings]) as runner:  # type: ignore[list-item]
        wf = runner.load(flow("b", N))
        steps = []
        for _ in range(12):
            t0 = time.perf_counter()
            await runner.run(wf)
            steps.append((time.perf_counter() - t0) / N)
        ten = runner.load(flow("c", 10))
        rates = []
        for _ in range(5):
            t0 = time.perf_counter()
            async with anyio.create_task_group() as tg:
                for _ in range(100):
                    tg.start_soon(runner.run, ten)
            rates.append(1000 / (time.perf_counter() - t0))
    return statistics.median(steps[2:]), statistics.median(rates)


def main() -> None:
    try:
        import uvloop  # type: ignore[import-not-found,unused-ignore]  # noqa: F401
    except ImportError:
        sys.exit("uvloop is not installed: pip install uvloop")
    with tempfile.TemporaryDirectory() as tmp:
        server, reason = _launch("redis", Path(tmp))
        if server is None:
            sys.exit(f"no redis-server: {reason}")
        try:
            for _ in range(2):
                for loop in ("asyncio", "uvloop"):
                    step, rate = anyio.run(
                        measure,
                        server.settings("default"),
                        backend_options={"use_uvloop": loop == "uvloop"},
                    )
                    shown = f"{step * 1e6:6.1f} µs/step, 100 runs at once: {rate:,.0f} steps/s"
                    print(f"{loop:8} {shown}")
        finally:
            _stop(server)


if __name__ == "__main__":
    main()
