"""Every example runs, on the embedded default (filesystem) datasources."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import anyio
import orjson
import pytest

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"


def load_example(name: str) -> ModuleType:
    path = EXAMPLES / name / ("run.py" if (EXAMPLES / name / "run.py").exists() else "service.py")
    spec = importlib.util.spec_from_file_location(f"example_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    monkeypatch.chdir(tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith("DATASOURCE_")}
    env["BLOKRUN_HOME"] = str(tmp_path / "home")
    yield env


def test_quickstart_fails_half_way_then_resumes_running_each_step_once(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATASOURCE_", "PAYMENT_"))}
    env["BLOKRUN_HOME"] = str(tmp_path / "home")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    proc = subprocess.run(
        ["bash", str(EXAMPLES / "quickstart" / "run.sh")],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "exit code 1: the run failed" in proc.stdout
    assert "ConnectionError: payment provider unreachable" in proc.stderr
    ledger = (tmp_path / "home" / "quickstart-ledger.txt").read_text().split("\n")
    steps = [line.split()[1] for line in ledger if line]
    assert steps == ["validate-order", "reserve-stock", "charge-payment", "send-receipt"]
    final = next(line for line in proc.stdout.splitlines() if line.startswith("{"))
    assert orjson.loads(final)["send-receipt"]["sent_to"] == "ada@example.com"
    assert "status completed  attempt 2" in proc.stdout


async def test_s3_pipeline_resumes_from_the_failed_step(home: dict[str, str]) -> None:
    module = load_example("s3_pipeline")
    if "s3_pipeline_nodes" in sys.modules:  # loaded by another test: count afresh
        sys.modules["s3_pipeline_nodes"].RUNS.clear()
    out = await module.main(home, rows=5000)
    result = out["result"]
    assert result.steps_skipped == ("load-data", "transform")
    assert result.steps_run == ("aggregate", "report")
    assert result.vars["report"]["summary"] == {
        "rows": 5000,
        "chunks": 5,
        "mean": 499.5,
        "max": 999,
    }
    nodes = sys.modules["s3_pipeline_nodes"]
    assert nodes.RUNS.count("load-data") == nodes.RUNS.count("transform") == 1
    assert nodes.RUNS.count("aggregate") == 2
    assert (Path(home["BLOKRUN_HOME"]) / "storage" / f"raw-{out['request_id']}").exists()


async def test_redis_coordination_parallel_runs_count_everything_once(home: dict[str, str]) -> None:
    module = load_example("redis_coordination")
    out = await module.main(home, partitions=6, items=3000)
    assert out["summary"]["count"] == out["expected"]["count"]
    assert out["summary"]["sum"] == out["expected"]["sum"]
    assert out["summary"]["writers"] == 6


async def test_pg_history_reads_earlier_results_for_a_trend(home: dict[str, str]) -> None:
    module = load_example("pg_history")
    trend = await module.main(home, days=5)
    assert trend["days"] == 5
    assert trend["first"] == "2026-11-01" and trend["last"] == "2026-11-05"
    # revenue of day i is (10 + 5i) * (20 + i): a rising series
    assert trend["revenue_slope_per_day"] > 0


async def _http(port: int, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    payload = orjson.dumps(body) if body is not None else b""
    async with await anyio.connect_tcp("127.0.0.1", port) as stream:
        await stream.send(
            f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(payload)}\r\n\r\n".encode()
            + payload
        )
        data = b""
        try:
            while True:
                data += await stream.receive()
        except anyio.EndOfStream:
            pass
    head, _, rest = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), orjson.loads(rest)


async def _wait_status(port: int, rid: str, want: str) -> dict[str, Any]:
    with anyio.fail_after(15):
        while True:
            code, doc = await _http(port, "GET", f"/runs/{rid}")
            if code == 200 and doc["status"] == want:
                return dict(doc)
            await anyio.sleep(0.02)


async def test_service_runs_in_the_background_and_resumes_a_failed_run(
    home: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = load_example("service")
    flag = tmp_path / "mail-down"
    flag.write_text("")
    monkeypatch.setenv("MAIL_API_DOWN", str(flag))
    from blokrun import Runner

    runner = Runner.from_env(home, search_paths=[str(EXAMPLES / "service")])
    async with anyio.create_task_group() as tg:
        port = await tg.start(
            lambda task_status: module.serve(0, task_status=task_status, runner=runner)
        )
        code, doc = await _http(port, "POST", "/runs", {"inputs": {"email": "ada@example.com"}})
        assert code == 202
        rid = doc["request_id"]
        failed = await _wait_status(port, rid, "failed")
        assert "mail API is down" in failed["error"]
        assert failed["last_done"] == "create-account"  # the last checkpointed step
        assert failed["failed_step"] == "send-welcome"  # where it failed
        flag.unlink()
        code, _ = await _http(port, "POST", f"/runs/{rid}/resume")
        assert code == 202
        await _wait_status(port, rid, "completed")
        code, _ = await _http(port, "POST", f"/runs/{rid}/resume")
        assert code == 409
        code, doc = await _http(port, "GET", "/runs/unknown-run")
        assert code == 404
        tg.cancel_scope.cancel()
    nodes = sys.modules["service_nodes"]
    assert nodes.CREATED.count(rid) == 1  # the resume did not create the account again


async def test_workers_example_submits_serves_and_waits(home: dict[str, str]) -> None:
    module = load_example("workers")
    results = await module.main(home, images=12)
    assert len(results) == 12
    assert all(url.startswith("https://cdn.example/") for url in results.values())


async def test_language_example_runs_every_construct(home: dict[str, str], tmp_path: Path) -> None:
    module = load_example("language")
    home["LANGUAGE_LEDGER"] = str(tmp_path / "ledger")
    os.environ["LANGUAGE_LEDGER"] = home["LANGUAGE_LEDGER"]
    try:
        out = await module.main(home)
    finally:
        del os.environ["LANGUAGE_LEDGER"]
    assert out["choice"] == "letter"
    assert [f["index"] for f in out["map"]["failed"]] == [2]
    assert out["map"]["results"][3] == {"thumb": "c-small.png"}
    paid, children = out["subworkflow"]
    assert paid == 65 and [c.request_id for c in children] == ["co-1:pay"]
    assert out["timer"] == "time is up"
    assert out["fork"][1] == 1
    assert out["schedule"] == ("hourly-report", "cron '0 * * * *' (UTC)", 3600.0)
    ran = [line.split()[1] for line in (tmp_path / "ledger").read_text().splitlines()]
    assert ran.count("charge") == 1  # the fork from 'receipt' did not pay again
    assert "review" not in ran  # 65 is not over 1000: the audit was skipped
