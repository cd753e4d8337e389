"""Is every datasource usable? ``blokrun doctor`` and container health checks.

:func:`check_health` checks every datasource at once, each on its own:

1. **connect** -- what every command does first (a ping; on PostgreSQL the migrations, on
   MongoDB the TTL index, on the filesystem the folder: created if missing, like a run);
   a server that answers but refuses (a wrong password) is reachable, not healthy;
2. **describe** -- the driver's :meth:`~blokrun.datasources.Datasource.describe`: server
   version, the state of blokrun's tables / indexes / folder (``unknown`` for a driver that
   does not implement it);
3. **latency** -- the median of a few ``exists`` of a key that is never there (a read
   that touches nothing), in milliseconds;
4. **leases** -- when leases are on and the driver keeps them, a ``read_lease`` of a lease
   nobody holds (on PostgreSQL it reads the lease table).

Each stage has a deadline (``stage_timeout``, by default the datasource's own ``TIMEOUT``): a
server that does not answer is reported as "unreachable after N s" (or "no answer after N s"
in a later stage), and the stages after it are skipped, never waited for. Then, if
``BLOKRUN_QUEUE_DATASOURCE`` names one, the run queue: opened and set up the way a worker
does (idempotent), then its job counts. Everything reported is redacted with the secrets of
every configured datasource.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio

from blokrun.errors import BlokrunError, ConfigError, DatasourceError, DatasourceUnavailable
from blokrun.queues.queue import can_hold_queue, open_queue
from blokrun.redact import Redactor

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Mapping

    from blokrun.datasources import Datasource

__all__ = ["PROBE_KEY", "DatasourceHealth", "HealthReport", "QueueHealth", "check_health"]

#: The key the latency probes look for (never written) and the lease nobody holds.
PROBE_KEY = "_blokrun.doctor.probe"
PROBES = 5


@dataclass(frozen=True, slots=True)
class DatasourceHealth:
    """One datasource's check. ``where``: its URL (password masked) or folder;
    ``latency_ms``: the median of ``latencies_ms``; ``leases``: ``off``, ``not kept by this
    driver``, ``ok, ...``, ``FAIL`` or ``not checked`` (an earlier stage failed)."""

    name: str
    driver: str
    where: str
    reachable: bool
    latency_ms: float | None
    latencies_ms: tuple[float, ...]
    server: str
    version: str
    schema: str
    keeps_leases: bool
    leases: str
    notes: tuple[str, ...]
    problems: tuple[str, ...]
    seconds: float

    @property
    def ok(self) -> bool:
        return self.reachable and not self.problems

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["status"] = "ok" if self.ok else "FAIL"
        return out


@dataclass(frozen=True, slots=True)
class QueueHealth:
    """The run queue: checked when ``configured`` (BLOKRUN_QUEUE_DATASOURCE); else where
    ``submit`` and ``worker`` would keep it (``datasource`` None: nowhere)."""

    configured: bool
    datasource: str | None
    backend: str | None
    ok: bool
    waiting: int | None = None
    claimed: int | None = None
    problem: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["status"] = ("ok" if self.ok else "FAIL") if self.configured else "not configured"
        return out


@dataclass(frozen=True, slots=True)
class HealthReport:
    """Every datasource's check, the lease set-up and the queue's."""

    datasources: tuple[DatasourceHealth, ...]
    lease_ttl: float | None
    queue: QueueHealth

    @property
    def healthy(self) -> bool:
        return all(d.ok for d in self.datasources) and self.queue.ok

    @property
    def lease_datasources(self) -> tuple[str, ...]:
        """The datasources that keep leases (a run's lease is on its first such target)."""
        return tuple(d.name for d in self.datasources if d.keeps_leases)

    def to_dict(self) -> dict[str, Any]:
        return {
            "healthy": self.healthy,
            "datasources": [d.to_dict() for d in self.datasources],
            "leases": {
                "enabled": self.lease_ttl is not None,
                "ttl": self.lease_ttl,
                "datasources": list(self.lease_datasources),
            },
            "queue": self.queue.to_dict(),
        }


def _message(exc: Exception) -> str:
    """What went wrong, without the datasource's name (the report's row names it)."""
    if isinstance(exc, DatasourceError):
        return exc.detail
    return str(exc) if isinstance(exc, BlokrunError) else f"{type(exc).__name__}: {exc}"


class _Stop(Exception):
    """The check cannot go on: not connected, or a stage got no answer in time."""


class _Check:
    """The stages of one datasource's check; problems gathered, not raised."""

    def __init__(self, ds: Datasource, timeout: float, lease_ttl: float | None) -> None:
        self.ds, self.timeout, self.lease_ttl = ds, timeout, lease_ttl
        self.problems: list[str] = []
        self.latencies: list[float] = []
        self.answered = self.stalled = False
        self.leases = "off" if lease_ttl is None else "not kept by this driver"
        if lease_ttl is not None and ds.supports_leases:
            self.leases = "not checked"

    async def stage(self, name: str, body: Callable[[], Awaitable[Any]]) -> Any:
        """``body()`` within the deadline; None (and a problem noted) if it failed."""
        try:
            with anyio.fail_after(self.timeout):
                return await body()
        except TimeoutError:
            self.stalled = True
            if name == "connect":
                self.problems.append(f"unreachable after {self.timeout:g} s")
            else:
                self.problems.append(f"{name}: no answer after {self.timeout:g} s")
            raise _Stop from None
        except Exception as exc:  # a health check reports whatever a driver raises
            if name != "connect":
                self.problems.append(f"{name}: {_message(exc)}")
                return None
            # refused (a wrong password, a schema too new) is not unreachable: it answered
            self.answered = isinstance(exc, DatasourceError) and not isinstance(
                exc, DatasourceUnavailable
            )
            what = "connect failed" if self.answered else "unreachable"
            self.problems.append(f"{what}: {_message(exc)}")
            raise _Stop from None

    async def probes(self) -> None:
        for _ in range(PROBES):
            started = time.perf_counter()
            await self.ds.exists(PROBE_KEY)
            self.latencies.append(round((time.perf_counter() - started) * 1000, 3))

    async def lease(self) -> None:
        self.leases = "FAIL"
        await self.ds.read_lease(PROBE_KEY)
        atomic = self.ds.capabilities.atomic_fencing
        self.leases = "ok, atomic fencing" if atomic else "ok, fencing not atomic"

    async def run(self) -> DatasourceHealth:
        ds, started = self.ds, time.monotonic()
        described = None
        try:
            await self.stage("connect", ds.connect)
            self.answered = True
            described = await self.stage("describe", ds.describe)
            if described is not None:  # what it found first: it explains what fails next
                self.problems += described.problems
            await self.stage("latency", self.probes)
            if self.leases == "not checked":
                await self.stage("leases", self.lease)
        except _Stop:
            pass
        return DatasourceHealth(
            name=ds.name,
            driver=ds.type,
            where=ds.settings.location().partition(" ")[2],  # without the type
            reachable=self.answered and not self.stalled,
            latency_ms=statistics.median(self.latencies) if len(self.latencies) == PROBES else None,
            latencies_ms=tuple(self.latencies),
            server=described.server if described else "unknown",
            version=described.version if described else "unknown",
            schema=described.schema if described else "unknown",
            keeps_leases=ds.supports_leases,
            leases=self.leases,
            notes=described.notes if described else (),
            problems=tuple(self.problems),
            seconds=round(time.monotonic() - started, 3),
        )


def _auto_queue(datasources: Mapping[str, Datasource]) -> Datasource | None:
    """Where ``submit`` and ``worker`` would keep the queue with no BLOKRUN_QUEUE_DATASOURCE."""
    able = [ds for ds in datasources.values() if can_hold_queue(ds)]
    shared = [ds for ds in able if ds.type != "memory"]
    return (shared or able)[0] if able else None


async def _check_queue(
    datasources: Mapping[str, Datasource], name: str | None, stage_timeout: float | None
) -> QueueHealth:
    if name is None:
        auto = _auto_queue(datasources)
        if auto is None:
            return QueueHealth(False, None, None, ok=True)
        return QueueHealth(False, auto.name, auto.type, ok=True)
    ds = datasources[name]
    fail = QueueHealth(True, name, ds.type, ok=False)
    if not ds.is_connected:
        return dataclasses.replace(fail, problem=f"its datasource {name!r} is unreachable")
    queue = open_queue(ds)  # a ConfigError (a type that cannot hold it) is bad configuration
    try:
        with anyio.fail_after(stage_timeout or ds.settings.timeout):
            await queue.setup()
            stats = await queue.stats()
    except TimeoutError:
        seconds = stage_timeout or ds.settings.timeout
        return dataclasses.replace(fail, problem=f"no answer after {seconds:g} s")
    except ConfigError:
        raise
    except Exception as exc:
        return dataclasses.replace(fail, problem=_message(exc))
    return QueueHealth(True, name, ds.type, ok=True, waiting=stats.waiting, claimed=stats.claimed)


def _redact(item: Any, redactor: Redactor) -> Any:
    """``item`` (a frozen dataclass) with every string in it redacted."""
    changes: dict[str, Any] = {}
    for f in dataclasses.fields(item):
        value = getattr(item, f.name)
        if isinstance(value, str):
            changes[f.name] = redactor.text(value)
        elif isinstance(value, tuple) and all(isinstance(v, str) for v in value):
            changes[f.name] = tuple(redactor.text(v) for v in value)
    return dataclasses.replace(item, **changes)


async def check_health(
    datasources: Mapping[str, Datasource],
    *,
    lease_ttl: float | None,
    queue_datasource: str | None = None,
    stage_timeout: float | None = None,
) -> HealthReport:
    """Check every datasource of ``datasources`` (not connected: each is connected, checked
    and closed here), the lease set-up and the queue (see the module docstring).

    ``stage_timeout``: seconds each stage of a check may take; ``None``: each datasource's
    own ``TIMEOUT``. Raises only for bad configuration (:class:`~blokrun.errors.ConfigError`).
    """
    if queue_datasource is not None and queue_datasource not in datasources:
        raise ConfigError(
            f"BLOKRUN_QUEUE_DATASOURCE={queue_datasource!r} is not a configured datasource",
            variable="BLOKRUN_QUEUE_DATASOURCE",
        )
    every = [ds.settings for ds in datasources.values()]
    redactor = Redactor.for_urls(
        *(url for s in every for url in (s.url, s.endpoint_url)),
        others=[key for s in every for key in (s.secret_access_key, s.access_key_id)],
    )
    results: dict[str, DatasourceHealth] = {}

    async def one(ds: Datasource) -> None:
        check = _Check(ds, stage_timeout or ds.settings.timeout, lease_ttl)
        results[ds.name] = await check.run()

    async with AsyncExitStack() as stack:
        for ds in datasources.values():
            stack.push_async_callback(ds.close)
        async with anyio.create_task_group() as tg:
            for ds in datasources.values():
                tg.start_soon(one, ds)
        queue = await _check_queue(datasources, queue_datasource, stage_timeout)
    return HealthReport(
        datasources=tuple(_redact(results[name], redactor) for name in datasources),
        lease_ttl=lease_ttl,
        queue=_redact(queue, redactor),
    )
