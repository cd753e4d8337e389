"""``blokrun resume REQUEST_ID [--workflow FILE] [--force] [--from-step NAME] [--set K=V]...``.

Continues a failed, crashed, cancelled or suspended run after its last checkpoint (or, with
``--from-step``, before a given step) and prints its final vars; ``--dry-run`` prints which
steps would be skipped and which would run, and runs nothing.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

from blokrun.cli.common import EXIT_OK, with_runner
from blokrun.cli.inputs import add_set_argument

if TYPE_CHECKING:
    import argparse

    from blokrun.runner import Runner

__all__ = ["add_parser", "handle"]


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``resume`` to the ``blokrun`` subcommands (``subparsers``: ``add_subparsers()``)."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "resume", help="continue a failed or crashed run after its last checkpoint"
    )
    p.add_argument("request_id", metavar="REQUEST_ID", help="the run (its request id)")
    p.add_argument(
        "--workflow", metavar="FILE", help="use this workflow file instead of the stored definition"
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="resume even if --workflow changed steps that already ran, or the run was "
        "dead-lettered",
    )
    p.add_argument(
        "--from-step",
        metavar="NAME",
        help="restart from the checkpoint before NAME ran (history is kept)",
    )
    add_set_argument(p)
    p.add_argument(
        "--input",
        metavar="JSON",
        dest="resume_input",
        help="the input a suspended (await-input) step waits for",
    )
    p.add_argument("--token", metavar="TOKEN", help="the token the suspension returned")
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="print which steps would be skipped and which would run; run nothing",
    )
    p.set_defaults(handler=handle)
    return p


async def handle(args: argparse.Namespace) -> int:
    """Resume (or plan the resume of) the run ``args`` name; the exit code."""
    from blokrun.cli.inputs import parse_json, parse_sets
    from blokrun.cli.interrupt import cancellable

    set_vars = parse_sets(args.set)
    resume_input: Any = None
    if args.resume_input is not None:
        resume_input = parse_json(args.resume_input, "--input")

    async def body(runner: Runner) -> int:
        async def go() -> int:
            if args.dry_run:
                return await _plan(args, runner)
            return await _resume(args, runner, set_vars, resume_input)

        return await cancellable(args.request_id, go)

    return await with_runner(body, progress=True)


async def _plan(args: argparse.Namespace, runner: Runner) -> int:
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


async def _resume(
    args: argparse.Namespace, runner: Runner, set_vars: dict[str, Any], resume_input: Any
) -> int:
    from blokrun.cli.output import dump_json, report

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
        return report(result)
    if not result.steps_run:
        sys.stderr.write(f"run {result.request_id} had already completed; nothing to run\n")
    elif sys.stderr.isatty():
        sys.stderr.write(
            f"resumed {result.request_id}: skipped {len(result.steps_skipped)} completed "
            f"step(s), ran {len(result.steps_run)}\n"
        )
    dump_json(result.vars, sys.stdout)
    return EXIT_OK
