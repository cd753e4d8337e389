"""``blokrun doctor [--json] [--timeout S]``: is every configured datasource usable?

For every datasource: reachable or not, the latency of a harmless read (median of a few,
in ms), the server's version, the state of blokrun's tables / indexes / folder there, and
whether it keeps run leases; then the lease TTL and the run queue (checked when
``BLOKRUN_QUEUE_DATASOURCE`` names one). A table on stdout, or with ``--json`` one JSON
object. Exit 0 when every datasource (and the configured queue) is healthy, 1 otherwise,
2 for bad configuration -- usable as a container health check. Secrets never appear.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

from blokrun.cli.common import EXIT_FAILED, EXIT_OK

if TYPE_CHECKING:
    from blokrun.lifecycle.health import DatasourceHealth, HealthReport, QueueHealth

__all__ = ["add_parser", "format_report", "handle"]


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0 < value < 3600:
        raise argparse.ArgumentTypeError(f"invalid value {text!r}: expected seconds > 0")
    return value


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``doctor`` to the ``blokrun`` subcommands (``subparsers``: ``add_subparsers()``)."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "doctor",
        help="check every datasource: reachable, latency, version, schema, leases, queue "
        "(exit 0 healthy, 1 not)",
    )
    p.add_argument("--json", action="store_true", help="print the report as one JSON object")
    p.add_argument(
        "--timeout",
        type=_seconds,
        default=None,
        metavar="S",
        help="seconds each stage of a datasource's check may take before it counts as "
        "unreachable (default: the datasource's TIMEOUT setting, 5)",
    )
    p.set_defaults(handler=handle)
    return p


async def handle(args: argparse.Namespace) -> int:
    """Check the configured datasources; print the report; the exit code."""
    from blokrun.cli.common import make_runner
    from blokrun.cli.output import dump_json
    from blokrun.config import settings_from_env
    from blokrun.lifecycle.health import check_health

    queue_datasource = settings_from_env().queue_datasource
    runner = make_runner()  # checks the whole configuration, like every command; not started
    report = await check_health(
        runner.datasources,
        lease_ttl=runner.lease_ttl,
        queue_datasource=queue_datasource,
        stage_timeout=args.timeout,
    )
    if args.json:
        dump_json(report.to_dict(), sys.stdout)
    else:
        sys.stdout.write(format_report(report))
    return EXIT_OK if report.healthy else EXIT_FAILED


def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.2f} ms" if value < 100 else f"{value:.0f} ms"


def _detail(d: DatasourceHealth) -> str:
    parts = [*d.problems, d.where]
    if d.schema != "unknown" or d.reachable:
        parts.append(f"schema: {d.schema}")
    return "; ".join(p for p in [*parts, *d.notes] if p)


def _leases(report: HealthReport) -> str:
    if report.lease_ttl is None:
        return "leases: off (BLOKRUN_LEASE_TTL=off): nothing keeps two processes off one run"
    kept = [d for d in report.datasources if d.keeps_leases]
    if not kept:
        return f"leases: ttl {report.lease_ttl:g} s; no datasource here keeps leases"
    where = ", ".join(f"{d.name} ({d.leases})" for d in kept)
    return (
        f"leases: ttl {report.lease_ttl:g} s; kept on {where} "
        "(a run's lease is on its first target that keeps leases)"
    )


def _queue(q: QueueHealth) -> str:
    if not q.configured:
        where = f"would use {q.datasource!r} ({q.backend})" if q.datasource else "none can hold it"
        return f"queue: not configured (BLOKRUN_QUEUE_DATASOURCE unset); submit and worker {where}"
    head = f"queue: {q.backend} on {q.datasource!r}"
    if not q.ok:
        return f"{head}: FAIL: {q.problem}"
    return f"{head}: ok, {q.waiting} waiting, {q.claimed} claimed"


def format_report(report: HealthReport) -> str:
    """The report as an aligned table, then the lease and queue lines and a verdict."""
    header = ("NAME", "DRIVER", "STATUS", "LATENCY", "VERSION", "SCHEMA / NOTES")
    rows = [
        (d.name, d.driver, "ok" if d.ok else "FAIL", _ms(d.latency_ms), d.version, _detail(d))
        for d in report.datasources
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header) - 1)]
    lines = [
        "  ".join([*(c.ljust(w) for c, w in zip(row, widths, strict=False)), row[-1]]).rstrip()
        for row in [header, *rows]
    ]
    lines += ["", _leases(report), _queue(report.queue)]
    failing = [d.name for d in report.datasources if not d.ok]
    total = len(report.datasources)
    if report.healthy:
        lines.append(f"healthy: {total} datasource(s) ok")
    else:
        what = [f"{len(failing)} of {total} datasource(s) failing ({', '.join(failing)})"]
        if not failing:
            what = [f"{total} datasource(s) ok"]
        if not report.queue.ok:
            what.append("the queue failing")
        lines.append(f"unhealthy: {'; '.join(what)}")
    return "\n".join(lines) + "\n"
