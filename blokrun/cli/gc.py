"""``blokrun gc [--completed-older-than 7d] [--failed-older-than 30d] [--dry-run] [--json]``.

Deletes completed runs last updated more than 7 days ago, failed / cancelled / dead ones
after 30 days (``never`` keeps them), then the large values (blobs) no remaining checkpoint
refers to; running and suspended runs are never touched. Prints each run deleted (or, with
``--dry-run``, that would be) and a summary. Exit 0, or 1 when something could not be
deleted.
"""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING, Any

from blokrun.cli.common import EXIT_FAILED, EXIT_OK, with_runner
from blokrun.cli.runs import parse_duration

if TYPE_CHECKING:
    import argparse

    from blokrun.lifecycle.gc import GcReport
    from blokrun.runner import Runner

__all__ = ["add_parser", "format_report", "handle", "run"]

_NEVER = frozenset({"never", "off", "none"})


def _age(text: str) -> float | None:
    if text.strip().lower() in _NEVER:
        return None
    return parse_duration(text)


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``gc`` to the ``blokrun`` subcommands (``subparsers``: ``add_subparsers()``)."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "gc", help="delete old completed and failed runs, and unreferenced large values"
    )
    p.add_argument(
        "--completed-older-than",
        type=_age,
        default=7 * 86400.0,
        metavar="AGE",
        help="delete completed runs not updated for AGE (30m, 12h, 7d; 'never'); default 7d",
    )
    p.add_argument(
        "--failed-older-than",
        type=_age,
        default=30 * 86400.0,
        metavar="AGE",
        help="delete failed, cancelled and dead runs not updated for AGE; default 30d",
    )
    p.add_argument(
        "--dry-run", action="store_true", help="delete nothing; print what would be deleted"
    )
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(handler=handle)
    return p


async def handle(args: argparse.Namespace) -> int:
    """Collect garbage as ``args`` ask; the exit code."""
    return await with_runner(lambda runner: run(args, runner))


def _size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f}{unit}" if unit == "B" else f"{size:.1f}{unit}"
        size /= 1024
    raise AssertionError("unreachable")


def format_report(report: GcReport) -> str:
    """What was (or would be) deleted, one line per run, then a summary."""
    verb = "would delete" if report.dry_run else "deleted"
    lines = []
    for r in report.runs:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(r.updated_at))
        lines.append(
            f"{verb} run {r.request_id}  workflow {r.workflow}  {r.status}  updated {when} UTC  "
            f"{r.keys} key(s) on {', '.join(repr(d) for d in r.datasources)}"
        )
    for ds, key in report.blob_keys:
        lines.append(f"{verb} blob {key} on {ds!r}")
    prefix = "gc (dry run): would delete" if report.dry_run else "gc: deleted"
    lines.append(
        f"{prefix} {report.runs_deleted} run(s) ({report.keys_deleted} keys, "
        f"{_size(report.bytes_deleted)}) and {report.blobs_deleted} unreferenced blob(s); "
        f"kept {report.runs_kept} run(s) and {report.blobs_kept} blob(s)"
    )
    lines.extend(f"gc: warning: {w}" for w in report.warnings)
    lines.extend(f"gc: error: {e}" for e in report.errors)
    return "\n".join(lines) + "\n"


def _as_json(report: GcReport) -> dict[str, Any]:
    return {
        "dry_run": report.dry_run,
        "runs": [
            {
                "request_id": r.request_id,
                "workflow": r.workflow,
                "status": r.status,
                "updated_at": r.updated_at,
                "datasources": list(r.datasources),
                "keys": r.keys,
                "checkpoints": r.checkpoints,
                "bytes": r.bytes,
            }
            for r in report.runs
        ],
        "runs_deleted": report.runs_deleted,
        "runs_kept": report.runs_kept,
        "keys_deleted": report.keys_deleted,
        "checkpoints_deleted": report.checkpoints_deleted,
        "bytes_deleted": report.bytes_deleted,
        "blobs_deleted": report.blobs_deleted,
        "blobs": [{"datasource": ds, "key": key} for ds, key in report.blob_keys],
        "blobs_kept": report.blobs_kept,
        "warnings": list(report.warnings),
        "errors": list(report.errors),
    }


async def run(args: argparse.Namespace, runner: Runner) -> int:
    """Collect garbage as ``args`` ask, on a started ``runner``; the exit code."""
    from blokrun.cli.output import dump_json

    report = await runner.collect_garbage(
        completed_older_than=args.completed_older_than,
        failed_older_than=args.failed_older_than,
        dry_run=args.dry_run,
    )
    if args.json:
        dump_json(_as_json(report), sys.stdout)
    else:
        sys.stdout.write(format_report(report))
    return EXIT_FAILED if report.errors else EXIT_OK
