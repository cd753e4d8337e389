"""Randomised SIGKILL trials: a run is never lost and never runs a finished step again.

Each trial starts a run in a child process that kills itself (SIGKILL) at a random point --
inside a step after its side effect, before a checkpoint save, between a checkpoint and its
head record, or right after both -- then resumes it in a fresh process. Every step's side
effect is counted in a ledger file: each step ran exactly once, except the step in flight at
the crash, which may have run twice (at-least-once for that one), and the final vars are
right. On the filesystem, Redis, PostgreSQL, MongoDB (the mongoeco emulator) and S3 (moto's
server), each a throwaway server; see the table in docs/reliability.md.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from tests.conftest import ServerPool
from tests.integration.crash_child import STEPS
from tests.servers.base import settings_env

REPO = Path(__file__).resolve().parents[2]
#: 6 per crash point (a whole suite must stay under 10 minutes on 2 cores); more: set it
TRIALS = int(os.environ.get("BLOKRUN_CRASH_TRIALS", "24"))
#: The emulated servers answer a fresh process more slowly (moto: ~1.7 s a trial): fewer
#: trials there, still every crash point several times, to keep ``make test`` in its budget.
SLOW_SERVERS = {"mongodb": 2, "s3": 2}  # divide TRIALS by
EXPECTED = sum(range(1, STEPS + 1))


def child(
    home: Path, rid: str, point: str, n: int, ledger: Path, ds_env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATASOURCE_", "WF_"))}
    env.update(PYTHONPATH=str(REPO), WF_LEDGER=str(ledger), **ds_env)
    return subprocess.run(
        [sys.executable, "-m", "tests.integration.crash_child", str(home), rid, point, str(n)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.slow
@pytest.mark.parametrize("driver", ["filesystem", "redis", "postgresql", "mongodb", "s3"])
def test_randomised_sigkill_trials(driver: str, tmp_path: Path, server_pool: ServerPool) -> None:
    ds_env: dict[str, str] = {}
    if driver != "filesystem":
        ds_env = settings_env("default", server_pool.get(driver).settings("default", timeout=30.0))
    rng = random.Random(20261122)
    points = ["in-step", "before", "between", "after"]
    tally: Counter[str] = Counter()
    trials = TRIALS // SLOW_SERVERS.get(driver, 1)
    for trial in range(trials):
        point = points[trial % len(points)]
        n = rng.randint(1, STEPS)  # the step in whose node, or at whose checkpoint, it dies
        home, ledger, rid = tmp_path / f"t{trial}", tmp_path / f"t{trial}.ledger", f"trial-{trial}"
        crashed = child(home, rid, point, n, ledger, ds_env)
        assert crashed.returncode == -signal.SIGKILL, (trial, point, n, crashed.stderr[-2000:])
        resumed = child(home, rid, "none", 0, ledger, ds_env)
        assert resumed.returncode == 0, (trial, point, n, resumed.stderr[-2000:])
        assert int(resumed.stdout.strip()) == EXPECTED, (trial, point, n, resumed.stdout)
        counts = Counter(line.split()[1] for line in ledger.read_text().splitlines())
        twice = [step for step, c in counts.items() if c == 2]
        assert set(counts) == {f"s{i}" for i in range(1, STEPS + 1)}, (trial, counts)
        assert all(c in (1, 2) for c in counts.values()) and len(twice) <= 1, (
            trial,
            point,
            n,
            counts,
        )
        crash_step = f"s{n}"
        if twice:
            assert twice == [crash_step], (trial, point, n, counts)  # only the step in flight
        if point == "after":
            assert not twice  # its checkpoint and head were written: nothing runs again
        tally[point] += 1
    assert sum(tally.values()) == trials
