"""``blokrun repair REQUEST_ID [--json]``: heal a run whose targets disagree.

Under the run's lease it reads every target, takes the most advanced verified state and
writes to each reachable target what it lacks (definition, run record, checkpoints, head),
then says what it did. Checkpoints lost or damaged on *every* target cannot be repaired: it
says so (exit 1). A resume does the same repair before it continues.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

from blokrun.cli.common import EXIT_FAILED, EXIT_OK, with_runner

if TYPE_CHECKING:
    import argparse

    from blokrun.runner import Runner

__all__ = ["add_parser", "handle", "run"]


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``repair`` to the ``blokrun`` subcommands (``subparsers``: ``add_subparsers()``)."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "repair", help="write back what a run's lagging targets lack (under its lease)"
    )
    p.add_argument("request_id", metavar="REQUEST_ID", help="the run to repair")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(handler=handle)
    return p


async def handle(args: argparse.Namespace) -> int:
    """Repair the run ``args`` name; the exit code."""
    return await with_runner(lambda runner: run(args, runner))


async def run(args: argparse.Namespace, runner: Runner) -> int:
    """Repair as ``args`` ask, on a started ``runner``; the exit code."""
    from blokrun.cli.output import dump_json

    report = await runner.repair(args.request_id)
    lost = report.claimed > report.seq
    if args.json:
        dump_json(
            {
                "request_id": report.request_id,
                "best": report.best,
                "seq": report.seq,
                "claimed": report.claimed,
                "lost": lost,
                "disagreement": report.disagreement,
                "repaired": list(report.repaired),
                "warnings": list(report.warnings),
            },
            sys.stdout,
        )
    else:
        out = sys.stdout
        out.write(
            f"run {report.request_id}: most advanced verified state on {report.best!r}, "
            f"checkpoint #{report.seq}\n"
        )
        for name, what in sorted(report.disagreement.items()):
            out.write(f"  {name}: {what}\n")
        for line in report.repaired or ("nothing to repair",):
            out.write(f"{line}\n")
        for warning in report.warnings:
            out.write(f"warning: {warning}\n")
        if lost:
            out.write(
                f"checkpoints #{report.seq + 1}..#{report.claimed} are missing or damaged on "
                "every target: they cannot be repaired\n"
            )
    return EXIT_FAILED if lost else EXIT_OK
