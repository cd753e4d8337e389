"""Tiny shared pieces: timing, medians, the results table and RESULTS.md."""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


@dataclass
class Row:
    section: str
    name: str
    value: float
    unit: str
    note: str = ""


@dataclass
class Report:
    rows: list[Row] = field(default_factory=list)

    def add(self, section: str, name: str, value: float, unit: str, note: str = "") -> None:
        self.rows.append(Row(section, name, value, unit, note))
        print(f"  {section:<28} {name:<44} {fmt(value, unit):>14}  {note}", flush=True)


def fmt(value: float, unit: str) -> str:
    if unit == "s":
        if value < 1e-3:
            return f"{value * 1e6:.1f} µs"
        if value < 1:
            return f"{value * 1e3:.2f} ms"
        return f"{value:.2f} s"
    if unit == "x":
        return f"{value:.2f}x"
    if unit == "/s":
        return f"{value:,.0f}/s"
    return f"{value:,.2f} {unit}"


async def median_of(fn: Callable[[], Awaitable[float]], repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        await fn()
    return statistics.median([await fn() for _ in range(repeats)])


def percentile(samples: list[float], p: float) -> float:
    ordered = sorted(samples)
    k = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return ordered[k]


def _version(pkg: str) -> str:
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return "-"


def machine() -> list[str]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        load = os.getloadavg()
        load_text = f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
    except OSError:
        load_text = "-"
    try:
        redis = subprocess.run(
            ["redis-server", "--version"], capture_output=True, text=True, timeout=5
        ).stdout.split()[2]
    except (OSError, IndexError, subprocess.TimeoutExpired):
        redis = "-"
    return [
        f"- machine: {cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}",
        f"- load average at start: {load_text}",
        f"- Python {platform.python_version()}; blokrun {_version('blokrun')}, "
        f"anyio {_version('anyio')}, "
        f"orjson {_version('orjson')}, msgspec {_version('msgspec')}, "
        f"redis-py {_version('redis')}, hiredis {_version('hiredis')}, "
        f"asyncpg {_version('asyncpg')}, pymongo {_version('pymongo')}, "
        f"aioboto3 {_version('aioboto3')}, moto {_version('moto')}; redis-server {redis}",
        f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
    ]


def write_results(report: Report, intro: str) -> None:
    lines = ["# blokrun benchmark results", "", intro, "", *machine(), ""]
    section = None
    for row in report.rows:
        if row.section != section:
            section = row.section
            lines += ["", f"## {section}", "", "| measure | value | note |", "|---|---:|---|"]
        lines.append(f"| {row.name} | {fmt(row.value, row.unit)} | {row.note} |")
    from benchmarks.goals import summary

    goals = summary(report)
    print("\n".join(goals))
    lines += goals
    RESULTS.write_text("\n".join(lines) + "\n" + peers_section())
    print(f"\nwrote {RESULTS}")


PEERS = RESULTS.parent / "peers" / "RESULTS.md"


def peers_section() -> str:
    """The last ``make bench-peers`` table (its own run, its own machine line), if any."""
    if not PEERS.exists():
        return ""
    return "\n" + PEERS.read_text()


def merge_peers() -> None:
    """Put the peers table into RESULTS.md in place of the one there (``make bench-peers``)."""
    text = RESULTS.read_text() if RESULTS.exists() else "# blokrun benchmark results\n"
    head = text.split("\n## Peers", 1)[0].rstrip("\n") + "\n"
    RESULTS.write_text(head + peers_section())
