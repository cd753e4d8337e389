"""Issue 13's classes through the ``blokrun`` command, on the filesystem, Redis and
PostgreSQL: a request id names one run (class 2), key patterns that use the vars (class 7),
and encryption is never downgraded (class 4)."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import pytest

from tests.integration.test_cli import blokrun as _blokrun
from tests.integration.test_cli import write_wf
from tests.servers.base import settings_env

if TYPE_CHECKING:
    import subprocess

    from blokrun.config import DatasourceSettings
    from tests.servers.base import ThrowawayServer

pytestmark = pytest.mark.parametrize("server", ["filesystem", "redis", "postgresql"], indirect=True)

NODE = "tests.integration.wfnodes"


@dataclass
class Target:
    """The ``default`` datasource of the CLI runs, on one server, under a prefix of its own."""

    settings: DatasourceSettings
    home: Path

    def blokrun(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return _blokrun(self.home, *args, **settings_env("default", self.settings), **env)

    def _read(self, job: Callable[[Any], Awaitable[Any]]) -> Any:
        async def go() -> Any:
            from blokrun.datasources import build_datasource

            async with build_datasource(self.settings) as ds:
                return await job(ds)

        return anyio.run(go)

    def stored_keys(self) -> list[str]:
        return list(self._read(lambda ds: ds.keys()))

    def snapshot(self) -> dict[str, bytes | None]:
        """Every record but the leases (a lease is taken and given back by a refused run)."""

        async def job(ds: Any) -> dict[str, bytes | None]:
            return {k: await ds.load(k) for k in await ds.keys() if "lease" not in k}

        return dict(self._read(job))


@pytest.fixture
def target(server: ThrowawayServer, tmp_path: Path) -> Target:
    prefix = f"rc{uuid.uuid4().hex[:8]}."
    return Target(server.settings("default", prefix=prefix), tmp_path)


def linear(n: int, **persistence: Any) -> dict[str, Any]:
    return {
        "name": "classes",
        "version": "1",
        "persistence": persistence,
        "steps": [
            {"name": f"s{i}", "node": f"{NODE}:add", "inputs": {"n": i}} for i in range(1, n + 1)
        ],
    }


def ledger(path: Path) -> list[str]:
    return path.read_text().split("\n")[:-1] if path.exists() else []


# -- class 7: a key pattern that uses the vars -------------------------------------------------


def test_a_key_pattern_with_vars_can_be_resumed_inspected_and_collected(
    tmp_path: Path, target: Target
) -> None:
    doc = linear(3, keyPattern="${ctx.vars.tenant}-${ctx.request.id}-${stepName}")
    wf = write_wf(tmp_path, doc)
    log = tmp_path / "ledger"
    first = target.blokrun(
        "run",
        str(wf),
        "--input",
        '{"tenant": "acme", "total": 0}',
        "--request-id",
        "kp-1",
        WF_FAIL_AT="s3",
        WF_LEDGER=str(log),
    )
    assert first.returncode == 1, first.stderr
    inspected = target.blokrun("inspect", "kp-1", "--json")
    assert inspected.returncode == 0, inspected.stderr
    steps = [c["step"] for c in json.loads(inspected.stdout)["checkpoints"]]
    assert steps == ["s1", "s2"]
    resumed = target.blokrun("resume", "kp-1", WF_LEDGER=str(log))
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout)["total"] == 6
    assert ledger(log) == ["kp-1 s1", "kp-1 s2", "kp-1 s3", "kp-1 s3"]
    # the user's key (an alias) was rendered with the vars, as the step saw them
    read = target.blokrun("inspect", "kp-1", "--step", "s2", "--json")
    assert read.returncode == 0, read.stderr
    gc = target.blokrun("gc", "--completed-older-than", "0s", "--json")
    assert gc.returncode == 0, gc.stderr
    assert [r["request_id"] for r in json.loads(gc.stdout)["runs"]] == ["kp-1"]
    gone = target.blokrun("inspect", "kp-1")
    assert gone.returncode != 0
    assert not [k for k in target.stored_keys() if "kp-1" in k], "gc left some of the run behind"


def test_a_key_pattern_naming_an_unknown_root_is_refused_at_load(
    tmp_path: Path, target: Target
) -> None:
    wf = write_wf(tmp_path, linear(2, keyPattern="${ctx.nope}-${stepName}"))
    proc = target.blokrun("validate", str(wf))
    assert proc.returncode == 2
    assert "keyPattern" in proc.stderr and str(wf) in proc.stderr


# -- class 2: a request id names one run -----------------------------------------------------


def test_run_on_an_existing_id(tmp_path: Path, target: Target) -> None:
    wf = write_wf(tmp_path, linear(2))
    log = tmp_path / "ledger"
    args = ("run", str(wf), "--input", '{"total": 0}', "--request-id", "one-1")
    assert target.blokrun(*args, WF_LEDGER=str(log)).returncode == 0
    again = target.blokrun(*args, WF_LEDGER=str(log))  # completed, same inputs
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["total"] == 3
    assert ledger(log) == ["one-1 s1", "one-1 s2"]  # nothing ran again
    other = target.blokrun(
        "run",
        str(wf),
        "--input",
        '{"total": 5}',
        "--request-id",
        "one-1",
        WF_LEDGER=str(log),
    )
    assert other.returncode == 2
    assert "one-1" in other.stderr and "--restart" in other.stderr
    fresh = target.blokrun(
        "run",
        str(wf),
        "--input",
        '{"total": 5}',
        "--request-id",
        "one-1",
        "--restart",
        WF_LEDGER=str(log),
    )
    assert fresh.returncode == 0, fresh.stderr
    assert json.loads(fresh.stdout)["total"] == 8
    assert ledger(log)[2:] == ["one-1 s1", "one-1 s2"]


def test_run_on_a_failed_id_asks_for_resume_and_never_mixes_attempts(
    tmp_path: Path, target: Target
) -> None:
    wf = write_wf(tmp_path, linear(3))
    log = tmp_path / "ledger"
    args = ("run", str(wf), "--input", '{"total": 0}', "--request-id", "f-1")
    assert target.blokrun(*args, WF_FAIL_AT="s3", WF_LEDGER=str(log)).returncode == 1
    again = target.blokrun(*args, WF_LEDGER=str(log))
    assert again.returncode == 2
    assert "blokrun resume f-1" in again.stderr
    # a restart with other inputs fails earlier; resume continues the restart, never the
    # first incarnation's later checkpoint
    restarted = target.blokrun(
        "run",
        str(wf),
        "--input",
        '{"total": 100}',
        "--request-id",
        "f-1",
        "--restart",
        WF_FAIL_AT="s2",
        WF_LEDGER=str(log),
    )
    assert restarted.returncode == 1
    resumed = target.blokrun("resume", "f-1", WF_LEDGER=str(log))
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout)["total"] == 106
    assert ledger(log)[-2:] == ["f-1 s2", "f-1 s3"]


# -- encryption is never downgraded -----------------------------------------------------------


def key(byte: int) -> str:
    return "k1:" + base64.b64encode(bytes([byte]) * 32).decode()


def test_a_process_without_the_key_stops_and_writes_nothing(tmp_path: Path, target: Target) -> None:
    wf = write_wf(tmp_path, linear(3))
    log = tmp_path / "ledger"
    first = target.blokrun(
        "run",
        str(wf),
        "--input",
        '{"total": 0}',
        "--request-id",
        "enc-1",
        WF_FAIL_AT="s3",
        WF_LEDGER=str(log),
        BLOKRUN_ENCRYPTION_KEY=key(1),
    )
    assert first.returncode == 1
    before = target.snapshot()
    plain = target.blokrun("resume", "enc-1", WF_LEDGER=str(log))
    assert plain.returncode == 2, plain.stderr
    assert "k1" in plain.stderr and "key" in plain.stderr
    assert "definition is not stored" not in plain.stderr
    assert target.snapshot() == before  # nothing written, nothing rewritten
    assert ledger(log) == ["enc-1 s1", "enc-1 s2", "enc-1 s3"]  # nothing ran
    ok = target.blokrun("resume", "enc-1", WF_LEDGER=str(log), BLOKRUN_ENCRYPTION_KEY=key(1))
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["total"] == 6


def test_require_encryption_refuses_to_start_without_a_key(tmp_path: Path, target: Target) -> None:
    wf = write_wf(tmp_path, linear(1))
    proc = target.blokrun("run", str(wf), BLOKRUN_REQUIRE_ENCRYPTION="1")
    assert proc.returncode == 2
    assert "BLOKRUN_REQUIRE_ENCRYPTION" in proc.stderr
    assert not [k for k in target.stored_keys() if "_blokrun.ckpt" in k]
    bad = target.blokrun("run", str(wf), BLOKRUN_REQUIRE_ENCRYPTION="maybe")
    assert bad.returncode == 2 and "BLOKRUN_REQUIRE_ENCRYPTION" in bad.stderr
    ok = target.blokrun(
        "run", str(wf), BLOKRUN_REQUIRE_ENCRYPTION="1", BLOKRUN_ENCRYPTION_KEY=key(2)
    )
    assert ok.returncode == 0, ok.stderr


def test_a_run_encrypted_at_its_second_attempt_is_never_downgraded(
    tmp_path: Path, target: Target
) -> None:
    """Attempt 1 plain, attempt 2 encrypted (and failed again): a process without the key
    stops with exit 2 naming the key id, runs nothing and writes nothing."""
    wf = write_wf(tmp_path, linear(4))
    log = tmp_path / "ledger"
    first = target.blokrun(
        "run",
        str(wf),
        "--input",
        '{"total": 0}',
        "--request-id",
        "mix-1",
        WF_FAIL_AT="s2",
        WF_LEDGER=str(log),
    )
    assert first.returncode == 1
    second = target.blokrun(
        "resume",
        "mix-1",
        WF_FAIL_AT="s4",
        WF_LEDGER=str(log),
        BLOKRUN_ENCRYPTION_KEY=key(3),
    )
    assert second.returncode == 1, second.stderr
    ran = ledger(log)
    files = target.snapshot()
    plain = target.blokrun("resume", "mix-1", WF_LEDGER=str(log))
    assert plain.returncode == 2, plain.stderr
    assert "k1" in plain.stderr
    assert ledger(log) == ran  # nothing ran
    assert target.snapshot() == files  # nothing written, nothing rewritten
    ok = target.blokrun("resume", "mix-1", WF_LEDGER=str(log), BLOKRUN_ENCRYPTION_KEY=key(3))
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["total"] == 10
    assert ledger(log)[len(ran) :] == ["mix-1 s4"]
