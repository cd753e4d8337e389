"""Seed query 3: workflows reading the results of earlier executions from the ``history``
datasource (PostgreSQL in production) for a trend analysis."""

from __future__ import annotations

from typing import Any

from blokrun import Context


async def measure(ctx: Context, inputs: dict[str, Any]) -> dict[str, Any]:
    orders = inputs["orders"]
    return {"day": inputs["day"], "orders": len(orders), "revenue": round(sum(orders), 2)}


async def trend(ctx: Context, inputs: dict[str, Any]) -> dict[str, Any]:
    series = []
    for day in inputs["days"]:
        metrics = await ctx.datasource("history", f"metrics-{day}")
        if metrics is not None:
            series.append(metrics)
    if len(series) < 2:
        return {"days": len(series), "trend": None}
    n = len(series)
    xs = range(n)
    ys = [m["revenue"] for m in series]
    mx, my = (n - 1) / 2, sum(ys) / n
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum(
        (x - mx) ** 2 for x in xs
    )
    return {
        "days": n,
        "first": series[0]["day"],
        "last": series[-1]["day"],
        "revenue_slope_per_day": round(slope, 4),
    }
