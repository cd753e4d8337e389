"""The performance goals of issues 4, 7 and 18, judged on the figures of this ``make bench`` run.

Each goal names the measures it reads (by section and name, as printed), how it is judged,
and -- for a goal the run misses -- the cause, found by profiling (``benchmarks/PROFILE.md``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeAlias

from benchmarks.harness import fmt

if TYPE_CHECKING:
    from collections.abc import Callable

    from benchmarks.harness import Report, Row


@dataclass(frozen=True)
class Goal:
    text: str
    judge: Judge  # None from it: not measured
    cause: str = ""
    #: the part of the cause this run measured (None: not measured in it)
    measured: Callable[[dict[str, Row]], str | None] | None = None

    def why(self, rows: dict[str, Row]) -> str:
        """The cause of a miss, with what this run measured of it."""
        found = self.measured(rows) if self.measured is not None else None
        return self.cause if found is None else f"{found}; {self.cause}"


def _get(rows: dict[str, Row], name: str) -> Row | None:
    row = rows.get(name)
    return None if row is None or math.isnan(row.value) else row


Judge: TypeAlias = "Callable[[dict[str, Row]], tuple[bool, str] | None]"


def _bound(name: str, limit: float, unit: str, *, upper: bool) -> Judge:
    def judge(rows: dict[str, Row]) -> tuple[bool, str] | None:
        row = _get(rows, name)
        if row is None:
            return None
        met = row.value <= limit if upper else row.value >= limit
        return met, f"{fmt(row.value, row.unit)} (goal {'≤' if upper else '≥'} {fmt(limit, unit)})"

    return judge


def at_most(name: str, limit: float, unit: str) -> Judge:
    return _bound(name, limit, unit, upper=True)


def at_least(name: str, limit: float, unit: str) -> Judge:
    return _bound(name, limit, unit, upper=False)


def ratio(num: str, den: str, limit: float) -> Judge:
    def judge(rows: dict[str, Row]) -> tuple[bool, str] | None:
        a, b = _get(rows, num), _get(rows, den)
        if a is None or b is None:
            return None
        r = a.value / b.value
        return (
            r <= limit,
            f"{r:.2f}x: {fmt(a.value, a.unit)} / {fmt(b.value, b.unit)} (goal ≤ {limit}x)",
        )

    return judge


CPU = (
    "one checkpoint is one fenced script or statement (the lease's token checked in the "
    "write, the alias kept by its first run), which costs the server more than the floor's "
    "plain write, plus blokrun's own Python per step (engine, recorder, group commit, the "
    "datasource wrapper; PROFILE.md, rounds three to seven)"
)


def _taken_apart(driver: str, n: int, limit: float) -> Callable[[dict[str, Row]], str | None]:
    """This run's bare loops (benchmarks/bare.py): the same records without blokrun's
    layers, fenced and not, against the same floor."""

    def measured(rows: dict[str, Row]) -> str | None:
        floor = _get(rows, f"{driver}: floor per step, N={n}")
        fenced = _get(rows, f"{driver}: bare loop, fenced, N={n}")
        plain = _get(rows, f"{driver}: bare loop, unfenced, N={n}")
        if floor is None or fenced is None or plain is None:
            return None
        f, p = fenced.value / floor.value, plain.value / floor.value
        verdict = "over the bar by itself" if f > limit else "within the bar"
        return (
            f"this run, N={n}: blokrun's records written by a bare loop, fenced as blokrun "
            f"writes them, take {f:.2f}x the floor ({verdict}), the same records unfenced "
            f"{p:.2f}x, so the rest is blokrun's layers (engine, recorder, group commit, "
            "wrapper)"
        )

    return measured


RESUME_CAUSE = (
    "round trips of ~0.1-0.3 ms on this shared box before the re-run steps' own (2 in the "
    "process that drove the run: the head and the records it points at, then the lease "
    "with the attempt's start; 3 elsewhere)"
)
GOALS = [
    Goal(
        "runner overhead, persistence off ≤ 10 µs/step (issue 18; was 20)",
        at_most("persistence off (100 steps)", 10e-6, "s"),
    ),
    Goal(
        "Redis checkpoint ≤ 1.1x one raw round trip",
        ratio("redis: blokrun checkpoint per step", "redis: raw round trip", 1.1),
        CPU,
        _taken_apart("redis", 100, 1.1),
    ),
    Goal(
        "PostgreSQL checkpoint ≤ 1.1x one raw round trip",
        ratio("postgresql: blokrun checkpoint per step", "postgresql: raw round trip", 1.1),
        CPU,
        _taken_apart("postgresql", 100, 1.1),
    ),
    Goal(
        "fan-out costs the slowest target, not the sum",
        ratio("all 3 at once (fan-out)", "s3 (moto) alone", 1.25),
        "the fast targets' client CPU (~0.2 ms each) runs on the one event loop and cannot "
        "overlap; with a slow target it hides behind it",
    ),
    Goal(
        "100 runs at once ≥ 10,000 checkpointed steps/s on Redis",
        at_least("redis: leases + group commit (default)", 10_000, "/s"),
        "one Python process on 2 cores shared with redis-server: ~90-100 µs of client CPU per "
        "checkpointed step with 45-50 saves per round trip (the engine, records, group "
        "commit); 11-12k/s on a quiet box (PROFILE.md); more worker processes scale it",
    ),
    Goal(
        "100 runs at once ≥ 10,000 checkpointed steps/s on PostgreSQL",
        at_least("postgresql: leases + group commit (default)", 10_000, "/s"),
        "as for Redis, plus asyncpg's per-statement cost and the server's statement time for "
        "the batched fenced upsert; more worker processes scale it",
    ),
    Goal(
        "resume of a 100-step run ≤ 5 ms warm (Redis)",
        at_most("redis: warm, in-process", 5e-3, "s"),
        RESUME_CAUSE,
    ),
    Goal(
        "resume of a 100-step run ≤ 5 ms warm (PostgreSQL)",
        at_most("postgresql: warm, in-process", 5e-3, "s"),
        RESUME_CAUSE,
    ),
    Goal(
        "blokrun run in a fresh process ≤ 300 ms",
        at_most("blokrun run (5 steps)", 0.3, "s"),
        "interpreter start and imports (asyncio, anyio, msgspec) on a loaded 2-core box",
    ),
    Goal(
        "blokrun resume in a fresh process ≤ 300 ms",
        at_most("blokrun resume (1 step left)", 0.3, "s"),
        "interpreter start and imports (asyncio, anyio, msgspec) on a loaded 2-core box",
    ),
    Goal(
        "10 MB context load ≤ 100 ms (Redis, ~100k small records)",
        at_most("10 MB context load, Redis, records", 0.1, "s"),
        "CPython builds ~200k containers: orjson.loads of the 10 MB alone takes 62-85 ms here "
        "with the collector paused, and blokrun's decode is within 1.1x of it (next goal); "
        "the rest is the round trip and zstd. Ten 1 MB documents meet the goal (see the rows)",
    ),
    Goal(
        "10 MB record-shaped context decode ≤ 1.2x orjson.loads of the same bytes",
        ratio(
            "10 MB records: blokrun decode of the stored record",
            "10 MB records: orjson.loads floor",
            1.2,
        ),
        "above the floor: zstd decompression of the 2.1 MB stored record (~8 ms, ~0.1x of "
        "the floor) and its crc32 (<1 ms), both kept (the stored format, and the check against "
        "corrupt records); beyond ~1.15x it is this shared 2-core box: single pairs spread "
        "0.6-2x under load (PROFILE.md, issue 18)",
    ),
    Goal(
        "10 MB context save ≤ 100 ms (Redis, ~100k small records)",
        at_most("10 MB context save, Redis, records", 0.1, "s"),
        "serialising 800k objects, hashing for change detection and zstd of 10 MB: each "
        "20-40 ms here; the documents shape meets the goal",
    ),
    Goal(
        "200-step run growing to 10 MB writes ≤ 2x what it produced",
        at_most("200-step run growing to 10.0 MB: bytes written / produced", 2.0, "x"),
    ),
]


_REDIS_STEP = (
    "each checkpoint is one fenced EVALSHA (checkpoint, head and alias records, 4 keys, "
    "~1.4 KB) on the driver's direct path, ~1.1x the floor's SET through redis-py by itself, "
    "plus ~90 µs of blokrun's own Python per step (the engine, record encoding, group "
    "commit, the datasource wrapper; at N=100 compressing the whole-state checkpoint once "
    "it passes 4 KB): client CPU 244 µs a step against the floor's 146 in one busy-VM run "
    "of `python -m benchmarks.ab_cpu redis 100` (PROFILE.md, Issue 18 rounds three to six)"
)
_PG_STEP = (
    "each checkpoint is one fenced statement (lease check, checkpoint, head and owned alias "
    "upserts) on the driver's kept connection: one round trip, as the floor's upsert; what "
    "is left is client CPU, ~185-360 µs a step on this VM against the floor's ~150 "
    "(`python -m benchmarks.ab_cpu postgresql 100`): blokrun's own Python (the engine, "
    "record encoding, group commit, the datasource wrapper) and asyncpg's statement with 11 "
    "parameters (PROFILE.md, round six: until then the floor made two round trips a step)"
)
_SHORT = (
    "; a run also pays a fixed ~0.4-0.7 ms over 10 steps: one round trip more than the "
    "floor's N (the lease, the id's existence check and the start record, in one script or "
    "statement) and ~0.4 ms of Python at start and end"
)
_RESUME_START = (
    "~0.9-1.3 ms before the first re-run step on Redis (quiet to busy VM): 2 sequential "
    "round trips in the process that drove the run (the head and run record read together "
    "with the records the head points at and the definition; the lease with the attempt's "
    "start, a compare-and-set on the head), 3 in another process, and ~0.5 ms of "
    "locating, decoding and planning in Python (PROFILE.md, round six)"
)
_PG_RESUME_START = (
    "~0.9-1.8 ms before the first re-run step (quiet to busy VM): 2 sequential round trips "
    "as on Redis, and ~0.5 ms of blokrun's Python"
)


def _bar(driver: str, what: str, n: int, limit: float, cause: str) -> Goal:
    label = "per step" if what == "per step" else "warm resume"
    return Goal(
        f"{driver}: {label} at N={n} ≤ {limit}x the raw floor (issue 18)",
        ratio(f"{driver}: blokrun {what}, N={n}", f"{driver}: floor {what}, N={n}", limit),
        cause,
        _taken_apart(driver, n, limit) if what == "per step" else None,
    )


GOALS += [
    _bar("redis", "per step", 10, 1.3, _REDIS_STEP + _SHORT),
    _bar("redis", "per step", 100, 1.3, _REDIS_STEP),
    _bar("postgresql", "per step", 10, 1.3, _PG_STEP + _SHORT),
    _bar("postgresql", "per step", 100, 1.3, _PG_STEP),
    _bar(
        "redis",
        "warm resume",
        10,
        1.5,
        _RESUME_START + ", by itself ~0.4-0.7x the floor's whole resume",
    ),
    _bar(
        "redis",
        "warm resume",
        100,
        1.5,
        "the 50 re-run steps at the per-step cost, and " + _RESUME_START,
    ),
    _bar(
        "postgresql",
        "warm resume",
        10,
        1.5,
        _PG_RESUME_START + ", by itself ~0.6-0.8x the floor's whole resume",
    ),
    _bar(
        "postgresql",
        "warm resume",
        100,
        1.5,
        "the 50 re-run steps at the per-step cost, and " + _PG_RESUME_START,
    ),
    Goal(
        "a resume's own cost before its first re-run step ≤ 1 ms (Redis, 100-step run; issue 18)",
        at_most("redis: resume's own cost before the first re-run step, N=100", 1e-3, "s"),
        _RESUME_START,
    ),
]


def summary(report: Report) -> list[str]:
    rows = {row.name: row for row in report.rows}
    lines = [
        "",
        "## Goals (issues 4, 7 and 18), judged on this run",
        "",
        "| goal | this run | verdict |",
        "|---|---|---|",
    ]
    for goal in GOALS:
        verdict = goal.judge(rows)
        if verdict is None:
            lines.append(f"| {goal.text} | not measured in this run | - |")
            continue
        met, figure = verdict
        verdict_text = "met" if met else "missed: " + goal.why(rows)
        lines.append(f"| {goal.text} | {figure} | {verdict_text} |")
    return lines
