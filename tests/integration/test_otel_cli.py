"""OpenTelemetry from the CLI: the standard OTEL_* variables turn it on (console exporter
here), ``blokrun worker --metrics-port`` serves Prometheus metrics, and a run submitted by
one process and run by a worker process is one trace (the job carries it)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING
from uuid import uuid4

from tests.servers.base import free_port, settings_env

if TYPE_CHECKING:
    from tests.conftest import ServerPool

REPO = Path(__file__).resolve().parents[2]


def clean_env(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DATASOURCE_", "WF_", "BLOKRUN_", "OTEL_"))
    }
    env["PYTHONPATH"] = str(REPO)
    return env | extra


def cli(env: dict[str, str], *args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return python(env, "-m", "blokrun", *args, cwd=cwd)


def python(env: dict[str, str], *args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


def spans_in(text: str) -> list[dict[str, object]]:
    """The spans the console exporter printed (one JSON object each)."""
    decoder = json.JSONDecoder()
    out, i = [], 0
    while (start := text.find("{\n", i)) != -1:
        try:
            obj, end = decoder.raw_decode(text, start)
        except json.JSONDecodeError:
            i = start + 1
            continue
        if isinstance(obj, dict) and "context" in obj and "name" in obj:
            out.append(obj)
        i = end
    return out


def flow(tmp_path: Path) -> Path:
    path = tmp_path / "flow.json"
    path.write_text(
        json.dumps(
            {
                "name": "hello",
                "steps": [
                    {"name": "greet", "node": "set", "inputs": {"msg": "hi", "password": "p4ss"}},
                    {"name": "shout", "node": "echo", "inputs": {"x": "${ctx.vars.msg}"}},
                ],
            }
        )
    )
    return path


def test_console_exporter_prints_the_runs_spans_on_stderr(tmp_path: Path) -> None:
    env = clean_env(
        OTEL_TRACES_EXPORTER="console", OTEL_SERVICE_NAME="shop", BLOKRUN_HOME=str(tmp_path)
    )
    proc = cli(env, "run", str(flow(tmp_path)), "--request-id", "o-1", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {"msg": "hi", "password": "p4ss", "shout": {"x": "hi"}}
    spans = spans_in(proc.stderr)
    names = [s["name"] for s in spans]
    assert names.count("blokrun.step") == 2 and names.count("blokrun.run") == 1
    assert names.count("blokrun.checkpoint") == 2
    run = next(s for s in spans if s["name"] == "blokrun.run")
    assert run["resource"]["attributes"]["service.name"] == "shop"  # type: ignore[index]
    trace_ids = {s["context"]["trace_id"] for s in spans}  # type: ignore[index]
    assert len(trace_ids) == 1
    assert "p4ss" not in proc.stderr


def test_without_otel_variables_nothing_is_set_up(tmp_path: Path) -> None:
    env = clean_env(BLOKRUN_HOME=str(tmp_path))
    code = (
        "import sys\n"
        "from blokrun.cli.main import main\n"
        "try:\n    main(['run', sys.argv[1]])\nexcept SystemExit: pass\n"
        "print(sorted(m for m in sys.modules if 'opentelemetry' in m or 'blokrun.otel' in m))"
    )
    proc = python(env, "-c", code, str(flow(tmp_path)), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith("[]"), proc.stdout


def test_a_bad_exporter_name_is_a_usage_error(tmp_path: Path) -> None:
    env = clean_env(OTEL_TRACES_EXPORTER="zipkinn", BLOKRUN_HOME=str(tmp_path))
    proc = cli(env, "run", str(flow(tmp_path)), cwd=tmp_path)
    assert proc.returncode == 2
    assert "OTEL_TRACES_EXPORTER='zipkinn': unknown exporter 'zipkinn'" in proc.stderr
    assert "Traceback" not in proc.stderr


def _scrape(port: int, deadline: float) -> str:
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
                body: bytes = r.read()
                return body.decode()
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def test_submit_then_worker_is_one_trace_and_the_worker_serves_metrics(
    tmp_path: Path, server_pool: ServerPool
) -> None:
    settings = server_pool.get("redis").settings("q", prefix=f"ot-{uuid4().hex[:6]}/")
    env = clean_env(BLOKRUN_HOME=str(tmp_path), OTEL_TRACES_EXPORTER="console")
    env |= settings_env("q", settings)
    submit = cli(env, "submit", str(flow(tmp_path)), "--request-id", "job-1", cwd=tmp_path)
    assert submit.returncode == 0, submit.stderr
    port = free_port()
    worker = subprocess.Popen(
        [sys.executable, "-m", "blokrun", "worker", "--metrics-port", str(port)],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            text = _scrape(port, deadline)
            if 'blokrun_runs_ended_total{blokrun_outcome="completed"' in text or (
                "blokrun_runs_ended_total" in text and "completed" in text
            ):
                break
            assert time.monotonic() < deadline, text
            time.sleep(0.2)
        assert "blokrun_step_duration_seconds_bucket" in text
        assert "blokrun_checkpoint_duration_seconds_count" in text
        assert "blokrun_runs_started_total" in text
    finally:
        worker.terminate()
        _, err = worker.communicate(timeout=30)
    spans = spans_in(err)
    (claim,) = [s for s in spans if s["name"] == "blokrun.claim"]
    (run,) = [s for s in spans if s["name"] == "blokrun.run"]
    assert run["parent_id"] == claim["context"]["span_id"]  # type: ignore[index]
    assert run["context"]["trace_id"] == claim["context"]["trace_id"]  # type: ignore[index]
    # the metrics port is closed with the worker
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0


def test_submit_inside_a_trace_gives_the_worker_that_trace(
    tmp_path: Path, server_pool: ServerPool
) -> None:
    """A service submits inside its request's span (traceparent in the job); the worker
    process's spans are in that trace."""
    settings = server_pool.get("redis").settings("q", prefix=f"ot-{uuid4().hex[:6]}/")
    env = clean_env(BLOKRUN_HOME=str(tmp_path), OTEL_TRACES_EXPORTER="console")
    env |= settings_env("q", settings)
    script = (
        "import anyio, sys\n"
        "from opentelemetry.sdk.trace import TracerProvider\n"
        "from blokrun import Runner\n"
        "from blokrun.otel import instrument\n"
        "async def main():\n"
        "    provider = TracerProvider()\n"
        "    runner = Runner.from_env()\n"
        "    instrument(runner, tracer_provider=provider)\n"
        "    async with runner:\n"
        "        with provider.get_tracer('svc').start_as_current_span('POST /x') as span:\n"
        "            await runner.submit(sys.argv[1], request_id='job-2')\n"
        "        print(format(span.get_span_context().trace_id, '032x'))\n"
        "anyio.run(main)\n"
    )
    proc = python(env, "-c", script, str(flow(tmp_path)), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    trace_id = proc.stdout.strip()
    worker = cli(env, "worker", "--max-runs", "1", cwd=tmp_path)
    assert worker.returncode == 0, worker.stderr
    spans = spans_in(worker.stderr)
    job = [s for s in spans if s["name"] in ("blokrun.claim", "blokrun.run", "blokrun.step")]
    assert len(job) == 4
    assert {s["context"]["trace_id"] for s in job} == {"0x" + trace_id}  # type: ignore[index]
