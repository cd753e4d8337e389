"""``blokrun run FILE [--input JSON | --input-file FILE] [--request-id ID] [--restart]``.

Runs a workflow from its first step and prints its final vars (exit 0), or its suspension
(exit 3). Everything that can be checked without a datasource (inputs, request id, the
workflow file, the configuration) is checked before connecting.

A request id names one run: ``--request-id`` of a run that completed with the same workflow
and inputs prints its stored result and runs nothing; of any other run that exists, it is
refused (exit 2: resume it, or ``--restart`` it as a new incarnation).
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

from blokrun.cli.common import make_runner, with_runner
from blokrun.cli.inputs import add_new_run_arguments, parse_tags, read_inputs

if TYPE_CHECKING:
    import argparse

    from blokrun.runner import Runner

__all__ = ["add_parser", "handle"]


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``run`` to the ``blokrun`` subcommands (``subparsers``: ``add_subparsers()``)."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "run", help="run a workflow file from its first step"
    )
    add_new_run_arguments(p)
    p.add_argument(
        "--restart",
        action="store_true",
        help="if a run with this --request-id exists, start it over as a new incarnation "
        "(every step runs again; the old records are kept apart, never mixed in)",
    )
    p.set_defaults(handler=handle)
    return p


async def handle(args: argparse.Namespace) -> int:
    """Run the workflow ``args`` name; the exit code."""
    from blokrun.cli.interrupt import cancellable
    from blokrun.cli.output import report
    from blokrun.errors import ConfigError
    from blokrun.persistence.records import new_request_id, validate_request_id

    inputs = read_inputs(args)
    if args.request_id is not None:
        try:
            validate_request_id(args.request_id)
        except ValueError as exc:
            raise ConfigError(f"--request-id: {exc}") from None
    runner = make_runner(progress=True)
    wf = runner.load(args.file)
    request_id = args.request_id or new_request_id()

    async def body(runner: Runner) -> int:
        async def go() -> int:
            result = await runner.run(
                wf,
                inputs,
                request_id=request_id,
                restart=args.restart,
                tags=parse_tags(args.tag),
            )
            if result.existing:
                sys.stderr.write(
                    f"blokrun: run {request_id} already completed with these inputs; "
                    "nothing ran (its stored result follows)\n"
                )
            return report(result)

        return await cancellable(request_id, go)

    return await with_runner(body, runner)
