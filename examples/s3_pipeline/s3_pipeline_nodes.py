"""Seed query 1: a chunked pipeline whose intermediate results live in the ``storage``
datasource (S3 in production). Only small summaries stay in ``ctx.vars``; the chunks are
published under their own keys and read back with ``ctx.datasource``.
``aggregate`` fails while ``PIPELINE_FAIL_AGGREGATE`` is set."""

from __future__ import annotations

import os
from typing import Any

from blokrun import Context

RUNS: list[str] = []


async def load_data(ctx: Context, inputs: dict[str, Any]) -> dict[str, Any]:
    RUNS.append("load-data")
    n, size = int(inputs["rows"]), int(inputs["chunk_size"])
    rows = [{"id": i, "value": (i * 7919) % 1000} for i in range(n)]
    return {"chunks": [rows[i : i + size] for i in range(0, n, size)]}


async def transform(ctx: Context, inputs: dict[str, Any]) -> dict[str, Any]:
    RUNS.append("transform")
    chunks = inputs["raw"]["chunks"]
    return {
        "chunks": [
            {"count": len(c), "sum": sum(r["value"] for r in c), "max": max(r["value"] for r in c)}
            for c in chunks
        ]
    }


async def aggregate(ctx: Context, inputs: dict[str, Any]) -> dict[str, Any]:
    RUNS.append("aggregate")
    if os.environ.get("PIPELINE_FAIL_AGGREGATE"):
        raise RuntimeError("aggregation worker crashed (PIPELINE_FAIL_AGGREGATE is set)")
    chunks = inputs["chunks"]["chunks"]
    count = sum(c["count"] for c in chunks)
    return {
        "rows": count,
        "chunks": len(chunks),
        "mean": sum(c["sum"] for c in chunks) / count,
        "max": max(c["max"] for c in chunks),
    }
