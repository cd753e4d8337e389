"""Seed query 2: parallel runs coordinating through shared state in the ``cache``
datasource (Redis in production). One run publishes the extraction; N runs read it at the
same time (read-only) and publish one result each under its own key, so no two runs ever
write the same key; the merge checks that every item was counted exactly once."""

from __future__ import annotations

from typing import Any

from blokrun import Context


async def extract(ctx: Context, inputs: dict[str, Any]) -> dict[str, Any]:
    n, items = int(inputs["partitions"]), int(inputs["items"])
    return {"partitions": {str(p): [i for i in range(items) if i % n == p] for p in range(n)}}


async def process(ctx: Context, inputs: dict[str, Any]) -> dict[str, Any]:
    extraction = inputs["extraction"]
    if extraction is None:
        raise LookupError("no extraction published for this batch yet")
    mine = extraction["partitions"][str(inputs["partition"])]
    return {
        "partition": inputs["partition"],
        "count": len(mine),
        "sum": sum(mine),
        "by": ctx.request.id,
    }


async def merge(ctx: Context, inputs: dict[str, Any]) -> dict[str, Any]:
    results = [
        await ctx.datasource("cache", f"partition-{inputs['batch']}-{p}")
        for p in range(int(inputs["partitions"]))
    ]
    missing = [p for p, r in enumerate(results) if r is None]
    if missing:
        raise LookupError(f"partitions without a result: {missing}")
    return {
        "count": sum(r["count"] for r in results),
        "sum": sum(r["sum"] for r in results),
        "writers": len({r["by"] for r in results}),
    }
