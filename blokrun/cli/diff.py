"""``blokrun diff REQUEST_ID A B [--json]``: the change in a run's vars between checkpoints.

``A`` and ``B`` are step names or ``#N`` (checkpoint number N). Prints ``+ path = value``,
``- path`` and ``~ path: old -> new`` lines (objects compared key by key), or with ``--json``
one object ``{"from": N, "to": M, "changes": [...]}``.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

import orjson

from blokrun.cli.common import EXIT_OK, with_runner
from blokrun.lifecycle.diff import diff_vars

if TYPE_CHECKING:
    import argparse

    from blokrun.runner import Runner

__all__ = ["add_parser", "diff_vars", "handle", "run"]


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``diff`` to the ``blokrun`` subcommands (``subparsers``: ``add_subparsers()``)."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "diff", help="the change in a run's context between two checkpoints"
    )
    p.add_argument("request_id", metavar="REQUEST_ID", help="the run (its request id)")
    p.add_argument("a", metavar="A", help="a step name, or #N for checkpoint number N")
    p.add_argument("b", metavar="B", help="a step name, or #N")
    p.add_argument("--json", action="store_true", help="print the two states' changes as JSON")
    p.set_defaults(handler=handle)
    return p


async def handle(args: argparse.Namespace) -> int:
    """Diff the two checkpoints ``args`` name; the exit code."""
    return await with_runner(lambda runner: run(args, runner))


async def run(args: argparse.Namespace, runner: Runner) -> int:
    """Print the diff ``args`` ask for, on a started ``runner``; the exit code."""
    from blokrun.cli.inputs import checkpoint_ref

    a_info, a = await runner.state_at(args.request_id, **checkpoint_ref(args.a))
    b_info, b = await runner.state_at(args.request_id, **checkpoint_ref(args.b))
    lines = diff_vars(a, b)
    if args.json:
        sys.stdout.write(
            orjson.dumps({"from": a_info.seq, "to": b_info.seq, "changes": lines}).decode() + "\n"
        )
        return EXIT_OK
    sys.stdout.write(f"--- #{a_info.seq} {a_info.step}\n+++ #{b_info.seq} {b_info.step}\n")
    sys.stdout.write("\n".join(lines) + ("\n" if lines else "(no change)\n"))
    return EXIT_OK
