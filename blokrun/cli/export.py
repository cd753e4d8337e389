"""``blokrun export REQUEST_ID [--format json|jsonl] [--step NAME]``: a run's checkpoints as
seed 000 stores them, for tools that read the store's data rather than blokrun's records.

Each checkpoint, in sequence order, as ``{"stepName", "timestamp" (ISO 8601, UTC), "vars"
(the whole vars at that step: deltas and large values resolved), "metadata": {"workflowId",
"requestId", "seq", "status"}}``. ``json`` prints one object ``{"requestId", "status",
"checkpoints": [...]}``; ``jsonl`` one checkpoint per line. ``--step`` keeps that step's.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import orjson

from blokrun.cli.common import EXIT_OK, with_runner

if TYPE_CHECKING:
    import argparse

    from blokrun.runner import Runner

__all__ = ["add_parser", "handle"]


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``export`` to the ``blokrun`` subcommands."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "export", help="print a run's checkpoints as seed 000 stores them (JSON)"
    )
    p.add_argument("request_id", metavar="REQUEST_ID", help="the run (its request id)")
    p.add_argument("--format", choices=("json", "jsonl"), default="json", help="default json")
    p.add_argument("--step", metavar="NAME", help="only the checkpoints of this step")
    p.set_defaults(handler=handle)
    return p


async def records(runner: Runner, request_id: str, step: str | None) -> list[dict[str, Any]]:
    """The run's checkpoints in seed 000's shape (see the module docstring)."""
    info = await runner.inspect(request_id)
    head = info.head
    out = []
    for c in info.checkpoints:
        if step is not None and c.step != step:
            continue
        _, state = await runner.state_at(request_id, seq=c.seq)
        out.append(
            {
                "stepName": c.step,
                "timestamp": datetime.fromtimestamp(c.time, UTC).isoformat(),
                "vars": state,
                "metadata": {
                    "workflowId": head.workflow if head is not None else None,
                    "requestId": request_id,
                    "seq": c.seq,
                    "status": c.status,
                },
            }
        )
    return out


async def handle(args: argparse.Namespace) -> int:
    """Print the export; the exit code (2: no such run, or no such step)."""
    from blokrun.cli.output import dump_json
    from blokrun.errors import ArgumentError

    async def body(runner: Runner) -> int:
        found = await records(runner, args.request_id, args.step)
        if args.step is not None and not found:
            raise ArgumentError(
                f"run {args.request_id} has no checkpoint of step {args.step!r}",
                argument="--step",
            )
        if args.format == "jsonl":  # one line each, on a terminal too
            for record in found:
                sys.stdout.write(orjson.dumps(record, default=str).decode() + "\n")
            return EXIT_OK
        status = (await runner.inspect(args.request_id)).status
        dump_json(
            {"requestId": args.request_id, "status": status, "checkpoints": found}, sys.stdout
        )
        return EXIT_OK

    return await with_runner(body)
