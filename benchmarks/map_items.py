"""A map step of 10,000 trivial items, concurrency 100: items/s and bytes written per item.

The workflow: ``make`` (``xs = list(range(10000))``, by a node so the list is not in the
definition record) then ``square``, a map over ``xs`` with concurrency 100 whose node returns
``{"v": item}`` (``benchmarks.nodes:map_item``). Each item's result is stored as it
completes, group-committed in batch records (``_blokrun.items.<id>/...``), and the step's
checkpoint then holds all 10,000 results (the batches are deleted).

The same items as a **plain step** (one node call returning the same output, one
checkpoint) runs interleaved with it, round by round, on the same target: the difference is
the cost of per-item durability. Targets: the embedded default (filesystem, fsync on) and
the throwaway Redis and PostgreSQL servers of the test suite (``tests/servers``).

- items/s: 10,000 / the wall time of a whole run (start records, ``make``, the items, the
  checkpoints, the end), median of a few rounds after a warm-up round; the same workflows
  with persistence off show the map's own cost.
- bytes written: the value bytes every save hands to the driver's store (keys, leases and
  deletes not counted), counted by a wrapper around the store (``save``, ``save_batch``,
  ``save_batch_fenced``, ``save_groups``), split into the item batch records, the step's
  final checkpoint and the rest (run, definition and head records, ``make``'s checkpoint
  of ``xs``). Records are sealed with the default envelope (zstd level 1 above 4 KiB).
- item batch records: how many the 10,000 items took; each is one save, one round trip.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from benchmarks.drivers import _launch, _Skipped, _stop
from blokrun import Runner
from blokrun.config import embedded_default
from blokrun.datasources import Datasource, create_store
from blokrun.persistence.codec import dumps_value
from blokrun.persistence.keys import BLOB_PREFIX, CHECKPOINT_PREFIX, ITEMS_PREFIX

if TYPE_CHECKING:
    from collections.abc import Sequence

    from benchmarks.harness import Report
    from blokrun.config import DatasourceSettings
    from blokrun.datasources import Entry, GroupStore, LeaseStore, Store
    from blokrun.datasources.protocol import Group
    from blokrun.spec.loader import Workflow

SECTION = "Map step: 10,000 trivial items, concurrency 100"
ITEMS = 10_000
CONCURRENCY = 100
SERVERS = ("redis", "postgresql")
COMPRESS_AT = 4096  # the default envelope compresses records from this size (zstd level 1)
LABELS = {
    "filesystem": "filesystem (embedded default, fsync on)",
    "redis": "redis",
    "postgresql": "postgresql",
}


def workflow(kind: str, *, persistence: bool, target: str = "default") -> dict[str, Any]:
    """``make`` then the items: as a map step (``kind="map"``) or one plain step."""
    step: dict[str, Any] = {"name": "square"}
    if kind == "map":
        step |= {
            "node": "benchmarks.nodes:map_item",
            "map": {"items": "${ctx.vars.xs}", "concurrency": CONCURRENCY},
            "inputs": {"x": "${ctx.item}"},
        }
    else:
        step |= {"node": "benchmarks.nodes:all_items", "inputs": {"xs": "${ctx.vars.xs}"}}
    return {
        "name": f"items-{kind}",
        "persistence": {"enabled": persistence, **({"targets": [target]} if persistence else {})},
        "steps": [
            {"name": "make", "node": "benchmarks.nodes:make_items", "inputs": {"n": ITEMS}},
            step,
        ],
    }


# -- counting what reaches the store -------------------------------------------------------


class Metered:
    """The driver's store, counting the value bytes of every save by kind of record."""

    def __init__(self, store: Store, prefix: str) -> None:
        self._store = store
        self._cut = len(prefix)
        self.bytes: Counter[str] = Counter()
        self.records: Counter[str] = Counter()
        self.checkpoints: dict[str, int] = {}  # checkpoint key -> bytes

    def reset(self) -> None:
        self.bytes.clear()
        self.records.clear()
        self.checkpoints.clear()

    def __getattr__(self, name: str) -> Any:  # everything else: the driver's store
        return getattr(self._store, name)

    def _count(self, entries: Sequence[Entry]) -> None:
        for full, data, _ in entries:
            key = full[self._cut :]
            if key.startswith(ITEMS_PREFIX):
                kind = "items"
            elif key.startswith(CHECKPOINT_PREFIX):
                kind = "checkpoints"
                self.checkpoints[key] = len(data)
            elif key.startswith(BLOB_PREFIX):
                kind = "blobs"
            else:
                kind = "other"
            self.bytes[kind] += len(data)
            self.records[kind] += 1

    async def save(self, key: str, data: bytes, ttl: float | None = None) -> None:
        self._count([(key, data, ttl)])
        await self._store.save(key, data, ttl)

    async def save_batch(self, entries: Sequence[Entry]) -> None:
        self._count(entries)
        await self._store.save_batch(entries)

    async def save_batch_fenced(self, entries: Sequence[Entry], lease_key: str, token: int) -> bool:
        self._count(entries)
        return await cast("LeaseStore", self._store).save_batch_fenced(entries, lease_key, token)

    async def save_groups(self, groups: Sequence[Group]) -> list[bool]:
        for entries, _, _ in groups:
            self._count(entries)
        return await cast("GroupStore", self._store).save_groups(groups)


def metered(settings: DatasourceSettings) -> tuple[Datasource, Metered]:
    meter = Metered(create_store(settings), settings.prefix)
    return Datasource(settings, cast("Store", meter)), meter


# -- measures ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    seconds: float
    items: int = 0  # bytes of the item batch records
    batches: int = 0  # item batch records
    final: int = 0  # bytes of the step's checkpoint (the run's last)
    total: int = 0  # bytes of every record


async def once(runner: Runner, wf: Workflow, rid: str, meter: Metered | None) -> Sample:
    if meter is not None:
        meter.reset()
    t0 = time.perf_counter()
    result = await runner.run(wf, request_id=rid)
    seconds = time.perf_counter() - t0
    out = result.vars["square"]
    if len(out["results"]) != ITEMS or out["failed"] or out["results"][-1] != {"v": ITEMS - 1}:
        raise AssertionError(f"{rid}: not the {ITEMS:,} results expected")
    if meter is None:
        return Sample(seconds)
    final = meter.checkpoints[max(meter.checkpoints)] + meter.bytes["blobs"]
    return Sample(
        seconds,
        meter.bytes["items"],
        meter.records["items"],
        final,
        sum(meter.bytes.values()),
    )


async def rounds(
    runner: Runner, wfs: dict[str, Workflow], meter: Metered | None, tag: str, n: int
) -> dict[str, list[Sample]]:
    """``n`` rounds after a warm-up one; each round runs every workflow once, in turn."""
    samples: dict[str, list[Sample]] = {kind: [] for kind in wfs}
    for r in range(n + 1):
        for kind, wf in wfs.items():
            sample = await once(runner, wf, f"{tag}-{kind}-{r}", meter)
            if r:
                samples[kind].append(sample)
    return samples


def med(samples: list[Sample], field: str) -> float:
    return statistics.median(float(getattr(s, field)) for s in samples)


def rate(samples: list[Sample]) -> float:
    return ITEMS / med(samples, "seconds")


async def off(report: Report, n: int) -> dict[str, float]:
    """Both workflows with persistence off: the map's own cost, no store."""
    async with Runner([]) as runner:
        wfs = {k: runner.load(workflow(k, persistence=False)) for k in ("map", "plain")}
        samples = await rounds(runner, wfs, None, "off", n)
    rates = {kind: rate(s) for kind, s in samples.items()}
    note = f"whole run / {ITEMS:,}; median of {n}"
    report.add(SECTION, "persistence off: map, items/s", rates["map"], "/s", note)
    report.add(SECTION, "persistence off: plain step, items/s", rates["plain"], "/s", note)
    return rates


async def on_target(
    report: Report, name: str, settings: DatasourceSettings, off: dict[str, float], n: int
) -> None:
    ds, meter = metered(settings)
    async with Runner([ds]) as runner:
        wfs = {
            k: runner.load(workflow(k, persistence=True, target=settings.name))
            for k in ("map", "plain")
        }
        samples = await rounds(runner, wfs, meter, settings.name, n)
    add_rows(report, name, samples["map"], samples["plain"], off, n)


def add_rows(
    report: Report,
    name: str,
    mapped: list[Sample],
    plain: list[Sample],
    off: dict[str, float],
    n: int,
) -> None:
    per = float(ITEMS)
    m_rate, p_rate = rate(mapped), rate(plain)
    produced = len(dumps_value([{"v": i} for i in range(ITEMS)])) / per
    batches = med(mapped, "batches")
    record = med(mapped, "items") / batches
    sealed = "uncompressed: under" if record < COMPRESS_AT else "compressed: over"
    m_total, p_total = med(mapped, "total") / per, med(plain, "total") / per
    rows = [
        ("map, items/s", m_rate, "/s",
         f"whole run / {ITEMS:,}; median of {n}, interleaved with the plain step; "
         f"{p_rate / m_rate:.1f}x the plain step's time; persistence off: {off['map']:,.0f}/s"),
        ("map, per-item cost of durability", 1 / m_rate - 1 / off["map"], "s",
         f"the map's time per item minus the same map with persistence off "
         f"({1e6 / off['map']:.1f} µs/item)"),
        ("plain step (same items, one result), items/s", p_rate, "/s",
         f"one node call returning the map's output; median of {n}"),
        ("map, item batch records", batches, "records",
         f"{per / batches:,.0f} items per record, one save (one round trip) each: an item "
         f"holds its slot of the {CONCURRENCY} until stored, so a batch fills while the "
         f"previous one is written"),
        ("map, bytes per item: item batches", med(mapped, "items") / per, "B",
         f"records of {record:,.0f} B, {sealed} the 4 KiB zstd threshold; "
         f"the results are {produced:.1f} B/item as JSON"),
        ("map, bytes per item: final checkpoint", med(mapped, "final") / per, "B",
         f"the step's checkpoint, all results (zstd); plain step's: "
         f"{med(plain, 'final') / per:.2f} B/item"),
        ("map, bytes per item: every record", m_total, "B",
         "item batches + checkpoints (make's xs too) + run, definition and head records"),
        ("plain step, bytes per item: every record", p_total, "B",
         f"the map writes {m_total / p_total:.2f}x as much"),
    ]  # fmt: skip
    for measure, value, unit, note in rows:
        report.add(SECTION, f"{name}: {measure}", value, unit, note)


async def run(report: Report, quick: bool = False) -> None:
    n = 1 if quick else 5
    rates = await off(report, n)
    with tempfile.TemporaryDirectory(prefix="blokrun-bench-map-") as tmp:
        await on_target(report, LABELS["filesystem"], embedded_default(Path(tmp)), rates, n)
        for driver in SERVERS:
            server, reason = _launch(driver, Path(tmp))
            if server is None:
                report.add(SECTION, LABELS[driver], _Skipped(), "", (reason or "")[:300])
                continue
            try:
                await on_target(
                    report, LABELS[driver], server.settings(driver, timeout=30.0), rates, n
                )
            finally:
                _stop(server)
