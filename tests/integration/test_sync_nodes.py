"""Plain ``def`` nodes run on daemon threads: a node that overruns its timeout, or hangs
forever, never keeps ``blokrun`` (or any process) alive after the run ended; SIGTERM during
one ends the command promptly. The threads are reused, and get the caller's context."""

from __future__ import annotations

import contextvars
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import anyio
import pytest

from blokrun.execution.threads import run_in_daemon_thread
from tests.integration.test_cli import REPO, cli_env, write_wf

NODE = "tests.integration.wfnodes"


def wf(step: dict[str, object]) -> dict[str, object]:
    return {
        "name": "sync",
        "steps": [
            {"name": "first", "node": f"{NODE}:add", "inputs": {"n": 1}},
            {"name": "slow", "node": f"{NODE}:sync_sleep", **step},
        ],
    }


@pytest.mark.parametrize(
    "step",
    [{"inputs": {"seconds": 10}, "timeout": 0.5}, {"inputs": {}, "timeout": 0.5}],
    ids=["overruns", "hangs-forever"],
)
def test_a_sync_node_past_its_timeout_does_not_hold_the_command(
    tmp_path: Path, step: dict[str, object]
) -> None:
    path = write_wf(tmp_path, wf(step))
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "blokrun", "run", str(path), "--request-id", "slow-1"],
        cwd=REPO,
        env=cli_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=30,
    )
    took = time.monotonic() - started
    assert proc.returncode == 1, proc.stderr
    assert "timed out" in proc.stderr or "timeout" in proc.stderr.lower(), proc.stderr
    assert took < 5, f"the command took {took:.1f}s: it waited for the abandoned thread"


def test_sigterm_during_a_blocking_sync_node_ends_the_command_promptly(tmp_path: Path) -> None:
    path = write_wf(tmp_path, wf({"inputs": {}}))
    ledger = tmp_path / "ledger"
    proc = subprocess.Popen(
        [sys.executable, "-m", "blokrun", "run", str(path), "--request-id", "term-1"],
        cwd=REPO,
        env=cli_env(tmp_path, WF_LEDGER=str(ledger)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 20
        while "term-1 slow" not in (ledger.read_text() if ledger.exists() else ""):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the slow step never started"
            time.sleep(0.02)
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=15)
        took = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 143, err
    assert took < 5, f"exited {took:.1f}s after SIGTERM"


async def test_results_exceptions_context_and_reuse() -> None:
    var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="unset")
    var.set("caller's")
    assert await run_in_daemon_thread(var.get) == "caller's"

    def boom() -> None:
        raise KeyError("from the thread")

    with pytest.raises(KeyError, match="from the thread"):
        await run_in_daemon_thread(boom)
    idents = {await run_in_daemon_thread(threading.get_ident) for _ in range(50)}
    assert len(idents) == 1  # reused, not a thread per call
    assert all(t.daemon for t in threading.enumerate() if t.name == "blokrun node")


async def test_cancelling_the_caller_abandons_the_thread_at_once() -> None:
    release = threading.Event()
    started = time.monotonic()
    with anyio.move_on_after(0.2):
        await run_in_daemon_thread(release.wait)
    assert time.monotonic() - started < 1.0
    release.set()
    # the abandoned thread finishes on its own; the pool keeps working
    assert await run_in_daemon_thread(lambda: 42) == 42
