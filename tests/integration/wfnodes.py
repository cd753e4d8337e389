"""Nodes used by the integration tests. ``CALLS`` records every node call in this process;
``LEDGER`` (env ``WF_LEDGER``) records calls across processes for the crash tests."""

from __future__ import annotations

import os
import threading
import time
from typing import Any

CALLS: list[tuple[str, str]] = []  # (request_id, step)
FAIL_AT: set[str] = set()  # step names that raise while listed
THREADS: dict[str, int] = {}


def _ledger(ctx: Any, what: str = "") -> None:
    CALLS.append((ctx.request.id, ctx.step))
    path = os.environ.get("WF_LEDGER")
    if path:
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(f"{ctx.request.id} {ctx.step}{' ' + what if what else ''}\n")
            fh.flush()
            os.fsync(fh.fileno())


async def add(ctx: Any, inputs: dict[str, Any]) -> Any:
    _ledger(ctx)
    if os.environ.get("WF_KILL_AT") == ctx.step:  # the crash harness: die inside the step
        import signal

        os.kill(os.getpid(), signal.SIGKILL)
    if ctx.step in FAIL_AT or os.environ.get("WF_FAIL_AT") == ctx.step:
        raise RuntimeError(f"{ctx.step} failed on purpose")
    ctx.vars["total"] = ctx.vars.get("total", 0) + inputs.get("n", 1)
    return {"seen_total": ctx.vars["total"]}


def sync_add(ctx: Any, inputs: dict[str, Any]) -> Any:
    _ledger(ctx)
    THREADS[ctx.step] = threading.get_ident()
    ctx.vars["total"] = ctx.vars.get("total", 0) + inputs.get("n", 1)
    return inputs.get("n", 1)


async def nothing(ctx: Any, inputs: dict[str, Any]) -> None:
    _ledger(ctx)
    ctx.vars["touched"] = True


async def echo(ctx: Any, inputs: dict[str, Any]) -> Any:
    _ledger(ctx)
    return inputs


async def bad_value(ctx: Any, inputs: dict[str, Any]) -> Any:
    _ledger(ctx)
    return {"report": {"rows": [1, 2, 3, object()]}}


async def read_ds(ctx: Any, inputs: dict[str, Any]) -> Any:
    _ledger(ctx)
    return await ctx.datasource(inputs["name"], inputs["key"])


def hang_once(ctx: Any, inputs: dict[str, Any]) -> Any:
    """Marks that it started, then sleeps while WF_HANG is set (the crash test kills us here)."""
    _ledger(ctx, "start")
    marker = os.environ.get("WF_HANG")
    if marker:
        with open(marker, "w", encoding="utf-8") as fh:
            fh.write("started")
        time.sleep(60)
    ctx.vars["total"] = ctx.vars.get("total", 0) + 100
    _ledger(ctx, "end")
    return "survived"


def _text(seed: int, size: int) -> str:
    """Deterministic, incompressible-looking text (so compression cannot flatter a ratio)."""
    import hashlib

    out: list[str] = []
    block = hashlib.sha256(str(seed).encode()).hexdigest()
    while sum(len(b) for b in out) < size:
        block = hashlib.sha256(block.encode()).hexdigest()
        out.append(block)
    return "".join(out)[:size]


async def grow(ctx: Any, inputs: dict[str, Any]) -> None:
    """Adds one value of ``size`` characters under a new top-level name (no return value)."""
    ctx.vars[f"chunk-{ctx.step}"] = _text(hash(ctx.step) & 0xFFFF, int(inputs["size"]))
    ctx.vars["count"] = ctx.vars.get("count", 0) + 1


async def big(ctx: Any, inputs: dict[str, Any]) -> Any:
    """Returns a large value (``size`` characters) that depends only on ``seed``."""
    _ledger(ctx)
    return _text(int(inputs["seed"]), int(inputs["size"]))


async def drop(ctx: Any, inputs: dict[str, Any]) -> None:
    _ledger(ctx)
    for name in inputs["names"]:
        ctx.vars.pop(name, None)


TIMES: dict[tuple[str, str], tuple[float, float]] = {}
FAILS_LEFT: dict[tuple[str, str], int] = {}


async def nap(ctx: Any, inputs: dict[str, Any]) -> Any:
    """Sleeps ``seconds``; records when it ran; fails when ``fail`` is true."""
    import anyio

    _ledger(ctx)
    started = time.monotonic()
    try:
        await anyio.sleep(float(inputs.get("seconds", 0)))
    finally:
        TIMES[(ctx.request.id, ctx.step)] = (started, time.monotonic())
    if inputs.get("fail") and ctx.step in FAIL_AT:
        raise RuntimeError(f"{ctx.step} failed on purpose")
    return {"slept": inputs.get("seconds", 0)}


async def flaky(ctx: Any, inputs: dict[str, Any]) -> Any:
    """Fails with ``error`` (a builtin exception name) ``times`` times per run, then succeeds."""
    import builtins

    _ledger(ctx)
    key = (ctx.request.id, ctx.step)
    left = FAILS_LEFT.setdefault(key, int(inputs["times"]))
    if left > 0:
        FAILS_LEFT[key] = left - 1
        raise getattr(builtins, inputs.get("error", "ConnectionError"))(f"flaky ({left} left)")
    return "ok"


def slow_sync(ctx: Any, inputs: dict[str, Any]) -> Any:
    _ledger(ctx)
    time.sleep(float(inputs["seconds"]))
    return "late"


async def hang_async(ctx: Any, inputs: dict[str, Any]) -> Any:
    """Like hang_once, but async (cancellable): marks that it started, then waits."""
    import anyio

    _ledger(ctx, "start")
    marker = os.environ.get("WF_HANG")
    if marker:
        with open(marker, "w", encoding="utf-8") as fh:
            fh.write("started")
        await anyio.sleep(60)
    ctx.vars["total"] = ctx.vars.get("total", 0) + 100
    _ledger(ctx, "end")
    return "survived"


async def signal_pid(ctx: Any, inputs: dict[str, Any]) -> Any:
    """Freeze the process ``pid`` (SIGSTOP): a datasource server that stops answering."""
    import signal

    _ledger(ctx)
    os.kill(int(inputs["pid"]), signal.SIGSTOP)
    return {"frozen": inputs["pid"]}


class _Gate:
    """Holds steps until the test opens it (one event per test; ``clear`` between)."""

    def __init__(self) -> None:
        self.waiters = 0
        self._event: Any = None

    def clear(self) -> None:
        self.waiters = 0
        self._event = None

    def event(self) -> Any:
        import anyio

        if self._event is None:
            self._event = anyio.Event()
        return self._event

    def set(self) -> None:
        self.event().set()


GATE = _Gate()


async def wait_gate(ctx: Any, inputs: dict[str, Any]) -> None:
    """Waits at the gate (``GATE``) until the test opens it (fails while in FAIL_AT)."""
    _ledger(ctx)
    if ctx.step in FAIL_AT:
        raise RuntimeError(f"{ctx.step} failed on purpose")
    GATE.waiters += 1
    await GATE.event().wait()


async def wait_for_gate_waiters(n: int) -> None:
    """Until ``n`` steps wait at the gate (the caller bounds the wait)."""
    import anyio

    while GATE.waiters < n:  # noqa: ASYNC110 -- the counter is bumped by other tasks
        await anyio.sleep(0.01)


def reset() -> None:
    """Forget every call, failure and gate: each test starts from nothing (conftest.py)."""
    CALLS.clear()
    FAIL_AT.clear()
    THREADS.clear()
    TIMES.clear()
    FAILS_LEFT.clear()
    GATE.clear()


def sync_sleep(ctx: Any, inputs: dict[str, Any]) -> Any:
    """A plain ``def`` node that blocks its thread (``seconds``; forever when absent)."""
    _ledger(ctx)
    if "seconds" in inputs:
        time.sleep(float(inputs["seconds"]))
    else:
        threading.Event().wait()
    return "woke"


async def map_item(ctx: Any, inputs: dict[str, Any]) -> Any:
    """An item of a map: its index in the ledger (no fsync: a killed process's writes are
    in the page cache), SIGKILL at WF_KILL_AT_ITEM, FAIL_AT holds "item:<index>"."""
    index = ctx.index
    path = os.environ.get("WF_LEDGER")
    if path:
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(f"{index}\n")
    else:
        CALLS.append((ctx.request.id, f"{ctx.step}[{index}]"))
    if os.environ.get("WF_KILL_AT_ITEM") == str(index):
        import signal

        os.kill(os.getpid(), signal.SIGKILL)
    if f"item:{index}" in FAIL_AT:
        raise RuntimeError(f"item {index} failed on purpose")
    return {"sq": inputs["x"] * inputs["x"]}


async def show_ctx(ctx: Any, inputs: dict[str, Any]) -> Any:
    """What seed 000 gives a node: ctx.id, ctx.persistence (enabled, targets, key pattern)."""
    p = ctx.persistence
    return {
        "id": ctx.id,
        "enabled": p.enabled,
        "auto_save": p.auto_save,
        "targets": list(p.targets),
        "datasources": list(p.datasources),
        "key_pattern": p.key_pattern,
    }
