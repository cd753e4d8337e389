"""Run leases across real processes: two resumers, a paused holder, a dead holder.

Every process here is a real ``blokrun`` command against a throwaway server (or the real
filesystem); side effects are counted in a ledger file the steps append to.
"""

from __future__ import annotations

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
import orjson
import pytest

from blokrun import RunBusy, Runner
from blokrun.config import settings_from_env
from blokrun.persistence.keys import lease_key
from tests import records
from tests.servers.base import settings_env

if TYPE_CHECKING:
    from tests.conftest import ServerPool
from tests.processes import reap

REPO = Path(__file__).resolve().parents[2]
NODE = "tests.integration.wfnodes"
DRIVERS = ["filesystem", "redis", "postgresql"]
EXIT_BUSY = 75


def _env(tmp: Path, driver: str, pool: ServerPool, **extra: str) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("DATASOURCE_", "WF_", "BLOKRUN_"))
    }
    env["BLOKRUN_HOME"] = str(tmp / "home")
    env["PYTHONPATH"] = str(REPO)
    env["WF_LEDGER"] = str(tmp / "ledger")
    prefix = f"lr-{uuid4().hex[:8]}/"
    if driver == "filesystem":
        env["DATASOURCE_DEFAULT_TYPE"] = "filesystem"
        env["DATASOURCE_DEFAULT_PATH"] = str(tmp / "ck")
    else:
        env.update(settings_env("default", pool.get(driver).settings("default", prefix=prefix)))
    env.update(extra)
    return env


def _write_wf(tmp: Path, steps: list[dict[str, Any]]) -> Path:
    path = tmp / "wf.json"
    path.write_bytes(orjson.dumps({"name": "leased", "steps": steps}))
    return path


def _popen(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "blokrun", *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _ledger(tmp: Path) -> Counter[str]:
    path = tmp / "ledger"
    if not path.exists():
        return Counter()
    return Counter(line.split()[1] for line in path.read_text().splitlines())


def _wait_for(tmp: Path, step: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while _ledger(tmp)[step] == 0:
        assert time.monotonic() < deadline, f"step {step} never started"
        time.sleep(0.02)


@pytest.mark.parametrize("driver", DRIVERS)
def test_two_resumers_at_once_one_proceeds_the_other_is_told_busy(
    driver: str, tmp_path: Path, server_pool: ServerPool
) -> None:
    env = _env(tmp_path, driver, server_pool)
    wf = _write_wf(
        tmp_path,
        [
            {"name": "s1", "node": f"{NODE}:add"},
            {"name": "s2", "node": f"{NODE}:add"},
            {"name": "s3", "node": f"{NODE}:nap", "inputs": {"seconds": 2.0}},
            {"name": "s4", "node": f"{NODE}:add"},
        ],
    )
    first = _popen({**env, "WF_FAIL_AT": "s2"}, "run", str(wf), "--request-id", "two")
    out = first.communicate(timeout=60)
    assert first.returncode == 1, out
    resumers = [_popen(env, "resume", "two") for _ in range(2)]
    outs = [(p.wait(60), *p.communicate(timeout=60)) for p in resumers]
    codes = sorted(code for code, _, _ in outs)
    assert codes == [0, EXIT_BUSY], outs
    busy = next(err for code, _, err in outs if code == EXIT_BUSY)
    assert "being run or resumed elsewhere" in busy and "run two" in busy, busy
    # Every step ran once, except s2 which failed once and then ran again (no step twice).
    assert _ledger(tmp_path) == Counter({"s1": 1, "s2": 2, "s3": 1, "s4": 1})


@pytest.mark.parametrize("driver", DRIVERS)
def test_a_paused_holder_loses_its_lease_and_its_writes_are_refused(
    driver: str, tmp_path: Path, server_pool: ServerPool
) -> None:
    """SIGSTOP the process running a step until its 1 s lease expires; another process
    takes the run over and completes it; SIGCONT the first: its checkpoint write is
    refused by the datasource (fencing) and it stops without writing (exit 75)."""
    env = _env(tmp_path, driver, server_pool, BLOKRUN_LEASE_TTL="1")
    wf = _write_wf(
        tmp_path,
        [
            {"name": "s1", "node": f"{NODE}:add"},
            {"name": "s2", "node": f"{NODE}:nap", "inputs": {"seconds": 1.5}},
            {"name": "s3", "node": f"{NODE}:add"},
        ],
    )
    holder = _popen(env, "run", str(wf), "--request-id", "paused")
    try:
        _wait_for(tmp_path, "s2")
        holder.send_signal(signal.SIGSTOP)
        time.sleep(1.6)  # the lease (1 s) expires: nobody renews it
        taker = subprocess.run(
            [sys.executable, "-m", "blokrun", "resume", "paused"],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert taker.returncode == 0, taker.stderr
    finally:
        holder.send_signal(signal.SIGCONT)
    _, err = holder.communicate(timeout=60)
    code = holder.returncode
    assert code == EXIT_BUSY, err
    assert "another process took this run over" in err, err
    # s2 ran in both (the step in flight at the takeover: at-least-once), s3 only in the taker.
    assert _ledger(tmp_path) == Counter({"s1": 1, "s2": 2, "s3": 1})

    async def stored() -> tuple[Any, list[tuple[str, int]]]:
        async with Runner.from_env(env) as runner:
            ds = runner.datasources["default"]
            kept = await records.checkpoints(ds, "paused")
            return await runner.head("paused"), [(c.step, c.attempt) for c in kept]

    head, kept = anyio.run(stored)
    assert head is not None and head.status == "completed" and head.attempt == 2
    # s2's checkpoint is the taker's (attempt 2): the paused holder's was refused
    assert kept == [("s1", 1), ("s2", 2), ("s3", 2)]


@pytest.mark.parametrize("driver", DRIVERS)
def test_a_killed_holder_is_taken_over_at_once_on_this_machine(
    driver: str, tmp_path: Path, server_pool: ServerPool
) -> None:
    """SIGKILL leaves a live 30 s lease behind; a resume on the same machine sees that the
    holder's process is gone and takes over at once instead of waiting out the TTL."""
    env = _env(tmp_path, driver, server_pool)  # the default 30 s lease
    wf = _write_wf(
        tmp_path,
        [
            {"name": "s1", "node": f"{NODE}:add"},
            {"name": "s2", "node": f"{NODE}:nap", "inputs": {"seconds": "${ctx.vars.nap}"}},
            {"name": "s3", "node": f"{NODE}:add"},
        ],
    )
    holder = _popen(env, "run", str(wf), "--request-id", "killed", "--input", '{"nap": 30}')
    _wait_for(tmp_path, "s2")
    holder.kill()
    holder.communicate(timeout=10)

    async def lease_left() -> Any:
        async with Runner.from_env(env) as runner:
            return await runner.datasources["default"].read_lease(lease_key("killed"))

    held = anyio.run(lease_left)
    assert held is not None and held.live(time.time()) and held.expires_at > time.time() + 20
    started = time.monotonic()
    taker = subprocess.run(
        [sys.executable, "-m", "blokrun", "resume", "killed", "--set", "nap=0"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert taker.returncode == 0, taker.stderr
    assert time.monotonic() - started < 10  # not the 30 s TTL
    assert "is gone; taking over" in taker.stderr
    after = anyio.run(lease_left)
    assert after is not None and after.token > held.token and not after.live(time.time())
    assert _ledger(tmp_path) == Counter({"s1": 1, "s2": 2, "s3": 1})


async def test_a_live_holder_elsewhere_is_waited_out_until_its_lease_expires(
    tmp_path: Path,
) -> None:
    env = {"DATASOURCE_DEFAULT_TYPE": "filesystem", "DATASOURCE_DEFAULT_PATH": str(tmp_path)}
    settings = settings_from_env(env)
    wf = {"name": "w", "steps": [{"name": "a", "node": f"{NODE}:add"}]}
    async with Runner(settings.datasources.values()) as runner:
        ds = runner.datasources["default"]
        # A holder on another machine: its pid means nothing here, only its TTL does.
        elsewhere = await ds.acquire_lease(lease_key("far"), "otherhost/0123456789ab:1:x", 1.0)
        with pytest.raises(RunBusy) as info:
            await runner.run(wf, {}, request_id="far")
        assert info.value.owner == elsewhere.owner
        assert "otherhost" in str(info.value) and "being run or resumed elsewhere" in str(
            info.value
        )
        await anyio.sleep(1.2)
        result = await runner.run(wf, {}, request_id="far")
        assert result.status == "completed"
        after = await ds.read_lease(lease_key("far"))
        assert after is not None and after.token > elsewhere.token
        assert not after.live(time.time())  # released when the run ended


def test_a_crashed_run_is_listed_as_interrupted_and_resume_failed_picks_it_up(
    tmp_path: Path, server_pool: ServerPool
) -> None:
    """Two runs in their second step; one process is killed. Its head still says running,
    but its lease's holder is gone: ``runs()`` says interrupted, and ``resume_failed()``
    resumes it -- and leaves alone the one that is really running."""
    env = _env(tmp_path, "filesystem", server_pool, WF_HANG=str(tmp_path / "hang"))
    wf = _write_wf(
        tmp_path,
        [
            {"name": "s1", "node": f"{NODE}:add"},
            {"name": "s2", "node": f"{NODE}:hang_once"},
            {"name": "s3", "node": f"{NODE}:add"},
        ],
    )
    live = _popen(env, "run", str(wf), "--request-id", "live")
    crashed = _popen(env, "run", str(wf), "--request-id", "crashed")
    try:
        deadline = time.monotonic() + 30
        while _ledger(tmp_path)["s2"] < 2:
            procs = {"live": live, "crashed": crashed}
            ended = {name: p for name, p in procs.items() if p.poll() is not None}
            assert not ended and time.monotonic() < deadline, {
                name: (p.returncode, p.communicate()) for name, p in ended.items()
            }
            time.sleep(0.02)
        crashed.kill()
        crashed.communicate(timeout=10)
        quiet = {k: v for k, v in env.items() if k != "WF_HANG"}  # s2 no longer hangs

        async def check() -> tuple[dict[str, Any], list[Any], dict[str, Any]]:
            async with Runner.from_env(quiet) as runner:
                before = {r.request_id: r.status for r in (await runner.runs()).runs}
                outcomes = await runner.resume_failed()
                after = {r.request_id: r.status for r in (await runner.runs()).runs}
                return before, outcomes, after

        before, outcomes, after = anyio.run(check)
        shown = subprocess.run(
            [sys.executable, "-m", "blokrun", "inspect", "live"],
            cwd=REPO, env=quiet, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert "being run by " in shown.stdout and f":{live.pid}:" in shown.stdout, shown
        assert before == {"live": "running", "crashed": "interrupted"}
        assert [(o.request_id, o.ok) for o in outcomes] == [("crashed", True)]
        assert after == {"live": "running", "crashed": "completed"}
    finally:
        reap(live)
        reap(crashed)
