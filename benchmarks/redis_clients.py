"""``python -m benchmarks.redis_clients [--quick]``: the client library's cost of one
checkpoint (issue 18), redis-py + hiredis (what blokrun uses) against coredis and
valkey-glide, on a throwaway redis-server. ``make bench`` runs it with the project's venv,
where only redis-py is installed (the alternatives are no dependencies of blokrun: their
rows say "not installed").

To reproduce (the alternatives go in a venv of their own, never in the project's)::

    python3 -m venv /tmp/clients-venv
    /tmp/clients-venv/bin/pip install -e ".[redis]" -c constraints.txt coredis valkey-glide
    /tmp/clients-venv/bin/python -m benchmarks.redis_clients

Run from the repository root; with the project's ``.venv`` the alternatives print as
``not installed``. What is measured:

- **The command** is what a checkpointed step sends: the driver's own fenced save script
  (``blokrun.datasources.redis._SAVE_FENCED``, by ``EVALSHA``) with the keys and args of
  a real checkpoint, captured from a 10-step run on the same server (lease, checkpoint
  record, head record, owned alias: 4 keys, 7 args, ~1.4 KB). Every client must get the
  driver's reply (``[1]``: written) or the benchmark stops.
- **redis-py** is configured as blokrun configures it (a :class:`RedisStore`: blocking
  pool of 32, hiredis, the send without ``wait_for``) and called through its ``Script``;
  **blokrun direct** is the driver's own path since issue 18 (``RedisStore._eval``: the
  same pool and connection, the command packed by hiredis and read straight off the
  connection, none of redis-py's per-command machinery); coredis and glide with their
  defaults (both multiplex concurrent commands over one connection).
- Per client, in rounds (order rotated, each client connected anew each round, so machine
  noise hits all alike): (a) one ``EVALSHA`` at a time: median µs per call; (b) 100
  coroutines each calling in a loop for ~1 s: calls/s; (c) client CPU per call,
  ``time.process_time`` (every thread of this process: glide's Rust threads included) over
  the calls, and ``time.thread_time`` (the event loop thread alone), in both modes;
  redis-server's CPU per call in (b) from ``/proc``.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import os
import statistics
import tempfile
import time
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from functools import partial
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio

from benchmarks.drivers import _launch, _Skipped, _stop
from benchmarks.harness import Report, fmt, machine
from benchmarks.runner_overhead import workflow
from blokrun import Runner
from blokrun.datasources import redis as redis_driver

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
    from contextlib import AbstractAsyncContextManager

    Call = Callable[[], Awaitable[Any]]

SECTION = "Redis clients: one checkpoint EVALSHA (issue 18)"
CLIENTS = ("redis-py", "blokrun direct", "coredis", "valkey-glide")
#: the import each client needs, and how to get it
NEEDS = {
    "redis-py": ("redis", "redis[hiredis]"),
    "blokrun direct": ("hiredis", "redis[hiredis]"),
    "coredis": ("coredis", "coredis"),
    "valkey-glide": ("glide", "valkey-glide"),
}
CONCURRENCY = 100
CAPTURE_STEPS = 10


@dataclass(frozen=True)
class Shape:
    """One real checkpoint's fenced save: the keys and args the driver sent."""

    keys: list[str]
    args: list[bytes | str | int]

    @property
    def payload(self) -> int:
        return sum(len(a) for a in self.args if isinstance(a, bytes | str))


@dataclass(frozen=True)
class Plan:
    rounds: int
    sequential: int  # calls one at a time per round
    seconds: float  # of the 100 concurrent loops per round
    warmup: int = 50


@dataclass
class Figures:
    latency: list[float] = field(default_factory=list)  # every sequential call, seconds
    cpu_seq: list[float] = field(default_factory=list)  # per round: CPU s per call
    loop_seq: list[float] = field(default_factory=list)  # ... of it on the event loop thread
    rate: list[float] = field(default_factory=list)  # per round: calls/s at 100 at once
    cpu_conc: list[float] = field(default_factory=list)
    loop_conc: list[float] = field(default_factory=list)
    server_conc: list[float] = field(default_factory=list)
    threads: int = 0  # the most threads this process gained while the client was open


# -- the command -----------------------------------------------------------------------------


async def capture(settings: Any) -> Shape:
    """The fenced save of a mid-run step of a real 10-step run, as the driver sends it (its
    script calls spied on for the run)."""
    seen: list[tuple[list[str], list[bytes | str | int]]] = []
    original = redis_driver.RedisStore._eval

    async def spy(self: Any, script: Any, keys: Any, args: Any) -> Any:
        if script.script == redis_driver._SAVE_FENCED:
            seen.append((list(keys), list(args)))
        return await original(self, script, keys, args)

    redis_driver.RedisStore._eval = spy  # type: ignore[method-assign]
    try:
        async with Runner([settings]) as runner:
            await runner.run(runner.load(workflow(CAPTURE_STEPS, persistence=True,
                                                  target=settings.name)))  # fmt: skip
    finally:
        redis_driver.RedisStore._eval = original  # type: ignore[method-assign]
    counts = statistics.multimode(len(keys) for keys, _ in seen)  # the per-step shape
    steps = [call for call in seen if len(call[0]) == counts[0]]
    if not steps:
        raise RuntimeError("the run sent no fenced save: has the checkpoint path changed?")
    keys, args = steps[len(steps) // 2]
    return Shape(keys, args)


async def prepare(server: Any, shape: Shape) -> int:
    """A fresh database holding the lease the save is fenced by (else the script writes
    nothing and returns 0)."""
    import redis.asyncio

    db: int = await anyio.to_thread.run_sync(server.fresh_db)
    token = shape.args[0]
    async with redis.asyncio.Redis(host="127.0.0.1", port=server.port, db=db) as client:
        await client.hset(shape.keys[0], mapping={"owner": "bench", "token": token,
                                                  "expires_ms": 2**50})  # fmt: skip
    return db


# -- the clients -----------------------------------------------------------------------------


@asynccontextmanager
async def _store(server: Any, db: int, shape: Shape, *, direct: bool) -> AsyncIterator[Call]:
    """A :class:`RedisStore` sending the fenced save through redis-py's ``Script``, or
    (``direct``) packed by hiredis and read off the connection as the driver does
    (``RedisStore._eval``), on the same connection pool."""
    store = redis_driver.RedisStore(f"{server.url}/{db}")
    await store.connect()
    try:
        script = store._lua().save_fenced
        keys, args = shape.keys, shape.args

        async def call() -> Any:
            if direct:
                return await store._eval(script, keys, args)
            return await script(keys=keys, args=args)

        yield call
    finally:
        await store.close()


redis_py = partial(_store, direct=False)
blokrun_direct = partial(_store, direct=True)


@asynccontextmanager
async def coredis_client(server: Any, db: int, shape: Shape) -> AsyncIterator[Call]:
    coredis: Any = importlib.import_module("coredis")
    client = coredis.Redis(host="127.0.0.1", port=server.port, db=db, decode_responses=False,
                           stream_timeout=5, connect_timeout=5)  # fmt: skip
    async with client:
        script = client.register_script(redis_driver._SAVE_FENCED)
        keys, args = shape.keys, shape.args

        async def call() -> Any:
            return await script(keys=keys, args=args)

        yield call


@asynccontextmanager
async def glide_client(server: Any, db: int, shape: Shape) -> AsyncIterator[Call]:
    glide: Any = importlib.import_module("glide")
    config = glide.GlideClientConfiguration(
        [glide.NodeAddress("127.0.0.1", server.port)], database_id=db, request_timeout=5000
    )
    client = await glide.GlideClient.create(config)
    try:
        script = glide.Script(redis_driver._SAVE_FENCED)
        keys = shape.keys
        args = [a if isinstance(a, bytes | str) else str(a) for a in shape.args]  # no ints

        async def call() -> Any:
            return await client.invoke_script(script, keys=keys, args=args)

        yield call
    finally:
        await client.close()


OPEN: dict[str, Callable[[Any, int, Shape], AbstractAsyncContextManager[Call]]] = {
    "redis-py": redis_py,
    "blokrun direct": blokrun_direct,
    "coredis": coredis_client,
    "valkey-glide": glide_client,
}


def installed(name: str) -> str | None:
    """``None`` if ``name`` can be imported, else the pip command that installs it."""
    module, pip = NEEDS[name]
    try:
        importlib.import_module(module)
    except ImportError:
        return f"not installed: pip install {pip}"
    return None


def version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "-"


# -- measuring -------------------------------------------------------------------------------


def _threads() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    return 0


def _server_cpu(pid: int | None) -> float:
    """redis-server's user + system CPU seconds so far (0 if it cannot be read)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


@contextmanager
def _no_gc() -> Iterator[None]:
    """The cyclic GC off while timing (its pauses land on whichever client runs then)."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


async def sequential(call: Call, n: int, figures: Figures) -> None:
    samples = []
    with _no_gc():
        cpu0, loop0 = time.process_time(), time.thread_time()
        for _ in range(n):
            t0 = time.perf_counter()
            await call()
            samples.append(time.perf_counter() - t0)
        cpu, loop = time.process_time() - cpu0, time.thread_time() - loop0
    figures.latency += samples
    figures.cpu_seq.append(cpu / n)
    figures.loop_seq.append(loop / n)


async def concurrent(call: Call, seconds: float, server_pid: int | None, figures: Figures) -> None:
    done = [0]
    deadline = time.perf_counter() + seconds

    async def loop() -> None:
        while time.perf_counter() < deadline:
            await call()
            done[0] += 1

    with _no_gc():
        cpu0, loop0 = time.process_time(), time.thread_time()
        srv0, t0 = _server_cpu(server_pid), time.perf_counter()
        async with anyio.create_task_group() as tg:
            for _ in range(CONCURRENCY):
                tg.start_soon(loop)
        wall = time.perf_counter() - t0
        cpu, on_loop = time.process_time() - cpu0, time.thread_time() - loop0
        srv = _server_cpu(server_pid) - srv0
    figures.rate.append(done[0] / wall)
    figures.cpu_conc.append(cpu / done[0])
    figures.loop_conc.append(on_loop / done[0])
    figures.server_conc.append(srv / done[0])


def _written(reply: Any) -> bool:
    """The driver's reply to a fenced save that wrote: ``[1]`` (no owned key refused)."""
    return isinstance(reply, list | tuple) and [int(x) for x in reply] == [1]


async def turn(name: str, server: Any, db: int, shape: Shape, p: Plan, figures: Figures) -> None:
    before = _threads()
    async with OPEN[name](server, db, shape) as call:
        reply = await call()
        if not _written(reply):
            raise RuntimeError(f"{name}: the fenced save replied {reply!r}, not [1] (written)")
        for _ in range(p.warmup):
            await call()
        figures.threads = max(figures.threads, _threads() - before)
        await sequential(call, p.sequential, figures)
        await concurrent(call, p.seconds, server.pid, figures)


async def measure(server: Any, names: list[str], p: Plan) -> tuple[Shape, dict[str, Figures]]:
    shape = await capture(server.settings("capture"))
    db = await prepare(server, shape)
    figures = {name: Figures() for name in names}
    for r in range(p.rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            await turn(name, server, db, shape, p, figures[name])
    return shape, figures


# -- reporting -------------------------------------------------------------------------------


def rows(report: Report, figures: dict[str, Figures], missing: dict[str, str]) -> None:
    for name in CLIENTS:
        if name in missing:
            report.add(SECTION, name, _Skipped(), "", missing[name])
            continue
        f = figures[name]
        med = statistics.median
        report.add(SECTION, f"{name}: one at a time, p50", med(f.latency), "s",
                   f"{len(f.latency)} calls")  # fmt: skip
        report.add(SECTION, f"{name}: client CPU per call, one at a time", med(f.cpu_seq), "s",
                   f"{med(f.loop_seq) * 1e6:.1f} µs on the event loop thread; "
                   f"median of {len(f.cpu_seq)} rounds")  # fmt: skip
        report.add(SECTION, f"{name}: {CONCURRENCY} at once", med(f.rate), "/s",
                   f"median of {len(f.rate)} rounds")  # fmt: skip
        report.add(SECTION, f"{name}: client CPU per call, {CONCURRENCY} at once",
                   med(f.cpu_conc), "s",
                   f"{med(f.loop_conc) * 1e6:.1f} µs on the event loop thread; "
                   f"redis-server {med(f.server_conc) * 1e6:.1f} µs/call; "
                   f"+{f.threads} threads")  # fmt: skip


def table(shape: Shape, figures: dict[str, Figures], missing: dict[str, str]) -> str:
    us = 1e6
    lines = [
        f"command: EVALSHA of the fenced save, {len(shape.keys)} keys, {len(shape.args)} args, "
        f"{shape.payload:,} bytes of args",
        "",
        "| client | version | one at a time p50 | client CPU/call: all threads / loop thread "
        f"| {CONCURRENCY} at once | client CPU/call at {CONCURRENCY}: all / loop "
        "| server CPU/call | threads started |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    dist = {"redis-py": "redis", "blokrun direct": "redis", "coredis": "coredis",
            "valkey-glide": "valkey-glide"}  # fmt: skip
    for name in CLIENTS:
        ver = version(dist[name]) + (f" + hiredis {version('hiredis')}"
                                     if dist[name] == "redis" else "")  # fmt: skip
        if name in missing:
            lines.append(f"| {name} | - | {missing[name]} | | | | | |")
            continue
        f = figures[name]
        med = statistics.median
        lines.append(
            f"| {name} | {ver} | {med(f.latency) * us:.1f} µs "
            f"| {med(f.cpu_seq) * us:.1f} / {med(f.loop_seq) * us:.1f} µs "
            f"| {fmt(med(f.rate), '/s')} "
            f"| {med(f.cpu_conc) * us:.1f} / {med(f.loop_conc) * us:.1f} µs "
            f"| {med(f.server_conc) * us:.1f} µs | {f.threads} |"
        )
    return "\n".join(lines)


async def run(report: Report, quick: bool = False) -> None:
    """Harness-style rows (not in ``python -m benchmarks``' list; see the docstring)."""
    p = Plan(rounds=2, sequential=200, seconds=0.3) if quick else Plan(5, 500, 1.0)
    missing = {name: why for name in CLIENTS if (why := installed(name)) is not None}
    names = [name for name in CLIENTS if name not in missing]
    if not names:
        return
    with tempfile.TemporaryDirectory(prefix="blokrun-bench-") as tmp:
        server, reason = await anyio.to_thread.run_sync(_launch, "redis", Path(tmp))
        if server is None:
            report.add(SECTION, "redis-server", _Skipped(), "", str(reason)[:300])
            return
        try:
            shape, figures = await measure(server, names, p)
        finally:
            await anyio.to_thread.run_sync(_stop, server)
    rows(report, figures, missing)
    print()
    print("\n".join(machine()))
    print()
    print(table(shape, figures, missing))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer, shorter rounds")
    anyio.run(run, Report(), parser.parse_args().quick)
