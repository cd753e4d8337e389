"""``blokrun fork REQUEST_ID [--from-step NAME] [--set K=V]... [--as NEW_ID] [--workflow FILE]``.

Starts a *new* run from a checkpoint of an existing one -- the state before ``--from-step``
ran (default: its latest checkpoint), vars edited by ``--set`` -- and runs the rest of the
workflow under a new request id. The old run and its history are not touched. stderr names
the new run (``blokrun resume NEW_ID`` continues it if it fails); stdout gets its final vars.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

from blokrun.cli.common import with_runner
from blokrun.cli.inputs import add_set_argument

if TYPE_CHECKING:
    import argparse

    from blokrun.runner import Runner

__all__ = ["add_parser", "handle"]


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``fork`` to the ``blokrun`` subcommands (``subparsers``: ``add_subparsers()``)."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "fork", help="start a new run from a checkpoint of another run (which stays as it is)"
    )
    p.add_argument("request_id", metavar="REQUEST_ID", help="the run to fork from")
    p.add_argument(
        "--from-step",
        metavar="NAME",
        help="start from the state before NAME ran (default: the latest checkpoint)",
    )
    add_set_argument(p)
    p.add_argument(
        "--as",
        dest="new_id",
        metavar="NEW_ID",
        help="the new run's request id (default: a new one, printed)",
    )
    p.add_argument(
        "--workflow", metavar="FILE", help="run the fork with this workflow file instead"
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="fork even if --workflow changed steps that already ran",
    )
    p.set_defaults(handler=handle)
    return p


async def handle(args: argparse.Namespace) -> int:
    """Fork the run ``args`` name; the exit code."""
    from blokrun.cli.inputs import parse_sets
    from blokrun.cli.interrupt import cancellable
    from blokrun.cli.output import report

    set_vars = parse_sets(args.set)

    async def body(runner: Runner) -> int:
        async def go() -> int:
            result = await runner.fork(
                args.request_id,
                new_id=args.new_id,
                from_step=args.from_step,
                set_vars=set_vars,
                workflow=args.workflow,
                force=args.force,
            )
            sys.stderr.write(
                f"forked {args.request_id} as {result.request_id}: skipped "
                f"{len(result.steps_skipped)} step(s), ran {len(result.steps_run)}\n"
            )
            return report(result)

        return await cancellable(args.new_id or args.request_id, go)

    return await with_runner(body, progress=True)
