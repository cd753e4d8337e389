"""Three ``blokrun worker`` processes on one queue, 300 runs, one worker SIGKILLed half-way.

Every run completes; no step whose checkpoint was stored runs again (only a step that was
in flight in the killed worker may run twice); each run's checkpoints form one unbroken
chain (sequence 1..N, each record's completed steps the previous record's plus its own).
On Redis (Streams) and on PostgreSQL (``FOR UPDATE SKIP LOCKED``).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any
from uuid import uuid4

import anyio
import pytest

from blokrun import Runner
from blokrun.persistence.keys import CHECKPOINT_PREFIX
from blokrun.persistence.records import CheckpointRecord, decode_record
from tests.processes import reaped
from tests.servers.base import settings_env

if TYPE_CHECKING:
    from tests.conftest import ServerPool

REPO = Path(__file__).resolve().parents[2]
NODE = "tests.integration.wfnodes"
RUNS = 300
STEPS = 5
WORKERS = 3


def _workflow() -> dict[str, Any]:
    return {
        "name": "cluster",
        "steps": [
            {"name": f"s{i}", "node": f"{NODE}:nap", "inputs": {"seconds": 0.02}}
            for i in range(1, STEPS + 1)
        ],
    }


def _ledger(path: Path) -> list[tuple[str, str]]:
    if not path.exists():
        return []
    return [tuple(line.split()[:2]) for line in path.read_text().splitlines()]  # type: ignore[misc]


@pytest.mark.slow
@pytest.mark.parametrize("driver", ["redis", "postgresql"])
def test_300_runs_on_3_workers_one_killed_half_way(
    driver: str, tmp_path: Path, server_pool: ServerPool
) -> None:
    settings = server_pool.get(driver).settings(
        "default", prefix=f"wc-{uuid4().hex[:8]}/", timeout=30.0
    )
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("DATASOURCE_", "WF_", "BLOKRUN_"))
    }
    env.update(settings_env("default", settings))
    env["PYTHONPATH"] = str(REPO)
    env["BLOKRUN_LEASE_TTL"] = "2"  # a dead worker's claims come back after 2 s
    env["WF_LEDGER"] = str(tmp_path / "ledger")
    ledger = tmp_path / "ledger"

    async def submit() -> list[str]:
        async with Runner.from_env(env) as runner:
            return [
                await runner.submit(_workflow(), {}, request_id=f"run-{i:03d}") for i in range(RUNS)
            ]

    ids = anyio.run(submit)
    workers = [
        subprocess.Popen(
            [sys.executable, "-m", "blokrun", "worker", "--concurrency", "8", "--grace", "10"],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(WORKERS)
    ]
    try:
        deadline = time.monotonic() + 120
        while len(_ledger(ledger)) < RUNS * STEPS // 2:
            assert time.monotonic() < deadline, "the workers made no progress"
            assert all(w.poll() is None for w in workers), [w.communicate() for w in workers]
            time.sleep(0.05)
        workers[0].kill()  # SIGKILL half-way
        workers[0].communicate(timeout=10)

        async def wait_all() -> dict[str, Any]:
            async with Runner.from_env(env) as runner:
                out: dict[str, Any] = {}
                with anyio.fail_after(180):
                    for rid in ids:
                        out[rid] = await runner.wait(rid)
                ds = runner.datasources["default"]
                keys = await ds.keys(CHECKPOINT_PREFIX)
                records = await ds.load_batch(keys)
                out["__records__"] = records
                return out

        results = anyio.run(wait_all)
    finally:
        for w in workers[1:]:
            if w.poll() is None:
                w.send_signal(signal.SIGTERM)
        outs = [w.communicate(timeout=60) for w in workers[1:]]
    assert [w.returncode for w in workers[1:]] == [0, 0], outs
    records: dict[str, bytes] = results.pop("__records__")
    assert {rid: r.status for rid, r in results.items()} == {rid: "completed" for rid in ids}
    assert all(len(r.vars) == STEPS for r in results.values())  # every step's output

    calls = Counter(_ledger(ledger))
    assert {rid for rid, _ in calls} == set(ids)
    twice = {key: n for key, n in calls.items() if n > 1}
    assert all(n == 2 for n in twice.values()), twice
    per_run = Counter(rid for rid, _ in twice)
    assert all(n == 1 for n in per_run.values()), per_run  # only the step in flight
    assert len(twice) <= 8, twice  # at most the killed worker's concurrency

    by_run: dict[str, list[CheckpointRecord]] = {}
    for key, raw in records.items():
        rec = decode_record(raw, CheckpointRecord, bind=key)  # sealed for its own key
        by_run.setdefault(rec.request_id, []).append(rec)
    taken_over = {rid for rid, chain in by_run.items() if any(r.attempt > 1 for r in chain)}
    assert taken_over, "the killed worker held no run that another one resumed"
    assert set(twice_runs := {rid for rid, _ in twice}) <= taken_over, twice_runs
    for rid in ids:
        chain = sorted(by_run[rid], key=lambda r: r.seq)
        assert [r.seq for r in chain] == list(range(1, STEPS + 1)), (rid, chain)
        done: list[str] = []
        for rec in chain:
            done = [*done, rec.step]
            assert list(rec.done) == done, (rid, rec.seq, rec.done)


@pytest.mark.parametrize("driver", ["redis", "postgresql"])
def test_sigterm_stops_taking_work_drains_and_another_worker_finishes(
    driver: str, tmp_path: Path, server_pool: ServerPool
) -> None:
    settings = server_pool.get(driver).settings("default", prefix=f"wt-{uuid4().hex[:8]}/")
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("DATASOURCE_", "WF_", "BLOKRUN_"))
    }
    env.update(settings_env("default", settings))
    env["PYTHONPATH"] = str(REPO)
    env["WF_LEDGER"] = str(tmp_path / "ledger")
    slow = {
        "name": "slow",
        "steps": [
            {"name": f"s{i}", "node": f"{NODE}:nap", "inputs": {"seconds": 0.4}}
            for i in range(1, 6)
        ],
    }

    async def submit() -> list[str]:
        async with Runner.from_env(env) as runner:
            return [await runner.submit(slow, {}, request_id=f"t{i}") for i in range(4)]

    ids = anyio.run(submit)
    cmd = [sys.executable, "-m", "blokrun", "worker", "--concurrency", "4", "--grace", "0.5"]
    first = subprocess.Popen(cmd, cwd=REPO, env=env, stderr=subprocess.PIPE, text=True)
    with reaped(first):
        deadline = time.monotonic() + 30
        while len(_ledger(tmp_path / "ledger")) < 8:  # every run is in its second step
            assert time.monotonic() < deadline and first.poll() is None
            time.sleep(0.02)
        first.send_signal(signal.SIGTERM)
        _, err = first.communicate(timeout=20)
    assert first.returncode == 0, err
    assert "SIGTERM: finishing running runs" in err and "4 cancelled" in err, err

    second = subprocess.run(
        [*cmd[:-4], "--concurrency", "4", "--max-runs", "4"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert second.returncode == 0, second.stderr
    assert "4 resumed" in second.stderr, second.stderr

    async def results() -> dict[str, str]:
        async with Runner.from_env(env) as runner:
            return {rid: (await runner.wait(rid)).status for rid in ids}

    assert anyio.run(results) == {rid: "completed" for rid in ids}
    calls = Counter(_ledger(tmp_path / "ledger"))
    # The step each run was in at SIGTERM ran twice (cancelled, then again); no other did.
    assert sorted(calls.values()).count(2) <= 4 and max(calls.values()) <= 2, calls
    assert len(calls) == 4 * 5


def test_a_duplicate_submit_says_so_and_the_worker_says_where_its_queue_is(
    tmp_path: Path, server_pool: ServerPool
) -> None:
    settings = server_pool.get("redis").settings("q", prefix=f"dd-{uuid4().hex[:6]}/")
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("DATASOURCE_", "WF_", "BLOKRUN_"))
    }
    env |= settings_env("q", settings) | {"PYTHONPATH": str(REPO), "BLOKRUN_HOME": str(tmp_path)}

    def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "blokrun", *args],
            env=env,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
        )

    wf = tmp_path / "wf.json"
    wf.write_text(json.dumps({"name": "dd", "steps": [{"name": "a", "node": "echo"}]}))
    first = _cli(env, "submit", str(wf), "--request-id", "dd-1")
    assert first.returncode == 0 and first.stdout.strip() == "dd-1", first.stderr
    again = _cli(env, "submit", str(wf), "--request-id", "dd-1")
    assert again.returncode == 0 and "de-duplicated" in again.stderr, again.stderr
    worker = _cli(env, "worker", "--max-runs", "1")
    assert worker.returncode == 0, worker.stderr
    assert "queue in datasource q (redis" in worker.stderr
