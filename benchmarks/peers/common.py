"""What every ``bench_<system>.py`` shares: arguments, the timing loops, one JSON line out.

Standard library only: each script runs with its own system's virtualenv python, where
this file is importable because it sits beside the script (``sys.path[0]``).

A script defines ``async def connect(args) -> System`` and calls :func:`main`. A System
runs one fresh run of N steps, prepares runs whose last step failed (their first N-1
steps checkpointed) and resumes one of them. ``main`` then measures, as asked:

- ``per_step``: wall time of one run divided by N, after one warm-up run per N;
- ``concurrent``: 100 runs of 10 steps started at once (after a warm-up batch of 10),
  checkpointed steps per second;
- ``resume_warm``: resuming a prepared 100-step run in this (warm) process;
- ``resume_new``: wall time of a fresh ``python`` process (this script, mode
  ``resume-child``) that imports the library, connects and resumes a prepared run.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import statistics
import subprocess
import sys
import time
import traceback
from importlib import metadata
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence

MARKER = "PEERS-RESULT "
VALUE = "x" * 40  # each step adds {"k<i>": VALUE} to the state: ~50 bytes
RESUME_STEPS = 100
CONCURRENT_STEPS = 10


class Unavailable(Exception):
    """The system cannot run this backend; the message says why (goes in the table)."""


class System(Protocol):
    async def run(self, n: int) -> None:
        """One fresh run of ``n`` steps, checkpointed after every step (unless off)."""
        ...

    async def prepare(self, k: int) -> list[str]:
        """``k`` runs of :data:`RESUME_STEPS` steps whose last step failed; their ids."""
        ...

    async def resume(self, run_id: str) -> None:
        """Load the latest checkpoint of ``run_id`` and run what is left (one step)."""
        ...

    async def close(self) -> None: ...


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["measure", "resume-child"])
    p.add_argument("--backend", required=True)
    p.add_argument("--redis-url", default="")
    p.add_argument("--pg-url", default="")
    p.add_argument("--data-dir", default="")
    p.add_argument("--steps", default="10,100", help="N values, comma-separated")
    p.add_argument("--repeats", default="5,3", help="measured runs per N value")
    p.add_argument("--concurrent", type=int, default=0, help="runs at once (0: skip)")
    p.add_argument("--resume-warm", type=int, default=0, help="warm resumes to time")
    p.add_argument("--resume-new", type=int, default=0, help="new-process resumes to time")
    p.add_argument("--run-id", default="", help="resume-child: the run to resume")
    return p.parse_args(argv)


def versions(*packages: str) -> dict[str, str]:
    found = {}
    for pkg in packages:
        try:
            found[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return found


def emit(result: dict[str, Any]) -> None:
    print(MARKER + json.dumps(result), flush=True)


async def timed(fn: Callable[[], Awaitable[Any]]) -> float:
    t0 = time.perf_counter()
    await fn()
    return time.perf_counter() - t0


async def per_step(system: System, steps: list[int], repeats: list[int]) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    for n, reps in zip(steps, repeats, strict=True):
        await system.run(n)  # warm-up: connections, caches, lazy imports, prepared statements
        out[str(n)] = [await timed(functools.partial(system.run, n)) / n for _ in range(reps)]
    return out


async def concurrent(system: System, runs: int) -> float:
    """Checkpointed steps per second with ``runs`` runs of 10 steps started at once."""

    async def batch(count: int) -> None:
        await asyncio.gather(*(system.run(CONCURRENT_STEPS) for _ in range(count)))

    await batch(10)  # warm-up: fills the connection pools
    elapsed = await timed(lambda: batch(runs))
    return runs * CONCURRENT_STEPS / elapsed


def spawn_resume(args: argparse.Namespace, run_id: str) -> float:
    """Wall time of a new process that resumes ``run_id`` (this script, ``resume-child``)."""
    cmd = [sys.executable, sys.argv[0], "resume-child", "--backend", args.backend,
           "--redis-url", args.redis_url, "--pg-url", args.pg_url, "--data-dir", args.data_dir,
           "--run-id", run_id]  # fmt: skip
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"resume-child exited {proc.returncode}: {proc.stderr.strip()[-800:]}")
    return elapsed


async def measure(
    args: argparse.Namespace, connect: Callable[[argparse.Namespace], Awaitable[System]]
) -> dict[str, Any]:
    result: dict[str, Any] = {}
    system = await connect(args)
    try:
        steps = [int(s) for s in args.steps.split(",") if s]
        repeats = [int(r) for r in args.repeats.split(",") if r]
        result["per_step"] = await per_step(system, steps, repeats)
        if args.concurrent:
            result["concurrent"] = [await concurrent(system, args.concurrent)]
        if args.resume_warm or args.resume_new:
            ids = await system.prepare(args.resume_warm + args.resume_new)
            warm_ids, new_ids = ids[: args.resume_warm], ids[args.resume_warm :]
            extra = getattr(system, "resume_notes", None)
            if warm_ids:
                result["resume_warm"] = [
                    await timed(functools.partial(system.resume, i)) for i in warm_ids
                ]
                if extra is not None:
                    result["resume_warm_notes"] = extra()
        else:
            new_ids = []
    finally:
        await system.close()
    if new_ids:  # after close: the child must not compete with this process's connections
        result["resume_new"] = [spawn_resume(args, i) for i in new_ids]
    return result


def main(
    connect: Callable[[argparse.Namespace], Awaitable[System]],
    system: str,
    packages: Sequence[str],
) -> None:
    args = parse()
    if args.mode == "resume-child":

        async def child() -> None:
            sys_ = await connect(args)
            try:
                await sys_.resume(args.run_id)
            finally:
                await sys_.close()

        asyncio.run(child())
        return
    out: dict[str, Any] = {"system": system, "backend": args.backend,
                           "versions": versions(*packages)}  # fmt: skip
    try:
        out.update(asyncio.run(measure(args, connect)))
    except Unavailable as exc:
        out["unavailable"] = str(exc)
    except Exception as exc:  # reported in the table's cell, with the traceback on stderr
        traceback.print_exc()
        out["error"] = f"{type(exc).__name__}: {exc}"[:400]
    emit(out)


def median(samples: list[float]) -> float:
    return statistics.median(samples)
