"""``blokrun inspect REQUEST_ID [--json] [--step NAME|#N]``: a run's checkpoints, or its vars.

Without ``--step``: the run's head (status, attempt, last error, who holds its lease) and
one line per checkpoint, or all of it as one JSON object with ``--json``. With ``--step``:
the context (vars) stored at that step's checkpoint, as JSON on stdout.
"""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING, Any

from blokrun.cli.common import EXIT_OK, with_runner
from blokrun.persistence.leases import holding

if TYPE_CHECKING:
    import argparse

    from blokrun.persistence.history import RunInfo
    from blokrun.runner import Runner

__all__ = ["add_parser", "handle", "run"]


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``inspect`` to the ``blokrun`` subcommands (``subparsers``: ``add_subparsers()``)."""
    p: argparse.ArgumentParser = subparsers.add_parser("inspect", help="list a run's checkpoints")
    p.add_argument("request_id", metavar="REQUEST_ID", help="the run (its request id)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument(
        "--step", metavar="NAME", help="print the context (vars) at that step's checkpoint (or #N)"
    )
    p.set_defaults(handler=handle)
    return p


async def handle(args: argparse.Namespace) -> int:
    """Inspect the run ``args`` name; the exit code."""
    return await with_runner(lambda runner: run(args, runner))


async def run(args: argparse.Namespace, runner: Runner) -> int:
    """Inspect as ``args`` ask, on a started ``runner``; the exit code."""
    from blokrun.cli.output import dump_json

    if args.step is not None:
        return await _show_step(args, runner)
    info = await runner.inspect(args.request_id)
    if args.json:
        dump_json(_as_json(info), sys.stdout)
    else:
        sys.stdout.write(format_table(info))
    return EXIT_OK


async def _show_step(args: argparse.Namespace, runner: Runner) -> int:
    from blokrun.cli.inputs import checkpoint_ref
    from blokrun.cli.output import dump_json

    info, state = await runner.state_at(args.request_id, **checkpoint_ref(args.step))
    sys.stderr.write(f"run {args.request_id} at checkpoint #{info.seq} ({info.step})\n")
    dump_json(state, sys.stdout)
    return EXIT_OK


def _as_json(info: RunInfo) -> dict[str, Any]:
    head = info.head
    return {
        "request_id": info.request_id,
        "datasource": info.datasource,
        "status": info.status,
        "workflow": head.workflow if head else None,
        "error": head.error if head else None,
        "collecting": bool(head and head.collecting),
        "incarnation": info.incarnation,
        "disagreement": dict(info.disagreement),
        "damaged": list(info.damaged),
        "parent": info.parent,
        "forked_from": info.forked_from,
        "children": [
            {"step": c.step, "request_id": c.request_id, "status": c.status} for c in info.children
        ],
        "lease": (
            {"owner": lease.owner, "token": lease.token, "until": lease.expires_at}
            if (lease := holding(info.lease, time.time())) is not None
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
                "alias": c.alias,
                "attempt": c.attempt,
            }
            for c in info.checkpoints
        ],
    }


def _family(info: RunInfo) -> list[str]:
    """Where the run sits in its tree: its parent or source, and its child runs."""
    lines = []
    if info.parent:
        lines.append(f"child run of {info.parent} (blokrun inspect {info.parent})\n")
    if info.forked_from:
        lines.append(f"forked from {info.forked_from}\n")
    if info.children:
        lines.append("child runs:\n")
        lines.extend(f"  {c.step:<24} {c.request_id}  {c.status}\n" for c in info.children)
    return lines


def format_table(info: RunInfo) -> str:
    """The run's head, then one line per checkpoint (times in UTC)."""
    head = info.head
    lines: list[str] = []
    if head is not None:
        lines.append(
            f"run {info.request_id}  workflow {head.workflow} {head.version}  "
            f"status {info.status}  attempt {head.attempt}"
            + (f"  incarnation {info.incarnation}" if info.incarnation > 1 else "")
            + f"  on {info.datasource!r}\n"
        )
        if head.collecting:
            lines.append(
                "being deleted by gc (no resume or new run of this id until it is gone; if "
                "no gc runs any more, 'blokrun gc' finishes the deletion)\n"
            )
        if head.error:
            lines.append(f"last error ({head.failed_step or 'run'}): {head.error}\n")
        lease = holding(info.lease, time.time())
        if lease is not None:
            left = lease.expires_at - time.time()
            lines.append(
                f"being run by {lease.owner} (lease token {lease.token}, "
                f"renewed while it lives; {left:.0f}s left)\n"
            )
    else:
        lines.append(
            f"run {info.request_id}  (no head record; found by scanning) on {info.datasource!r}\n"
        )
    lines.append(
        f"{'seq':>4}  {'step':<24} {'status':<10} {'attempt':>7}  {'time (UTC)':<20} "
        f"{'duration':>9} {'size':>9}\n"
    )
    for c in info.checkpoints:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(c.time))
        lines.append(
            f"{c.seq:>4}  {c.step:<24} {c.status:<10} {c.attempt:>7}  {when:<20} "
            f"{c.duration * 1000:>7.1f}ms {c.size:>8}B\n"
        )
    if not info.checkpoints:
        lines.append("(no checkpoints yet)\n")
    lines.extend(_family(info))
    if info.disagreement:
        lines.append("its targets disagree:\n")
        lines.extend(f"  {name}: {what}\n" for name, what in sorted(info.disagreement.items()))
        lines.append(f"  (a resume or 'blokrun repair {info.request_id}' heals them)\n")
    for problem in info.damaged:
        lines.append(f"does not verify: {problem}\n")
    return "".join(lines)
