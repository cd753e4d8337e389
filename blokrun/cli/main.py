"""The ``blokrun`` command: its parser, the dispatch to a command, the exit code of each error.

Every command is a module of this package named after it, with ``add_parser(subparsers)``
(adds the command and its arguments, and sets ``handler``) and ``handle(args) -> int`` (a
coroutine function, run in an event loop, except ``validate``'s, which needs none). This
module is the one place where exceptions become exit codes (:mod:`blokrun.cli.common`):
0 done; 1 the run failed (the message says which step, why, and the exact ``blokrun resume``
command); 2 bad input, workflow or configuration (nothing ran); 3 the run is suspended
waiting for input (stdout: its request id, step and token); 75 another process holds the
run; 130 interrupted (SIGINT; SIGTERM gives 143).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import TYPE_CHECKING, Any, NoReturn, Protocol

from blokrun.cli.common import EXIT_BUSY, EXIT_FAILED, EXIT_INTERRUPTED, EXIT_USAGE, Usage

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["build_parser", "main"]


class _Command(Protocol):
    """What a command module offers (see the module docstring)."""

    def add_parser(self, subparsers: Any) -> argparse.ArgumentParser: ...


def build_parser() -> argparse.ArgumentParser:
    """The ``blokrun`` parser: the global options, then every command's."""
    p = argparse.ArgumentParser(
        prog="blokrun",
        description="Run JSON workflows that checkpoint after every step, and resume them.",
        epilog="Datasources come from DATASOURCE_<NAME>_TYPE, _URL, _PATH, ... variables; "
        "with none, runs are kept as files under $BLOKRUN_HOME/checkpoints (./.blokrun). "
        "See README.md and docs/.",
    )
    _logging_options(p, defaults=True)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    from blokrun.cli import (
        diff,
        doctor,
        export,
        fork,
        gc,
        inspect,
        repair,
        resume,
        run,
        runs,
        schedules,
        submit,
        ui,
        validate,
        wait,
        worker,
    )

    commands: tuple[_Command, ...] = (
        run,
        resume,
        fork,
        inspect,
        diff,
        export,
        validate,
        runs,
        repair,
        gc,
        submit,
        worker,
        schedules,
        wait,
        doctor,
        ui,
    )
    for command in commands:
        # the logging options are taken after the command too: blokrun run --log-level debug
        _logging_options(command.add_parser(sub), defaults=False)
    return p


def _logging_options(parser: argparse.ArgumentParser, *, defaults: bool) -> None:
    """``--log-format`` and ``--log-level``; on a command's parser they only override."""
    parser.add_argument(
        "--log-format",
        choices=("text", "json"),
        default="text" if defaults else argparse.SUPPRESS,
        help="log lines on stderr as text (default) or JSON objects",
    )
    parser.add_argument(
        "--log-level",
        choices=("debug", "info", "warning", "error"),
        default=None if defaults else argparse.SUPPRESS,
        help="default: info on a terminal or with JSON logs, warning when piped",
    )


def _say(text: str, **fields: object) -> None:
    """A closing line on stderr: ``blokrun: <text>``, or with ``--log-format json`` one JSON
    object (level error, the text as message, ``fields`` beside it) like every other line."""
    from blokrun.cli.output import JsonFormatter

    root = logging.getLogger("blokrun")
    if any(isinstance(h.formatter, JsonFormatter) for h in root.handlers):
        record = logging.LogRecord("blokrun.cli", logging.ERROR, "", 0, text, None, None)
        record.__dict__.update(fields)
        sys.stderr.write(JsonFormatter().format(record) + "\n")
        return
    sys.stderr.write(f"blokrun: {text}\n")


def _fail(message: str, code: int) -> NoReturn:
    _say(f"error: {message}", exit_code=code)
    raise SystemExit(code)


def _dispatch(args: argparse.Namespace) -> int:
    """Run the command's handler; every error it raises as its message and exit code."""
    from inspect import iscoroutinefunction

    import anyio

    from blokrun.cli.interrupt import Interrupted
    from blokrun.errors import BlokrunError

    handler = args.handler
    try:
        if iscoroutinefunction(handler):
            code: int = anyio.run(handler, args)
        else:  # validate: no event loop needed
            code = handler(args)
        return code
    except Usage as exc:
        _fail(str(exc), EXIT_USAGE)
    except Interrupted as exc:
        import signal

        name = signal.Signals(exc.signum).name
        _say(
            f"run {exc.request_id} cancelled by {name}; its checkpoints are intact. "
            f"To continue:\n  blokrun resume {exc.request_id}",
            request_id=exc.request_id,
            exit_code=128 + exc.signum,
        )
        return 128 + exc.signum
    except BlokrunError as exc:
        return _report(exc)
    except KeyboardInterrupt:
        _say("interrupted", exit_code=EXIT_INTERRUPTED)
        return EXIT_INTERRUPTED


def _report(exc: BaseException) -> int:
    """Print a blokrun error the way its kind asks; its exit code."""
    from blokrun.errors import (
        ArgumentError,
        ConfigError,
        DatasourceError,
        LeaseLost,
        ResumeError,
        RunBusy,
        RunError,
        WorkflowError,
    )

    if isinstance(exc, RunBusy | LeaseLost):
        _fail(str(exc), EXIT_BUSY)
    if isinstance(exc, ResumeError):
        _fail(str(exc), EXIT_USAGE)
    if isinstance(exc, RunError):
        _say(f"run failed: {exc}", request_id=exc.request_id, step=exc.step, exit_code=1)
        cause = exc.__cause__
        if cause is not None and os.environ.get("BLOKRUN_TRACEBACK"):
            import traceback

            traceback.print_exception(cause, file=sys.stderr)
        stored = (
            "completed steps are checkpointed"
            if exc.checkpointed is not False
            else "no step of it had completed, nothing is lost"
        )
        _say(
            f"{stored}; to continue after fixing the cause:\n  blokrun resume {exc.request_id}",
            request_id=exc.request_id,
            resume=f"blokrun resume {exc.request_id}",
        )
        return EXIT_FAILED
    if isinstance(exc, WorkflowError | ConfigError | ArgumentError | DatasourceError):
        _fail(str(exc), EXIT_USAGE)
    _fail(str(exc), EXIT_FAILED)


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """Entry point of the ``blokrun`` console script."""
    args = build_parser().parse_args(argv)
    from blokrun.cli.output import configure_logging

    configure_logging(args.log_format, args.log_level, sys.stderr)
    raise SystemExit(_dispatch(args))
