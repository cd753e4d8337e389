"""Nodes of the workers example: stand-ins for I/O that takes a little while."""

from __future__ import annotations

import hashlib
from typing import Any

import anyio


async def fetch(ctx: Any, inputs: dict[str, Any]) -> dict[str, Any]:
    await anyio.sleep(0.01)
    digest = hashlib.sha256(str(inputs["image"]).encode()).hexdigest()
    return {"bytes": 1000 + int(digest[:4], 16), "sha": digest[:12]}


async def resize(ctx: Any, inputs: dict[str, Any]) -> dict[str, Any]:
    await anyio.sleep(0.01)
    return {"width": inputs["width"], "bytes": ctx.vars["fetch"]["bytes"] // 10}


async def publish(ctx: Any, inputs: dict[str, Any]) -> dict[str, Any]:
    await anyio.sleep(0.01)
    # ctx.idempotency_key is the same if this step runs again after a crash: pass it to the
    # CDN / object store so a repeated upload has no second effect.
    return {
        "url": f"https://cdn.example/{ctx.vars['fetch']['sha']}.png",
        "key": ctx.idempotency_key,
    }
