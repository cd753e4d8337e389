"""Run seed query 3: a week of daily metrics runs, then a trend over their stored results.

By default ``history`` is the filesystem under ``.blokrun/history``; point it at
PostgreSQL with ``DATASOURCE_HISTORY_TYPE=postgresql DATASOURCE_HISTORY_URL=postgresql://...``.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import anyio

from blokrun import Runner

HERE = Path(__file__).resolve().parent


def environment(environ: Mapping[str, str]) -> dict[str, str]:
    env = dict(environ)
    if "DATASOURCE_HISTORY_TYPE" not in env:
        home = env.get("BLOKRUN_HOME", ".blokrun")
        env.update(DATASOURCE_HISTORY_TYPE="filesystem", DATASOURCE_HISTORY_PATH=f"{home}/history")
    return env


async def main(environ: Mapping[str, str] = os.environ, days: int = 7) -> dict[str, Any]:
    start = dt.date(2026, 11, 1)
    names = [(start + dt.timedelta(days=i)).isoformat() for i in range(days)]
    async with Runner.from_env(environment(environ), search_paths=[str(HERE)]) as runner:
        daily = runner.load(HERE / "daily.json")
        for i, day in enumerate(names):
            await runner.run(daily, {"day": day, "orders": [10.0 + i * 5] * (20 + i)})
        result = await runner.run(HERE / "trend.json", {"days": names})
    trend: dict[str, Any] = result.vars["trend"]
    print("trend:", trend)
    return trend


if __name__ == "__main__":
    anyio.run(main)
