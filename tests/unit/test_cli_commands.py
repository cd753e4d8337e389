"""The ``blokrun`` command's parts: every command is a module with ``add_parser`` and
``handle``, every ``--help`` works and lists the command's arguments, and ``validate``
starts quickly (no event loop, no driver imported)."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from blokrun.cli.main import build_parser, main

REPO = Path(__file__).resolve().parents[2]

#: Every command, in the order ``blokrun --help`` lists them, and its arguments.
ARGUMENTS: dict[str, list[str]] = {
    "run": ["file", "--input", "--input-file", "--request-id", "--tag", "--restart"],
    "resume": [
        "REQUEST_ID",
        "--workflow",
        "--force",
        "--from-step",
        "--set",
        "--input",
        "--token",
        "--dry-run",
    ],
    "fork": ["REQUEST_ID", "--from-step", "--set", "--as", "--workflow", "--force"],
    "inspect": ["REQUEST_ID", "--json", "--step"],
    "diff": ["REQUEST_ID", "A", "B", "--json"],
    "export": ["REQUEST_ID", "--format", "--step"],
    "validate": ["file"],
    "runs": [
        "--status",
        "--workflow",
        "--search",
        "--tag",
        "--since",
        "--limit",
        "--cursor",
        "--json",
    ],
    "repair": ["REQUEST_ID", "--json"],
    "gc": ["--completed-older-than", "--failed-older-than", "--dry-run", "--json"],
    "submit": ["file", "--input", "--input-file", "--request-id", "--tag", "--priority"],
    "worker": [
        "--concurrency",
        "--workflow-limit",
        "--grace",
        "--max-runs",
        "--schedule",
        "--metrics-port",
        "--metrics-host",
    ],
    "schedules": ["--json"],
    "wait": ["REQUEST_ID", "--timeout"],
    "doctor": ["--json", "--timeout"],
    "ui": ["--host", "--port", "--read-only", "--metrics-port", "--metrics-host"],
}


def subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    raise AssertionError("no subcommands")


def test_every_command_is_a_module_named_after_it() -> None:
    commands = subparsers(build_parser())
    assert list(commands) == list(ARGUMENTS)  # also the order `blokrun --help` lists them in
    for name, parser in commands.items():
        module = importlib.import_module(f"blokrun.cli.{name}")
        assert callable(module.add_parser)
        assert parser.get_default("handler") is module.handle


@pytest.mark.parametrize("command", list(ARGUMENTS))
def test_every_subcommand_help_works_and_lists_its_arguments(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    parser = subparsers(build_parser())[command]
    declared = [
        action.option_strings[-1] if action.option_strings else (action.metavar or action.dest)
        for action in parser._actions
        if not isinstance(action, argparse._HelpAction)
    ]
    # a new argument needs its line above; every command also takes the logging options
    assert declared == [*ARGUMENTS[command], "--log-format", "--log-level"]
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert out.startswith(f"usage: blokrun {command} ")
    usage, _, described = out.partition("\n\n")
    for argument in ARGUMENTS[command]:
        assert argument in usage, (command, argument)
        assert f"  {argument}" in described, (command, argument)  # with its help line


def test_help_through_python_dash_m_lists_every_command() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "blokrun", "--help"],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: blokrun ")
    for command in ARGUMENTS:
        assert f"\n    {command} " in proc.stdout, command
    assert "--log-format" in proc.stdout and "--log-level" in proc.stdout


def test_validate_starts_no_event_loop_and_imports_no_driver(tmp_path: Path) -> None:
    """``blokrun validate`` (and so the start of every command) stays quick."""
    wf = tmp_path / "wf.json"
    wf.write_text(json.dumps({"name": "w", "steps": [{"name": "a", "node": "set"}]}))
    code = (
        "import sys\n"
        "from blokrun.cli.main import main\n"
        "try:\n"
        f"    main(['validate', {str(wf)!r}])\n"
        "except SystemExit as exc:\n"
        "    heavy = ('asyncio', 'redis', 'asyncpg', 'pymongo', 'aioboto3', 'cryptography')\n"
        "    print(exc.code, sorted(m for m in heavy if m in sys.modules))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATASOURCE_", "BLOKRUN_"))}
    env["PYTHONPATH"] = str(REPO)
    env["BLOKRUN_HOME"] = str(tmp_path / "home")
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1] == "0 []", proc.stdout


def test_logging_options_are_taken_before_and_after_the_command() -> None:
    from blokrun.cli.main import build_parser

    parser = build_parser()
    after = parser.parse_args(
        ["validate", "wf.json", "--log-level", "debug", "--log-format", "json"]
    )
    assert (after.log_level, after.log_format) == ("debug", "json")
    before = parser.parse_args(["--log-level", "error", "validate", "wf.json"])
    assert (before.log_level, before.log_format) == ("error", "text")
    neither = parser.parse_args(["runs"])
    assert (neither.log_level, neither.log_format) == (None, "text")
    assert "DATASOURCE_" in parser.format_help()


def test_every_argument_of_every_command_has_a_help_text() -> None:
    missing = [
        (name, action.option_strings or action.dest)
        for name, parser in subparsers(build_parser()).items()
        for action in parser._actions
        if not isinstance(action, argparse._HelpAction) and not action.help
    ]
    assert missing == []
