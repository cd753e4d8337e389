"""``blokrun run | resume | inspect | validate``.

Exit codes: 0 done; 1 the run failed (the message says which step, why, and the exact
``blokrun resume`` command); 2 bad input, workflow or configuration (nothing ran);
3 the run is suspended waiting for input (stdout: its request id, step and token);
130 interrupted (SIGINT; SIGTERM gives 143).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence

    from blokrun.runner import Runner, RunResult

__all__ = ["main"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_SUSPENDED, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
#: Another process holds the run's lease (``RunBusy``) or took it over (``LeaseLost``): the
#: run is not failed, it is someone else's. EX_TEMPFAIL: try again later.
EXIT_BUSY = 75


class _Usage(Exception):
    """Bad command-line input: printed, exit 2."""


class _Interrupted(Exception):
    """SIGINT or SIGTERM cancelled a run; its checkpoints are intact."""

    def __init__(self, signum: int, request_id: str) -> None:
        super().__init__(signum)
        self.signum = signum
        self.request_id = request_id


async def _cancellable(request_id: str, body: Callable[[], Awaitable[int]]) -> int:
    """Run ``body``; SIGINT/SIGTERM cancel it (the run records itself as cancelled)."""
    import signal

    import anyio

    from blokrun.execution.groups import first_failure

    received: list[int] = []
    result = EXIT_INTERRUPTED
    try:
        async with anyio.create_task_group() as tg:

            async def watch() -> None:
                with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                    async for signum in signals:
                        received.append(signum)
                        tg.cancel_scope.cancel()
                        return

            tg.start_soon(watch)
            result = await body()
            tg.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        raise first_failure(group) from None
    if received:
        raise _Interrupted(received[0], request_id)
    return result


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="blokrun",
        description="Run JSON workflows that checkpoint after every step, and resume them.",
    )
    p.add_argument(
        "--log-format",
        choices=("text", "json"),
        default="text",
        help="log lines on stderr as text (default) or JSON objects",
    )
    p.add_argument(
        "--log-level",
        choices=("debug", "info", "warning", "error"),
        help="default: info on a terminal or with JSON logs, warning when piped",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run a workflow file from its first step")
    run.add_argument("file", help="the workflow JSON file")
    src = run.add_mutually_exclusive_group()
    src.add_argument("--input", metavar="JSON", help="the run's inputs as a JSON object")
    src.add_argument("--input-file", metavar="FILE", help="a file holding the inputs (JSON object)")
    run.add_argument("--request-id", metavar="ID", help="the run's id (default: a random one)")

    res = sub.add_parser(
        "resume", help="continue a failed or crashed run after its last checkpoint"
    )
    res.add_argument("request_id", metavar="REQUEST_ID")
    res.add_argument(
        "--workflow", metavar="FILE", help="use this workflow file instead of the stored definition"
    )
    res.add_argument(
        "--force",
        action="store_true",
        help="resume even if --workflow changed steps that already ran, or the run was "
        "dead-lettered",
    )
    res.add_argument(
        "--from-step",
        metavar="NAME",
        help="restart from the checkpoint before NAME ran (history is kept)",
    )
    res.add_argument(
        "--set",
        metavar="KEY=VALUE",
        action="append",
        default=[],
        help="edit vars first (VALUE is JSON, else text; KEY may be a.b.c)",
    )
    res.add_argument(
        "--input",
        metavar="JSON",
        dest="resume_input",
        help="the input a suspended (await-input) step waits for",
    )
    res.add_argument("--token", metavar="TOKEN", help="the token the suspension returned")
    res.add_argument(
        "--dry-run",
        action="store_true",
        help="print which steps would be skipped and which would run; run nothing",
    )

    ins = sub.add_parser("inspect", help="list a run's checkpoints")
    ins.add_argument("request_id", metavar="REQUEST_ID")
    ins.add_argument("--json", action="store_true", help="print JSON instead of a table")
    ins.add_argument(
        "--step", metavar="NAME", help="print the context (vars) at that step's checkpoint (or #N)"
    )

    from blokrun.cli.history import add_diff_parser

    add_diff_parser(sub)

    val = sub.add_parser("validate", help="check a workflow file without running it")
    val.add_argument("file")

    from blokrun.cli import gc, runs, workers

    runs.add_parser(sub)
    gc.add_parser(sub)
    workers.add_parsers(sub)
    return p


def _parse_sets(items: Sequence[str]) -> dict[str, Any]:
    import orjson

    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise _Usage(f"--set {item!r}: expected KEY=VALUE")
        try:
            out[key] = orjson.loads(raw)
        except orjson.JSONDecodeError:
            out[key] = raw
    return out


def _read_inputs(args: argparse.Namespace) -> dict[str, Any]:
    import orjson

    if args.input is not None:
        raw, where = args.input.encode(), "--input"
    elif args.input_file is not None:
        where = f"--input-file {args.input_file}"
        try:
            raw = Path(args.input_file).read_bytes()
        except OSError as exc:
            raise _Usage(f"{where}: cannot read: {exc.strerror or exc}") from None
    else:
        return {}
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise _Usage(
            f"{where}: invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}"
        ) from None
    if not isinstance(value, dict):
        raise _Usage(f"{where}: expected a JSON object, got {type(value).__name__}")
    return value


def _report(result: RunResult) -> int:
    """Final vars on stdout (exit 0), or the suspension and how to continue (exit 3)."""
    from blokrun.cli.output import dump_json

    if result.status != "suspended":
        dump_json(result.vars, sys.stdout)
        return EXIT_OK
    dump_json(
        {
            "request_id": result.request_id,
            "status": "suspended",
            "step": result.waiting_step,
            "prompt": result.prompt,
            "token": result.token,
        },
        sys.stdout,
    )
    sys.stderr.write(
        f"blokrun: run {result.request_id} is suspended at step {result.waiting_step!r}"
        f"{': ' + result.prompt if result.prompt else ''}. To continue:\n"
        f"  blokrun resume {result.request_id} --input '<JSON>' --token {result.token}\n"
    )
    return EXIT_SUSPENDED


def _fail(message: str, code: int) -> NoReturn:
    sys.stderr.write(f"blokrun: error: {message}\n")
    raise SystemExit(code)


def _runner(args: argparse.Namespace) -> Runner:
    from blokrun.cli.output import Progress
    from blokrun.runner import Runner

    hooks = (
        [Progress(sys.stderr)] if sys.stderr.isatty() and args.command in ("run", "resume") else []
    )
    return Runner.from_env(hooks=hooks, search_paths=[os.getcwd()])


async def _with_runner(
    args: argparse.Namespace, body: Callable[[Runner], Awaitable[int]], runner: Runner | None = None
) -> int:
    runner = runner or _runner(args)
    async with runner:
        return await body(runner)


async def _cmd_run(args: argparse.Namespace) -> int:
    from blokrun.errors import ConfigError
    from blokrun.persistence.records import validate_request_id

    # Everything that can be checked without a datasource is checked before connecting.
    inputs = _read_inputs(args)
    if args.request_id is not None:
        try:
            validate_request_id(args.request_id)
        except ValueError as exc:
            raise ConfigError(f"--request-id: {exc}") from None
    runner = _runner(args)
    wf = runner.load(args.file)
    from blokrun.persistence.records import new_request_id

    request_id = args.request_id or new_request_id()

    async def body(runner: Runner) -> int:
        async def go() -> int:
            result = await runner.run(wf, inputs, request_id=request_id)
            return _report(result)

        return await _cancellable(request_id, go)

    return await _with_runner(args, body, runner)


async def _cmd_resume(args: argparse.Namespace) -> int:
    from blokrun.cli.output import dump_json

    async def body(runner: Runner) -> int:
        async def go() -> int:
            return await _resume(runner)

        return await _cancellable(args.request_id, go)

    set_vars = _parse_sets(args.set)
    resume_input: Any = None
    if args.resume_input is not None:
        import orjson

        try:
            resume_input = orjson.loads(args.resume_input)
        except orjson.JSONDecodeError as exc:
            raise _Usage(
                f"--input: invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}"
            ) from None

    async def _resume(runner: Runner) -> int:
        if args.dry_run:
            plan = await runner.plan_resume(
                args.request_id, workflow=args.workflow, force=args.force, from_step=args.from_step
            )
            after = f"checkpoint #{plan.from_seq} ({plan.after})" if plan.after else "its start"
            sys.stdout.write(
                f"run {plan.request_id} ({plan.workflow}) would resume after {after} "
                f"as attempt {plan.attempt}\n"
                f"skip: {', '.join(plan.skip) or '(none)'}\n"
                f"run:  {', '.join(plan.run) or '(none)'}\n"
            )
            return EXIT_OK
        result = await runner.resume(
            args.request_id,
            workflow=args.workflow,
            force=args.force,
            from_step=args.from_step,
            set_vars=set_vars,
            input=resume_input,
            token=args.token,
        )
        if result.status == "suspended":
            return _report(result)
        if not result.steps_run:
            sys.stderr.write(f"run {result.request_id} had already completed; nothing to run\n")
        elif sys.stderr.isatty():
            sys.stderr.write(
                f"resumed {result.request_id}: skipped {len(result.steps_skipped)} completed "
                f"step(s), ran {len(result.steps_run)}\n"
            )
        dump_json(result.vars, sys.stdout)
        return EXIT_OK

    return await _with_runner(args, body)


async def _cmd_inspect(args: argparse.Namespace) -> int:
    import time

    from blokrun.cli.output import dump_json

    async def body(runner: Runner) -> int:
        if args.step is not None:
            from blokrun.cli.history import show_step

            return await show_step(args, runner)
        info = await runner.inspect(args.request_id)
        head = info.head
        if args.json:
            dump_json(
                {
                    "request_id": info.request_id,
                    "datasource": info.datasource,
                    "status": head.status if head else None,
                    "workflow": head.workflow if head else None,
                    "error": head.error if head else None,
                    "lease": (
                        {"owner": lease.owner, "token": lease.token, "until": lease.expires_at}
                        if (lease := info.lease) is not None and lease.live(time.time())
                        else None
                    ),
                    "checkpoints": [
                        {
                            "seq": c.seq,
                            "step": c.step,
                            "status": c.status,
                            "time": c.time,
                            "duration": c.duration,
                            "size": c.size,
                            "key": c.key,
                            "attempt": c.attempt,
                        }
                        for c in info.checkpoints
                    ],
                },
                sys.stdout,
            )
            return EXIT_OK
        out = sys.stdout
        if head is not None:
            out.write(
                f"run {info.request_id}  workflow {head.workflow} {head.version}  "
                f"status {head.status}  attempt {head.attempt}  on {info.datasource!r}\n"
            )
            if head.error:
                out.write(f"last error ({head.failed_step or 'run'}): {head.error}\n")
            lease = info.lease
            if lease is not None and lease.live(time.time()):
                left = lease.expires_at - time.time()
                out.write(
                    f"being run by {lease.owner} (lease token {lease.token}, "
                    f"renewed while it lives; {left:.0f}s left)\n"
                )
        else:
            out.write(
                f"run {info.request_id}  (no head record; found by scanning) "
                f"on {info.datasource!r}\n"
            )
        out.write(
            f"{'seq':>4}  {'step':<24} {'status':<10} {'attempt':>7}  {'time (UTC)':<20} "
            f"{'duration':>9} {'size':>9}\n"
        )
        for c in info.checkpoints:
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(c.time))
            out.write(
                f"{c.seq:>4}  {c.step:<24} {c.status:<10} {c.attempt:>7}  {when:<20} "
                f"{c.duration * 1000:>7.1f}ms {c.size:>8}B\n"
            )
        if not info.checkpoints:
            out.write("(no checkpoints yet)\n")
        return EXIT_OK

    return await _with_runner(args, body)


async def _cmd_diff(args: argparse.Namespace) -> int:
    from blokrun.cli.history import run_diff

    async def body(runner: Runner) -> int:
        return await run_diff(args, runner)

    return await _with_runner(args, body)


async def _cmd_runs(args: argparse.Namespace) -> int:
    from blokrun.cli import runs

    return await _with_runner(args, lambda runner: runs.run(args, runner))


async def _cmd_gc(args: argparse.Namespace) -> int:
    from blokrun.cli import gc

    return await _with_runner(args, lambda runner: gc.run(args, runner))


async def _cmd_submit(args: argparse.Namespace) -> int:
    from blokrun.cli import workers

    inputs = _read_inputs(args)
    return await _with_runner(args, lambda runner: workers.cmd_submit(args, runner, inputs))


async def _cmd_worker(args: argparse.Namespace) -> int:
    from blokrun.cli import workers

    return await _with_runner(args, lambda runner: workers.cmd_worker(args, runner))


async def _cmd_wait(args: argparse.Namespace) -> int:
    from blokrun.cli import workers

    return await _with_runner(args, lambda runner: workers.cmd_wait(args, runner))


def _cmd_validate(args: argparse.Namespace) -> int:
    from blokrun.runner import Runner

    runner = Runner.from_env(search_paths=[os.getcwd()])
    wf = runner.load(args.file)
    sys.stdout.write(
        f"{args.file}: ok: workflow {wf.name!r} version {wf.version}, {len(wf.steps)} steps, "
        f"checkpoints to {', '.join(wf.targets) or 'nowhere (persistence disabled)'}\n"
    )
    return EXIT_OK


def _run(args: argparse.Namespace) -> int:
    import anyio

    from blokrun.errors import (
        ArgumentError,
        BlokrunError,
        ConfigError,
        DatasourceError,
        LeaseLost,
        ResumeError,
        RunBusy,
        RunError,
        WorkflowError,
    )

    try:
        if args.command == "validate":
            return _cmd_validate(args)
        handler = {
            "run": _cmd_run,
            "resume": _cmd_resume,
            "inspect": _cmd_inspect,
            "diff": _cmd_diff,
            "runs": _cmd_runs,
            "gc": _cmd_gc,
            "submit": _cmd_submit,
            "worker": _cmd_worker,
            "wait": _cmd_wait,
        }[args.command]
        return anyio.run(handler, args)
    except _Usage as exc:
        _fail(str(exc), EXIT_USAGE)
    except _Interrupted as exc:
        import signal

        name = signal.Signals(exc.signum).name
        sys.stderr.write(
            f"blokrun: run {exc.request_id} cancelled by {name}; its checkpoints are intact. "
            f"To continue:\n  blokrun resume {exc.request_id}\n"
        )
        return 128 + exc.signum
    except (RunBusy, LeaseLost) as exc:
        _fail(str(exc), EXIT_BUSY)
    except ResumeError as exc:
        _fail(str(exc), EXIT_USAGE)
    except RunError as exc:
        sys.stderr.write(f"blokrun: run failed: {exc}\n")
        cause = exc.__cause__
        if cause is not None and os.environ.get("BLOKRUN_TRACEBACK"):
            import traceback

            traceback.print_exception(cause, file=sys.stderr)
        sys.stderr.write(
            f"blokrun: completed steps are checkpointed; to continue after fixing the cause:\n"
            f"  blokrun resume {exc.request_id}\n"
        )
        return EXIT_FAILED
    except (WorkflowError, ConfigError, ArgumentError, DatasourceError) as exc:
        _fail(str(exc), EXIT_USAGE)
    except BlokrunError as exc:
        _fail(str(exc), EXIT_FAILED)
    except KeyboardInterrupt:
        sys.stderr.write("blokrun: interrupted\n")
        return EXIT_INTERRUPTED


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """Entry point of the ``blokrun`` console script."""
    args = _parser().parse_args(argv)
    from blokrun.cli.output import configure_logging

    configure_logging(args.log_format, args.log_level, sys.stderr)
    raise SystemExit(_run(args))
