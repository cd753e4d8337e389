"""``blokrun schedules [--json]``: the schedules workers run (``blokrun worker --schedule``).

One line per schedule kept in the queue's datasource: its id, workflow, cron or interval,
the latest tick submitted, the next one, and the status of the latest tick's run.
"""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING, Any

from blokrun.cli.common import EXIT_OK, with_runner

if TYPE_CHECKING:
    import argparse

    from blokrun.runner import Runner

__all__ = ["add_parser", "handle"]


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``schedules`` to the ``blokrun`` subcommands."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "schedules", help="list the schedules workers run, their last and next ticks"
    )
    p.add_argument("--json", action="store_true", help="print a JSON list")
    p.set_defaults(handler=handle)
    return p


def _utc(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(t))


async def handle(args: argparse.Namespace) -> int:
    """Print the schedules; the exit code."""
    from blokrun.cli.output import dump_json
    from blokrun.errors import RunNotFound
    from blokrun.workers.scheduler import read_schedules

    async def body(runner: Runner) -> int:
        await runner.queue()
        ds = runner.queue_datasource
        assert ds is not None
        rows = []
        for state in await read_schedules(ds):
            status = None
            if state.last_run is not None:
                try:
                    status = (await runner.inspect(state.last_run)).status
                except RunNotFound:
                    status = "queued"
            rows.append((state, status))
        if args.json:
            dump_json(
                [
                    {
                        "id": s.id,
                        "workflow": s.workflow,
                        "schedule": s.spec,
                        "last_tick": s.last_tick,
                        "next_tick": s.next_tick(),
                        "last_run": s.last_run,
                        "last_status": status,
                    }
                    for s, status in rows
                ],
                sys.stdout,
            )
            return EXIT_OK
        if not rows:
            sys.stdout.write(f"(no schedules in {ds.name!r}; blokrun worker --schedule FILE)\n")
            return EXIT_OK
        header = f"{'ID':<20} {'WORKFLOW':<20} {'SCHEDULE':<28} {'LAST TICK (UTC)':<20} "
        sys.stdout.write(header + f"{'NEXT TICK (UTC)':<20} LAST RUN\n")
        for s, status in rows:
            last = f"{s.last_run} ({status})" if s.last_run else "-"
            sys.stdout.write(
                f"{s.id:<20} {s.workflow:<20} {s.spec:<28} {_utc(s.last_tick):<20} "
                f"{_utc(s.next_tick()):<20} {last}\n"
            )
        return EXIT_OK

    return await with_runner(body)
