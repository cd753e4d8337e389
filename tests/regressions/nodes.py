from __future__ import annotations

from typing import Any

import anyio
import anyio.lowlevel

from tests.integration.wfnodes import _ledger


async def bump_then_fail(ctx: Any, inputs: dict[str, Any]) -> Any:
    """Changes ctx.vars, then works for a while, then fails (a transient error)."""
    _ledger(ctx)
    ctx.vars["counter"] = ctx.vars.get("counter", 0) + 1
    await anyio.sleep(float(inputs.get("seconds", 0.3)))
    if inputs.get("fail"):
        raise ConnectionError("upstream down")
    return "ok"


async def churn(ctx: Any, inputs: dict[str, Any]) -> Any:
    """Adds vars while yielding (a long async step that records progress in ctx.vars)."""
    _ledger(ctx)
    for i in range(int(inputs.get("n", 2000))):
        ctx.vars[f"progress-{i}"] = i
        await anyio.lowlevel.checkpoint()
    return "done"


PAUSED: list[anyio.Event] = []
PAUSED_ONCE: list[bool] = []


async def pause_first(ctx: Any, inputs: dict[str, Any]) -> Any:
    """The first call waits until the test sets ``PAUSED[0]`` (a holder frozen mid-step);
    later calls add ``n`` to ``total`` at once."""
    _ledger(ctx)
    if PAUSED and not PAUSED[0].is_set() and not PAUSED_ONCE:
        PAUSED_ONCE.append(True)
        await PAUSED[0].wait()
    ctx.vars["total"] = ctx.vars.get("total", 0) + int(inputs.get("n", 1))
