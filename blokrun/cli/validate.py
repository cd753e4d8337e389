"""``blokrun validate FILE``: check a workflow file (and the configuration) without running it.

Its handler is a plain function, not a coroutine: nothing is connected, so no event loop is
started (nor ``asyncio`` imported), which keeps the command quick.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

from blokrun.cli.common import EXIT_OK, make_runner

if TYPE_CHECKING:
    import argparse

__all__ = ["add_parser", "handle"]


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``validate`` to the ``blokrun`` subcommands (``subparsers``: ``add_subparsers()``)."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "validate", help="check a workflow file without running it"
    )
    p.add_argument("file", help="the workflow JSON file")
    p.set_defaults(handler=handle)
    return p


def handle(args: argparse.Namespace) -> int:
    """Load the workflow file ``args`` name and print a summary of it; the exit code."""
    wf = make_runner().load(args.file)
    sys.stdout.write(
        f"{args.file}: ok: workflow {wf.name!r} version {wf.version}, {len(wf.steps)} steps, "
        f"checkpoints to {', '.join(wf.targets) or 'nowhere (persistence disabled)'}\n"
    )
    return EXIT_OK
