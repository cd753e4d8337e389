"""``blokrun export REQUEST_ID [--format json|jsonl] [--step NAME]``: a run's checkpoints as
seed 000 stores them, for tools that read the store's data rather than blokrun's records.

Each checkpoint, in sequence order, as ``{"stepName", "timestamp" (ISO 8601, UTC), "vars"
(the whole vars at that step: deltas and large values resolved, decrypted), "metadata":
{"workflowId", "requestId", "seq", "status" (the checkpoint's: ``completed``, or
``skipped``, ``edited``, ``forked``), "runStatus" (the run's status now)}}``. ``json``
prints one object ``{"requestId", "workflowId", "status", "checkpoints": [...]}``;
``jsonl`` one checkpoint per line. ``--step`` keeps that step's checkpoints (a step run
again by a later attempt has several). Values JSON has no type for print as ``blokrun run``
prints them (``Decimal`` and ``datetime`` as strings). The run is located and its history
listed once; each checkpoint is rebuilt and printed in turn, so ``jsonl`` holds one
checkpoint's vars in memory at a time.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import orjson

from blokrun.cli.common import EXIT_OK, with_runner

if TYPE_CHECKING:
    import argparse
    from collections.abc import AsyncIterator

    from blokrun.runner import Runner

__all__ = ["add_parser", "checkpoints", "export", "handle"]


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``export`` to the ``blokrun`` subcommands."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "export", help="print a run's checkpoints as seed 000 stores them (JSON)"
    )
    p.add_argument("request_id", metavar="REQUEST_ID", help="the run (its request id)")
    p.add_argument(
        "--format",
        choices=("json", "jsonl"),
        default="json",
        help="json: one object with the run's status; jsonl: one checkpoint a line",
    )
    p.add_argument("--step", metavar="NAME", help="only the checkpoints of this step")
    p.set_defaults(handler=handle)
    return p


async def checkpoints(
    runner: Runner,
    request_id: str,
    *,
    step: str | None = None,
    workflow: str | None = None,
    run_status: str | None = None,
) -> AsyncIterator[dict[str, Any]]:
    """The run's checkpoints in seed 000's shape (see the module docstring), in order;
    ``workflow`` and ``run_status`` go into each one's metadata."""
    async for info, state in runner.store.history.states(request_id, step=step):
        yield {
            "stepName": info.step,
            "timestamp": datetime.fromtimestamp(info.time, UTC).isoformat(),
            "vars": state,
            "metadata": {
                "workflowId": workflow,
                "requestId": request_id,
                "seq": info.seq,
                "status": info.status,
                "runStatus": run_status,
            },
        }


def _dumps(value: Any) -> str:
    return orjson.dumps(value, default=str, option=orjson.OPT_NON_STR_KEYS).decode()


async def export(runner: Runner, request_id: str, step: str | None, fmt: str) -> None:
    """Write the export to stdout (see the module docstring)."""
    from blokrun.errors import ArgumentError

    info = await runner.inspect(request_id)  # an unknown run: NotFound, exit 2
    if step is not None and all(c.step != step for c in info.checkpoints):
        steps = list(dict.fromkeys(c.step for c in info.checkpoints))
        have = ", ".join(steps[:10]) + (f", ... ({len(steps)} in all)" if len(steps) > 10 else "")
        raise ArgumentError(
            f"run {request_id} has no checkpoint of step {step!r}; its steps: {have}",
            argument="--step",
        )
    workflow = info.head.workflow if info.head is not None else None
    found = checkpoints(runner, request_id, step=step, workflow=workflow, run_status=info.status)
    out = sys.stdout
    if fmt == "jsonl":
        async for record in found:
            out.write(_dumps(record) + "\n")
        return
    whole = {"requestId": request_id, "workflowId": workflow, "status": info.status}
    out.write(_dumps(whole)[:-1] + ',"checkpoints":[')  # streamed: one checkpoint at a time
    sep = ""
    async for record in found:
        out.write(sep + _dumps(record))
        sep = ","
    out.write("]}\n")


async def handle(args: argparse.Namespace) -> int:
    """Print the export; the exit code (2: no such run, or no such step)."""

    async def body(runner: Runner) -> int:
        await export(runner, args.request_id, args.step, args.format)
        sys.stdout.flush()
        return EXIT_OK

    return await with_runner(body)
