"""Issue 13's classes through the ``blokrun`` command, on the filesystem default:
a request id names one run (class 2), key patterns that use the vars (class 7), a corrupt
record does not stop blob gc (class 8), and encryption is never downgraded."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

from tests.integration.test_cli import blokrun, write_wf

NODE = "tests.integration.wfnodes"


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


def test_a_key_pattern_with_vars_can_be_resumed_inspected_and_collected(tmp_path: Path) -> None:
    doc = linear(3, keyPattern="${ctx.vars.tenant}-${ctx.request.id}-${stepName}")
    wf = write_wf(tmp_path, doc)
    log = tmp_path / "ledger"
    first = blokrun(
        tmp_path,
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
    inspected = blokrun(tmp_path, "inspect", "kp-1", "--json")
    assert inspected.returncode == 0, inspected.stderr
    steps = [c["step"] for c in json.loads(inspected.stdout)["checkpoints"]]
    assert steps == ["s1", "s2"]
    resumed = blokrun(tmp_path, "resume", "kp-1", WF_LEDGER=str(log))
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout)["total"] == 6
    assert ledger(log) == ["kp-1 s1", "kp-1 s2", "kp-1 s3", "kp-1 s3"]
    # the user's key (an alias) was rendered with the vars, as the step saw them
    read = blokrun(tmp_path, "inspect", "kp-1", "--step", "s2", "--json")
    assert read.returncode == 0, read.stderr
    gc = blokrun(tmp_path, "gc", "--completed-older-than", "0s", "--json")
    assert gc.returncode == 0, gc.stderr
    assert [r["request_id"] for r in json.loads(gc.stdout)["runs"]] == ["kp-1"]
    gone = blokrun(tmp_path, "inspect", "kp-1")
    assert gone.returncode != 0
    assert not list((tmp_path).rglob("acme-kp-1-*")), "gc left the run's aliases behind"


def test_a_key_pattern_naming_an_unknown_root_is_refused_at_load(tmp_path: Path) -> None:
    wf = write_wf(tmp_path, linear(2, keyPattern="${ctx.nope}-${stepName}"))
    proc = blokrun(tmp_path, "validate", str(wf))
    assert proc.returncode == 2
    assert "keyPattern" in proc.stderr and str(wf) in proc.stderr


# -- class 2: a request id names one run -----------------------------------------------------


def test_run_on_an_existing_id(tmp_path: Path) -> None:
    wf = write_wf(tmp_path, linear(2))
    log = tmp_path / "ledger"
    args = ("run", str(wf), "--input", '{"total": 0}', "--request-id", "one-1")
    assert blokrun(tmp_path, *args, WF_LEDGER=str(log)).returncode == 0
    again = blokrun(tmp_path, *args, WF_LEDGER=str(log))  # completed, same inputs
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["total"] == 3
    assert ledger(log) == ["one-1 s1", "one-1 s2"]  # nothing ran again
    other = blokrun(
        tmp_path,
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
    fresh = blokrun(
        tmp_path,
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


def test_run_on_a_failed_id_asks_for_resume_and_never_mixes_attempts(tmp_path: Path) -> None:
    wf = write_wf(tmp_path, linear(3))
    log = tmp_path / "ledger"
    args = ("run", str(wf), "--input", '{"total": 0}', "--request-id", "f-1")
    assert blokrun(tmp_path, *args, WF_FAIL_AT="s3", WF_LEDGER=str(log)).returncode == 1
    again = blokrun(tmp_path, *args, WF_LEDGER=str(log))
    assert again.returncode == 2
    assert "blokrun resume f-1" in again.stderr
    # a restart with other inputs fails earlier; resume continues the restart, never the
    # first incarnation's later checkpoint
    restarted = blokrun(
        tmp_path,
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
    resumed = blokrun(tmp_path, "resume", "f-1", WF_LEDGER=str(log))
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout)["total"] == 106
    assert ledger(log)[-2:] == ["f-1 s2", "f-1 s3"]


# -- encryption is never downgraded -----------------------------------------------------------


def key(byte: int) -> str:
    return "k1:" + base64.b64encode(bytes([byte]) * 32).decode()


def test_a_process_without_the_key_stops_and_writes_nothing(tmp_path: Path) -> None:
    wf = write_wf(tmp_path, linear(3))
    log = tmp_path / "ledger"
    first = blokrun(
        tmp_path,
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
    before = {p: p.read_bytes() for p in (tmp_path / ".blokrun").rglob("*") if p.is_file()}
    before = {p: b for p, b in before.items() if "lease" not in p.name}
    plain = blokrun(tmp_path, "resume", "enc-1", WF_LEDGER=str(log))
    assert plain.returncode == 2, plain.stderr
    assert "k1" in plain.stderr and "key" in plain.stderr
    assert "definition is not stored" not in plain.stderr
    after = {p: p.read_bytes() for p in (tmp_path / ".blokrun").rglob("*") if p.is_file()}
    assert {p: b for p, b in after.items() if p in before} == before  # nothing rewritten
    assert ledger(log) == ["enc-1 s1", "enc-1 s2", "enc-1 s3"]  # nothing ran
    ok = blokrun(tmp_path, "resume", "enc-1", WF_LEDGER=str(log), BLOKRUN_ENCRYPTION_KEY=key(1))
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["total"] == 6


def test_require_encryption_refuses_to_start_without_a_key(tmp_path: Path) -> None:
    wf = write_wf(tmp_path, linear(1))
    proc = blokrun(tmp_path, "run", str(wf), BLOKRUN_REQUIRE_ENCRYPTION="1")
    assert proc.returncode == 2
    assert "BLOKRUN_REQUIRE_ENCRYPTION" in proc.stderr
    assert not list(tmp_path.rglob("_blokrun.ckpt*"))
    bad = blokrun(tmp_path, "run", str(wf), BLOKRUN_REQUIRE_ENCRYPTION="maybe")
    assert bad.returncode == 2 and "BLOKRUN_REQUIRE_ENCRYPTION" in bad.stderr
    ok = blokrun(
        tmp_path, "run", str(wf), BLOKRUN_REQUIRE_ENCRYPTION="1", BLOKRUN_ENCRYPTION_KEY=key(2)
    )
    assert ok.returncode == 0, ok.stderr


def test_a_run_encrypted_at_its_second_attempt_is_never_downgraded(tmp_path: Path) -> None:
    """Attempt 1 plain, attempt 2 encrypted (and failed again): a process without the key
    stops with exit 2 naming the key id, runs nothing and writes nothing."""
    wf = write_wf(tmp_path, linear(4))
    log = tmp_path / "ledger"
    first = blokrun(
        tmp_path,
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
    second = blokrun(
        tmp_path,
        "resume",
        "mix-1",
        WF_FAIL_AT="s4",
        WF_LEDGER=str(log),
        BLOKRUN_ENCRYPTION_KEY=key(3),
    )
    assert second.returncode == 1, second.stderr
    ran = ledger(log)
    files = {p: p.read_bytes() for p in (tmp_path / ".blokrun").rglob("*") if p.is_file()}
    plain = blokrun(tmp_path, "resume", "mix-1", WF_LEDGER=str(log))
    assert plain.returncode == 2, plain.stderr
    assert "k1" in plain.stderr
    assert ledger(log) == ran  # nothing ran
    after = {p: p.read_bytes() for p in (tmp_path / ".blokrun").rglob("*") if p.is_file()}
    assert {p: after.get(p) for p in files if "lease" not in p.name} == {
        p: b for p, b in files.items() if "lease" not in p.name
    }
    ok = blokrun(tmp_path, "resume", "mix-1", WF_LEDGER=str(log), BLOKRUN_ENCRYPTION_KEY=key(3))
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["total"] == 10
    assert ledger(log)[len(ran) :] == ["mix-1 s4"]
