"""The ``blokrun`` command in real subprocesses: exit codes, output, and SIGKILL then resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.processes import reap, reaped

REPO = Path(__file__).resolve().parents[2]
NODE = "tests.integration.wfnodes"


def cli_env(home: Path, **extra: str) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("DATASOURCE_", "WF_", "BLOKRUN_"))
    }
    env["BLOKRUN_HOME"] = str(home)
    env["PYTHONPATH"] = str(REPO)
    env.update(extra)
    return env


def blokrun(home: Path, *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "blokrun", *args],
        cwd=REPO,
        env=cli_env(home, **extra),
        capture_output=True,
        text=True,
        timeout=60,
    )


def write_wf(tmp_path: Path, doc: dict[str, Any], name: str = "wf.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(doc))
    return path


def linear(n: int, node: str = "add") -> dict[str, Any]:
    return {
        "name": "cli-linear",
        "version": "1",
        "steps": [
            {"name": f"s{i}", "node": f"{NODE}:{node}", "inputs": {"n": i}} for i in range(1, n + 1)
        ],
    }


def test_run_prints_the_final_vars_as_json_and_exits_0(tmp_path: Path) -> None:
    wf = write_wf(tmp_path, linear(3))
    proc = blokrun(tmp_path, "run", str(wf), "--input", '{"total": 10}', "--request-id", "cli-1")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["total"] == 16 and out["s3"] == {"seen_total": 16}
    assert proc.stderr == ""  # piped: quiet


def test_input_file_is_read(tmp_path: Path) -> None:
    wf = write_wf(tmp_path, linear(1))
    (tmp_path / "in.json").write_text('{"total": 41}')
    proc = blokrun(tmp_path, "run", str(wf), "--input-file", str(tmp_path / "in.json"))
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["total"] == 42


def test_a_failed_step_exits_1_with_the_step_the_error_and_the_resume_command(
    tmp_path: Path,
) -> None:
    wf = write_wf(tmp_path, linear(3))
    proc = blokrun(tmp_path, "run", str(wf), "--request-id", "cli-fail", WF_FAIL_AT="s2")
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert "step 's2'" in proc.stderr
    assert "RuntimeError: s2 failed on purpose" in proc.stderr
    assert "blokrun resume cli-fail" in proc.stderr
    resumed = blokrun(tmp_path, "resume", "cli-fail")
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout)["total"] == 6


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["run", "{wf}", "--input", "{not json"], "--input: invalid JSON at line 1, column 2"),
        (["run", "{wf}", "--input", "[1, 2]"], "--input: expected a JSON object, got list"),
        (["run", "{wf}", "--input-file", "{tmp}/missing.json"], "missing.json: cannot read"),
        (["run", "{tmp}/nope.json"], "nope.json: file not found"),
        (["run", "{bad}"], "bad.json: $.steps[0].colour: unknown field 'colour'"),
        (
            ["run", "{wf}", "--request-id", "../../etc/passwd"],
            "invalid request id '../../etc/passwd'",
        ),
        (
            ["resume", "no-such-run"],
            "run no-such-run: no checkpoint or run record found on 'default'",
        ),
        (["validate", "{bad}"], "unknown field 'colour'; expected one of: name, node"),
        (["run", "{wf}", "--input", "{}", "--input-file", "x"], "not allowed with argument"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
    ],
)
def test_bad_input_exits_2_with_a_message_naming_what_is_wrong(
    tmp_path: Path, args: list[str], expected: str
) -> None:
    wf = write_wf(tmp_path, linear(1))
    bad = write_wf(
        tmp_path, {"name": "b", "steps": [{"name": "a", "node": "set", "colour": 1}]}, "bad.json"
    )
    subs = {"{wf}": str(wf), "{bad}": str(bad), "{tmp}": str(tmp_path)}
    argv = []
    for arg in args:
        for k, v in subs.items():
            arg = arg.replace(k, v)  # noqa: PLW2901
        argv.append(arg)
    proc = blokrun(tmp_path, *argv)
    assert proc.returncode == 2, proc.stderr
    assert expected in proc.stderr
    assert "Traceback" not in proc.stderr
    stored = tmp_path / "checkpoints"
    # nothing written (but the folder's run index, created empty when the store opens)
    assert not stored.exists() or not [p for p in stored.iterdir() if p.name[0] != "."]


def test_bad_datasource_config_exits_2_naming_the_variable_and_masking_the_password(
    tmp_path: Path,
) -> None:
    wf = write_wf(tmp_path, linear(1))
    proc = blokrun(
        tmp_path,
        "run",
        str(wf),
        DATASOURCE_CACHE_TYPE="redis",
        DATASOURCE_CACHE_URL="http://user:hunter2@localhost:6379",
    )
    assert proc.returncode == 2
    assert "DATASOURCE_CACHE_URL" in proc.stderr and "redis://" in proc.stderr
    assert "hunter2" not in proc.stderr
    proc = blokrun(tmp_path, "run", str(wf), DATASOURCE_CACHE_TYPE="cassandra")
    assert proc.returncode == 2
    assert "DATASOURCE_CACHE_TYPE='cassandra': unknown datasource type" in proc.stderr


def test_validate_reports_ok(tmp_path: Path) -> None:
    wf = write_wf(tmp_path, linear(2))
    proc = blokrun(tmp_path, "validate", str(wf))
    assert proc.returncode == 0
    assert "ok: workflow 'cli-linear' version 1, 2 steps, checkpoints to default" in proc.stdout


def test_inspect_lists_step_time_status_and_size(tmp_path: Path) -> None:
    wf = write_wf(tmp_path, linear(3))
    assert blokrun(tmp_path, "run", str(wf), "--request-id", "ins", WF_FAIL_AT="s3").returncode == 1
    proc = blokrun(tmp_path, "inspect", "ins")
    assert proc.returncode == 0, proc.stderr
    assert "status failed" in proc.stdout and "RuntimeError: s3 failed on purpose" in proc.stdout
    rows = [
        line.split() for line in proc.stdout.splitlines() if line.strip().startswith(("1 ", "2 "))
    ]
    assert [r[1] for r in rows] == ["s1", "s2"]
    as_json = json.loads(blokrun(tmp_path, "inspect", "ins", "--json").stdout)
    assert [c["step"] for c in as_json["checkpoints"]] == ["s1", "s2"]
    assert all(c["size"] > 0 for c in as_json["checkpoints"])
    assert as_json["status"] == "failed"


def test_json_logs_are_one_object_per_line(tmp_path: Path) -> None:
    wf = write_wf(
        tmp_path,
        {
            "name": "logs",
            "steps": [
                {"name": "say", "node": "log", "inputs": {"message": "hello ${ctx.request.id}"}}
            ],
        },
    )
    proc = blokrun(tmp_path, "--log-format", "json", "run", str(wf), "--request-id", "lg-1")
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(line) for line in proc.stderr.splitlines()]
    said = [r for r in records if r["message"] == "hello lg-1"]
    assert (
        said
        and said[0]["step"] == "say"
        and said[0]["request_id"] == "lg-1"
        and said[0]["level"] == "info"
    )


def test_sigkill_in_the_middle_of_a_step_then_resume_completes_the_run(tmp_path: Path) -> None:
    """Kill -9 during step 3 of 4: steps 1-2 ran once, step 3 is re-run, step 4 once."""
    doc = linear(4)
    doc["steps"][2]["node"] = f"{NODE}:hang_once"
    wf = write_wf(tmp_path, doc)
    ledger = tmp_path / "ledger.txt"
    marker = tmp_path / "hanging"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "blokrun",
            "run",
            str(wf),
            "--request-id",
            "kill-1",
            "--input",
            '{"total": 0}',
        ],
        cwd=REPO,
        env=cli_env(tmp_path, WF_LEDGER=str(ledger), WF_HANG=str(marker)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 30
        while not marker.exists():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "step 3 never started"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
    assert proc.returncode == -signal.SIGKILL

    # One status everywhere: the killed run is interrupted for inspect, its JSON, and runs.
    shown = blokrun(tmp_path, "inspect", "kill-1")
    assert shown.returncode == 0, shown.stderr
    assert "status interrupted" in shown.stdout and "being run by" not in shown.stdout
    as_json = json.loads(blokrun(tmp_path, "inspect", "kill-1", "--json").stdout)
    assert as_json["status"] == "interrupted" and as_json["lease"] is None
    listed = json.loads(blokrun(tmp_path, "runs", "--json").stdout)["runs"]
    assert [r["status"] for r in listed if r["request_id"] == "kill-1"] == ["interrupted"]

    resumed = blokrun(tmp_path, "resume", "kill-1", WF_LEDGER=str(ledger))
    assert resumed.returncode == 0, resumed.stderr
    final = json.loads(resumed.stdout)
    assert final["total"] == 1 + 2 + 100 + 4
    assert final["s3"] == "survived"
    lines = ledger.read_text().splitlines()
    assert lines.count("kill-1 s1") == 1
    assert lines.count("kill-1 s2") == 1
    assert lines.count("kill-1 s3 start") == 2  # the step in flight runs again (at-least-once)
    assert lines.count("kill-1 s3 end") == 1
    assert lines.count("kill-1 s4") == 1


def test_resume_with_a_changed_workflow_is_refused_unless_forced(tmp_path: Path) -> None:
    wf = write_wf(tmp_path, linear(3))
    assert blokrun(tmp_path, "run", str(wf), "--request-id", "chg", WF_FAIL_AT="s3").returncode == 1
    changed = linear(3)
    changed["steps"][0]["inputs"] = {"n": 500}
    other = write_wf(tmp_path, changed, "changed.json")
    refused = blokrun(tmp_path, "resume", "chg", "--workflow", str(other))
    assert refused.returncode == 2
    assert "changed steps that already ran: 's1' (changed)" in refused.stderr
    assert "--force" in refused.stderr
    forced = blokrun(tmp_path, "resume", "chg", "--workflow", str(other), "--force")
    assert forced.returncode == 0, forced.stderr
    assert json.loads(forced.stdout)["total"] == 6  # s1's checkpointed result is kept


def test_an_unreachable_server_fails_at_start_up_naming_it_with_the_password_masked(
    tmp_path: Path,
) -> None:
    import socket

    with socket.socket() as s:  # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    wf = write_wf(tmp_path, linear(1))
    started = time.monotonic()
    proc = blokrun(
        tmp_path,
        "run",
        str(wf),
        DATASOURCE_CACHE_TYPE="redis",
        DATASOURCE_CACHE_URL=f"redis://:hunter2@127.0.0.1:{port}/0",
        DATASOURCE_CACHE_TIMEOUT="2",
        WF_LEDGER=str(tmp_path / "ledger"),
    )
    assert time.monotonic() - started < 15
    assert proc.returncode == 2, proc.stderr
    assert "cannot start" in proc.stderr and "'cache'" in proc.stderr
    assert f"127.0.0.1:{port}" in proc.stderr
    assert "configured datasources: cache, default" in proc.stderr
    assert "hunter2" not in proc.stderr
    assert not (tmp_path / "ledger").exists()  # no step ran


def test_on_a_terminal_stderr_shows_live_progress(tmp_path: Path) -> None:
    import pty

    wf = write_wf(tmp_path, linear(3))
    leader, follower = pty.openpty()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "blokrun", "run", str(wf), "--request-id", "tty-1"],
            cwd=REPO,
            env=cli_env(tmp_path),
            stdout=subprocess.PIPE,
            stderr=follower,
            timeout=60,
        )
        os.close(follower)
        follower = -1
        chunks = []
        while True:
            try:
                data = os.read(leader, 65536)
            except OSError:
                break
            if not data:
                break
            chunks.append(data)
    finally:
        if follower != -1:
            os.close(follower)
        os.close(leader)
    shown = b"".join(chunks).decode()
    assert proc.returncode == 0
    assert "run tty-1: cli-linear (3 steps)" in shown
    assert "[1/3] s1 ok" in shown and "[3/3] s3 ok" in shown
    assert json.loads(proc.stdout)["total"] == 6


def _start_and_wait(
    tmp_path: Path, wf: Path, rid: str, ledger: Path, marker: Path
) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "blokrun",
            "run",
            str(wf),
            "--request-id",
            rid,
            "--input",
            '{"total": 0}',
        ],
        cwd=REPO,
        env=cli_env(tmp_path, WF_LEDGER=str(ledger), WF_HANG=str(marker)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 30
        while not marker.exists():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the hanging step never started"
            time.sleep(0.02)
    except BaseException:
        reap(proc)
        raise
    return proc


def test_sigkill_in_the_middle_of_a_parallel_level_then_resume(tmp_path: Path) -> None:
    """start -> (a, hang, c) -> join: killed while 'hang' runs, after a and c finished beside it."""
    doc = {
        "name": "par-kill",
        "steps": [
            {"name": "start", "node": f"{NODE}:add", "inputs": {"n": 1}},
            {"name": "a", "node": f"{NODE}:add", "inputs": {"n": 10}, "depends_on": ["start"]},
            {"name": "hang", "node": f"{NODE}:hang_once", "depends_on": ["start"]},
            {"name": "c", "node": f"{NODE}:add", "inputs": {"n": 1000}, "depends_on": ["start"]},
            {
                "name": "join",
                "node": f"{NODE}:add",
                "inputs": {"n": 5},
                "depends_on": ["a", "hang", "c"],
            },
        ],
    }
    wf = write_wf(tmp_path, doc)
    ledger, marker = tmp_path / "ledger.txt", tmp_path / "hanging"
    proc = _start_and_wait(tmp_path, wf, "pk-1", ledger, marker)
    with reaped(proc):
        deadline = time.monotonic() + 30
        while not all((tmp_path / "checkpoints" / f"pk-1-{s}").exists() for s in ("a", "c")):
            assert time.monotonic() < deadline, "the sibling branches never checkpointed"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        proc.communicate()
    resumed = blokrun(tmp_path, "resume", "pk-1", WF_LEDGER=str(ledger))
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout)["total"] == 1 + 10 + 1000 + 100 + 5
    lines = ledger.read_text().splitlines()
    for step in ("start", "a", "c", "join"):
        assert lines.count(f"pk-1 {step}") == 1, (step, lines)
    assert lines.count("pk-1 hang start") == 2 and lines.count("pk-1 hang end") == 1


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_sigint_or_sigterm_cancels_the_run_which_can_then_be_resumed(
    tmp_path: Path, sig: signal.Signals
) -> None:
    doc = linear(4)
    doc["steps"][2]["node"] = f"{NODE}:hang_async"
    wf = write_wf(tmp_path, doc)
    ledger, marker = tmp_path / "ledger.txt", tmp_path / "hanging"
    proc = _start_and_wait(tmp_path, wf, "sig-1", ledger, marker)
    with reaped(proc):
        proc.send_signal(sig)
        _out, err = proc.communicate(timeout=20)
    assert proc.returncode == 128 + sig, err
    assert f"cancelled by {sig.name}" in err.decode() and "blokrun resume sig-1" in err.decode()
    status = json.loads(blokrun(tmp_path, "inspect", "sig-1", "--json").stdout)
    assert status["status"] == "cancelled"
    assert [c["step"] for c in status["checkpoints"]] == ["s1", "s2"]
    resumed = blokrun(tmp_path, "resume", "sig-1", WF_LEDGER=str(ledger))
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout)["total"] == 1 + 2 + 100 + 4


@pytest.mark.parametrize("parallel", [False, True])
def test_blokrun_traceback_prints_the_nodes_traceback(tmp_path: Path, parallel: bool) -> None:
    doc = linear(2)
    if parallel:  # a parallel level: the failure comes out of a task group
        doc["steps"].append({"name": "s3", "node": f"{NODE}:add", "depends_on": ["s1"]})
    wf = write_wf(tmp_path, doc)
    shown = blokrun(tmp_path, "run", str(wf), WF_FAIL_AT="s2", BLOKRUN_TRACEBACK="1")
    assert shown.returncode == 1
    assert "Traceback (most recent call last)" in shown.stderr
    assert "wfnodes.py" in shown.stderr and "RuntimeError: s2 failed on purpose" in shown.stderr
    quiet = blokrun(tmp_path, "run", str(wf), WF_FAIL_AT="s2")
    assert quiet.returncode == 1 and "Traceback" not in quiet.stderr


def test_wait_on_an_unknown_id_is_exit_2_at_once(tmp_path: Path) -> None:
    started = time.monotonic()
    proc = blokrun(tmp_path, "wait", "no-such-run", "--timeout", "30")
    assert proc.returncode == 2, proc.stderr
    assert "no such run" in proc.stderr and "no-such-run" in proc.stderr
    assert time.monotonic() - started < 10


def test_a_run_resumes_from_any_folder(tmp_path: Path) -> None:
    """Run from one folder with a relative path, resume from another (issue 14.1): the
    folders its nodes came from are stored with the run."""
    project = tmp_path / "proj" / "mywf"
    project.mkdir(parents=True)
    (project / "cwd_steps.py").write_text(
        "import os\n"
        "async def step(ctx, inputs):\n"
        "    if os.environ.get('WF_FAIL_AT') == ctx.step:\n"
        "        raise RuntimeError('boom')\n"
        "    return ctx.step\n"
    )
    doc = {"name": "r", "steps": [{"name": s, "node": "cwd_steps:step"} for s in ("a", "b")]}
    (project / "report.json").write_text(json.dumps(doc))
    env = cli_env(tmp_path / "home")
    env["PYTHONPATH"] = str(REPO)

    def run_in(folder: Path, *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "blokrun", *args],
            cwd=folder,
            env=env | extra,
            capture_output=True,
            text=True,
            timeout=60,
        )

    failed = run_in(
        tmp_path, "run", "proj/mywf/report.json", "--request-id", "cwd-1", WF_FAIL_AT="b"
    )
    assert failed.returncode == 1, failed.stderr
    resumed = run_in(tmp_path / "proj", "resume", "cwd-1")
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout) == {"a": "a", "b": "b"}
    (project / "cwd_steps.py").rename(project / "moved.py")  # now it cannot be found
    gone = run_in(tmp_path, "run", "proj/mywf/report.json", "--request-id", "cwd-2")
    assert gone.returncode == 2
    assert str(project) in gone.stderr and "PYTHONPATH" in gone.stderr


def test_validate_reports_every_independent_problem_at_once(tmp_path: Path) -> None:
    doc = {
        "name": "many",
        "persistence": {"keyPattern": "${stepName}"},  # no request id in it
        "steps": [
            {"name": "ok", "node": "echo"},
            {"name": "bad name!", "node": "echo"},
            {"name": "c", "node": "no-such-builtin"},
            {"name": "d", "node": "await-input", "inputs": {"prompt": "x", "schema": 3}},
        ],
    }
    wf = write_wf(tmp_path, doc)
    proc = blokrun(tmp_path, "validate", str(wf))
    assert proc.returncode == 2
    for where in (
        "$.persistence.keyPattern",
        "$.steps[1].name",
        "$.steps[2].node",
        "$.steps[3].inputs.schema",
    ):
        assert where in proc.stderr, (where, proc.stderr)
    assert "3 more problem(s)" in proc.stderr


def test_with_json_logs_every_line_on_stderr_is_json(tmp_path: Path) -> None:
    wf = write_wf(tmp_path, linear(2))
    failed = blokrun(
        tmp_path, "run", str(wf), "--request-id", "js-1", "--log-format", "json", WF_FAIL_AT="s2"
    )
    assert failed.returncode == 1
    lines = [json.loads(line) for line in failed.stderr.splitlines() if line.strip()]
    assert lines and all(isinstance(doc, dict) and "message" in doc for doc in lines)
    assert any(doc.get("resume") == "blokrun resume js-1" for doc in lines)
    bad = blokrun(tmp_path, "--log-format", "json", "resume", "no-such-run")
    assert bad.returncode == 2
    (doc,) = [json.loads(line) for line in bad.stderr.splitlines() if line.strip()]
    assert doc["level"] == "error" and "no-such-run" in doc["message"] and doc["exit_code"] == 2


def test_a_failure_at_the_first_step_promises_no_checkpoint(tmp_path: Path) -> None:
    wf = write_wf(tmp_path, linear(2))
    first = blokrun(tmp_path, "run", str(wf), "--request-id", "f1-1", WF_FAIL_AT="s1")
    assert first.returncode == 1
    assert "completed steps are checkpointed" not in first.stderr
    assert "no step of it had completed" in first.stderr and "blokrun resume f1-1" in first.stderr
    later = blokrun(tmp_path, "run", str(wf), "--request-id", "f1-2", WF_FAIL_AT="s2")
    assert "completed steps are checkpointed" in later.stderr
    resumed = blokrun(tmp_path, "resume", "f1-1")  # the hint works: it runs from the start
    assert resumed.returncode == 0, resumed.stderr


def test_a_from_step_edit_shows_as_an_edit_in_the_history(tmp_path: Path) -> None:
    wf = write_wf(tmp_path, linear(3))
    assert (
        blokrun(
            tmp_path, "run", str(wf), "--request-id", "ed-1", "--input", '{"total": 0}'
        ).returncode
        == 0
    )
    edited = blokrun(tmp_path, "resume", "ed-1", "--from-step", "s3", "--set", "total=100")
    assert edited.returncode == 0, edited.stderr
    rows = json.loads(blokrun(tmp_path, "inspect", "ed-1", "--json").stdout)["checkpoints"]
    assert [(r["step"], r["status"]) for r in rows] == [
        ("s1", "completed"),
        ("s2", "completed"),
        ("s3", "completed"),
        ("s2", "edited"),  # the vars edited before s3 ran again: s2 did not run again
        ("s3", "completed"),
    ]
