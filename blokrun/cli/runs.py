"""``blokrun runs [--status S] [--workflow NAME] [--since 7d|ISO] [--limit N] [--json]``.

Lists stored runs newest first: a table on stdout (the cursor of the next page, if any, on
stderr) or, with ``--json``, one object ``{"runs": [...], "cursor": ...}`` for scripts.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from datetime import UTC, date, datetime
from typing import TYPE_CHECKING, Any

from blokrun.cli.common import EXIT_OK, with_runner
from blokrun.cli.inputs import add_tag_argument, parse_tags

if TYPE_CHECKING:
    from blokrun.lifecycle.runs import RunSummary
    from blokrun.runner import Runner

__all__ = ["add_parser", "format_table", "handle", "parse_duration", "parse_since", "run"]

_STATUSES = (
    "running",
    "interrupted",
    "completed",
    "failed",
    "cancelled",
    "suspended",
    "sleeping",
    "dead",
)
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*", re.IGNORECASE)
_ERROR_WIDTH = 60


def parse_duration(text: str) -> float:
    """Seconds for ``30s``, ``30m``, ``12h``, ``7d``, ``2w``; ``argparse.ArgumentTypeError``."""
    match = _DURATION.fullmatch(text)
    if match is None:
        raise argparse.ArgumentTypeError(
            f"invalid duration {text!r}: expected a number and a unit, e.g. 30m, 12h, 7d "
            "(units: s, m, h, d, w)"
        )
    return float(match.group(1)) * _UNITS[match.group(2).lower()]


def parse_since(text: str, *, now: float | None = None) -> float:
    """Unix seconds for ``7d`` / ``12h`` / ``30m`` (ago) or an ISO date or datetime (UTC
    unless it has an offset)."""
    if _DURATION.fullmatch(text):
        return (time.time() if now is None else now) - parse_duration(text)
    value = text.strip()
    try:
        if len(value) == 10:
            day = date.fromisoformat(value)
            return datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp()
        when = datetime.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"invalid value {text!r}: expected an age (30m, 12h, 7d) or an ISO date or "
            "datetime (2024-05-01, 2024-05-01T12:00:00Z)"
        ) from None
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()


def _limit(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"invalid value {text!r}: expected a whole number >= 1")
    return value


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``runs`` to the ``blokrun`` subcommands (``subparsers``: ``add_subparsers()``)."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "runs", help="list stored runs, newest first (filter by status, workflow, age)"
    )
    p.add_argument("--status", choices=_STATUSES, help="only runs with this status")
    p.add_argument("--workflow", metavar="NAME", help="only runs of this workflow")
    p.add_argument("--search", metavar="TEXT", help="only runs whose request id contains TEXT")
    add_tag_argument(p, "only runs with this tag (repeatable: every one)")
    p.add_argument(
        "--since",
        type=parse_since,
        metavar="AGE|DATE",
        help="only runs started since: an age (30m, 12h, 7d) or an ISO date/datetime (UTC)",
    )
    p.add_argument("--limit", type=_limit, default=100, metavar="N", help="at most N runs (100)")
    p.add_argument(
        "--cursor", metavar="CURSOR", help="the next page, as printed by a previous call"
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(handler=handle)
    return p


async def handle(args: argparse.Namespace) -> int:
    """List the runs ``args`` ask for; the exit code."""
    return await with_runner(lambda runner: run(args, runner))


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts))


def _short(text: str | None, width: int) -> str:
    if not text:
        return ""
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def format_table(runs: list[RunSummary]) -> str:
    """The runs as an aligned text table (times in UTC)."""
    header: tuple[str, ...] = ("REQUEST ID", "WORKFLOW", "STATUS", "LAST DONE", "STOPPED AT")
    header += ("ATTEMPT",)
    header += ("STARTED (UTC)", "UPDATED (UTC)", "ERROR")
    rows = [
        (
            r.request_id,
            r.workflow,
            r.status + ("!" if r.disagreement else ""),
            r.last_done or "-",
            r.stopped_at or "-",
            str(r.attempt),
            _when(r.started_at),
            _when(r.updated_at),
            _short(r.error, _ERROR_WIDTH),
        )
        for r in runs
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header) - 1)]
    lines = []
    for row in [header, *rows]:
        cells = [
            cell.ljust(w) if i != 5 else cell.rjust(w)  # ATTEMPT, a number
            for i, (cell, w) in enumerate(zip(row, widths, strict=False))
        ]
        lines.append("  ".join([*cells, row[-1]]).rstrip())
    split = [r for r in runs if r.disagreement]
    if split:
        lines.append("")
        lines.append("! its datasources disagree (a resume or 'blokrun repair ID' heals them):")
        for r in split:
            shown = "; ".join(f"{name}: {what}" for name, what in sorted(r.disagreement.items()))
            lines.append(f"  {r.request_id}: {shown}")
    return "\n".join(lines) + "\n"


async def run(args: argparse.Namespace, runner: Runner) -> int:
    """List runs as ``args`` ask, on a started ``runner``; the exit code."""
    from blokrun.cli.output import dump_json

    page = await runner.list_runs(
        status=args.status,
        workflow=args.workflow,
        since=args.since,
        limit=args.limit,
        cursor=args.cursor,
        search=args.search,
        tags=parse_tags(args.tag) or None,
    )
    if args.json:
        dump_json({"runs": [r.to_dict() for r in page.runs], "cursor": page.cursor}, sys.stdout)
        return EXIT_OK
    if page.runs:
        sys.stdout.write(format_table(page.runs))
    else:
        looked = ", ".join(ds.settings.located() for ds in runner.datasources.values())
        sys.stdout.write(f"(no runs in {looked})\n")
    if page.cursor is not None:
        sys.stderr.write(f"more runs: add --cursor {page.cursor}\n")
    return EXIT_OK
