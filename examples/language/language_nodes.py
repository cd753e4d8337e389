"""Nodes of the workflow-language examples (each file in this folder shows one construct)."""

from __future__ import annotations

import os
from typing import Any

from blokrun import Context


def _ledger(ctx: Context, what: str) -> None:
    path = os.environ.get("LANGUAGE_LEDGER")
    if path:
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(f"{ctx.request.id} {what}\n")


async def load_order(ctx: Context, inputs: dict[str, Any]) -> dict[str, Any]:
    _ledger(ctx, "load_order")
    lines = inputs["lines"]
    return {"total": sum(line["qty"] * line["price"] for line in lines), "lines": lines}


async def ship(ctx: Context, inputs: dict[str, Any]) -> dict[str, Any]:
    _ledger(ctx, f"ship:{inputs['carrier']}")
    return {"carrier": inputs["carrier"]}


async def review(ctx: Context, inputs: dict[str, Any]) -> dict[str, Any]:
    _ledger(ctx, "review")
    return {"reviewed": True}


async def thumbnail(ctx: Context, inputs: dict[str, Any]) -> dict[str, Any]:
    """One item of a map: fails for names containing "broken" (a tolerated failure)."""
    _ledger(ctx, f"thumbnail:{ctx.index}")
    if "broken" in inputs["image"]:
        raise ValueError(f"cannot decode {inputs['image']}")
    return {"thumb": inputs["image"].replace(".png", "-small.png")}


async def charge(ctx: Context, inputs: dict[str, Any]) -> dict[str, Any]:
    _ledger(ctx, "charge")
    return {"charged": inputs["amount"], "idempotency_key": ctx.idempotency_key}


async def report(ctx: Context, inputs: dict[str, Any]) -> dict[str, Any]:
    _ledger(ctx, "report")
    return {"at": ctx.request.id}
