"""Where a checkpointed step's time goes: cProfile of 100-step runs, grouped by layer.

``python -m benchmarks.profile_step [redis|postgresql|memory]`` starts a throwaway server
(as the tests do), runs a 100-step workflow 20 times under cProfile, and prints the time
per step by layer (blokrun's own code by package, the driver's client library, the event
loop, waiting for the network) -- the table in ``benchmarks/PROFILE.md``. cProfile adds
overhead to every Python call, so the shares matter, not the absolute figures.
"""

from __future__ import annotations

import cProfile
import pstats
import sys
import tempfile
from collections import defaultdict
from pathlib import Path
from uuid import uuid4

import anyio

from benchmarks.runner_overhead import workflow
from blokrun import Runner

RUNS, STEPS = 20, 100


def layer(filename: str, func: str) -> str:
    if "select" in func and "poll" in func:
        return "waiting (epoll: network round trips)"
    if "/blokrun/" in filename:
        part = filename.split("/blokrun/", 1)[1].split("/", maxsplit=1)[0].removesuffix(".py")
        return f"blokrun.{part}"
    for lib in ("redis", "asyncpg", "anyio", "msgspec", "orjson", "zstandard"):
        if f"/{lib}/" in filename or (func.startswith("<method '") and lib in func):
            return lib
    if "asyncio" in filename or "selectors" in filename:
        return "asyncio event loop"
    if filename.startswith("~"):
        return "builtins (C: encode, compress, sockets, ...)"
    return "other Python"


async def main(driver: str) -> None:
    from tests.servers import postgresql, redis

    with tempfile.TemporaryDirectory() as tmp:
        server = None
        if driver == "memory":
            from blokrun.config import DatasourceSettings

            settings = DatasourceSettings(name="default", type="memory")
        else:
            (Path(tmp) / driver).mkdir()
            server = {"redis": redis, "postgresql": postgresql}[driver].launch(Path(tmp) / driver)
            settings = server.settings("default", prefix=f"prof-{uuid4().hex[:6]}/")
        try:
            async with Runner([settings]) as runner:
                wf = runner.load(workflow(STEPS, persistence=True))
                for _ in range(3):
                    await runner.run(wf)
                profile = cProfile.Profile()
                profile.enable()
                for _ in range(RUNS):
                    await runner.run(wf)
                profile.disable()
        finally:
            if server is not None:
                server.stop()
    stats = pstats.Stats(profile)
    by_layer: dict[str, float] = defaultdict(float)
    for (filename, _, func), (_, _, tottime, _, _) in stats.stats.items():  # type: ignore[attr-defined]
        by_layer[layer(filename, func)] += tottime
    total = sum(by_layer.values())
    steps = RUNS * STEPS
    print(f"| layer ({driver}, under cProfile) | µs per step | share |")
    print("|---|---:|---:|")
    for name, seconds in sorted(by_layer.items(), key=lambda kv: -kv[1]):
        print(f"| {name} | {seconds / steps * 1e6:.1f} | {seconds / total:.0%} |")
    print(f"| **total** | {total / steps * 1e6:.1f} | |")


if __name__ == "__main__":
    anyio.run(main, sys.argv[1] if len(sys.argv) > 1 else "redis")
