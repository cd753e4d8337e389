"""Seed 000's three business queries, each on its intended backend (throwaway servers).

1. Intermediate results in S3 with resume from the failed step (moto's S3 server).
2. Parallel runs coordinating through shared Redis state (redis-server).
3. History read from PostgreSQL for trend analysis (a throwaway PostgreSQL cluster).
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

import pytest

from tests import records
from tests.conftest import ServerPool
from tests.servers.base import settings_env

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
pytestmark = pytest.mark.server


def example(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"bq_{name}", EXAMPLES / name / "run.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def base_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DATASOURCE_")}
    env["BLOKRUN_HOME"] = str(tmp_path / "home")
    return env


async def test_query_1_s3_intermediate_results_and_resume(
    server_pool: ServerPool, tmp_path: Path
) -> None:
    s3 = server_pool.get("s3")
    if "s3_pipeline_nodes" in sys.modules:  # loaded by another test: count afresh
        sys.modules["s3_pipeline_nodes"].RUNS.clear()
    env = base_env(tmp_path) | settings_env("storage", s3.settings("storage", timeout=30))
    out = await example("s3_pipeline").main(env, rows=2000)
    result = out["result"]
    assert result.steps_skipped == ("load-data", "transform")
    assert result.steps_run == ("aggregate", "report")
    assert result.vars["report"]["summary"]["rows"] == 2000
    nodes = sys.modules["s3_pipeline_nodes"]
    assert nodes.RUNS.count("load-data") == 1

    # The intermediate results really are objects in the S3 server.
    from blokrun import Runner

    async with Runner.from_env(env) as runner:
        storage = runner.datasources["storage"]
        keys = await storage.keys(f"raw-{out['request_id']}")
        assert keys == [f"raw-{out['request_id']}"]
        assert await storage.exists(f"transformed-{out['request_id']}")
        # the checkpoints are on S3 too: aggregate's is its second attempt's (the resume)
        rec = await records.checkpoint(storage, f"{out['request_id']}-aggregate")
        assert rec.request_id == out["request_id"] and rec.step == "aggregate"
        assert rec.attempt == 2


async def test_query_2_parallel_runs_coordinate_through_redis(
    server_pool: ServerPool, tmp_path: Path
) -> None:
    redis = server_pool.get("redis")
    env = base_env(tmp_path) | settings_env("cache", redis.settings("cache"))
    out = await example("redis_coordination").main(env, partitions=12, items=6000)
    assert out["summary"]["count"] == out["expected"]["count"]
    assert out["summary"]["sum"] == out["expected"]["sum"]
    assert out["summary"]["writers"] == 12  # twelve runs, each wrote its own partition key


async def test_query_3_history_from_postgresql(server_pool: ServerPool, tmp_path: Path) -> None:
    pg = server_pool.get("postgresql")
    env = base_env(tmp_path) | settings_env("history", pg.settings("history"))
    trend = await example("pg_history").main(env, days=6)
    assert trend["days"] == 6
    assert trend["first"] == "2026-11-01" and trend["last"] == "2026-11-06"
    assert trend["revenue_slope_per_day"] > 0
