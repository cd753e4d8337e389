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
