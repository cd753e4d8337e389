"""The run queue in PostgreSQL: a table beside the store's, claimed with ``SKIP LOCKED``.

Table ``<store table>_queue`` (hashed to fit 63 bytes, like the lease table)::

    prefix text COLLATE "C", request_id text COLLATE "C", PRIMARY KEY (prefix, request_id),
    priority integer, enqueued_at timestamptz, job bytea, worker text NULL,
    claimed_until timestamptz NULL, deliveries integer

    index (prefix, priority DESC, enqueued_at, request_id)    -- the claim order

Design decisions:

* ``prefix`` is the datasource's key prefix: every statement filters on it, so two
  datasources with different prefixes on one store never see each other's jobs, and
  the claim index starts with it (a prefix's jobs are one contiguous index range).
* ``claim`` is one autocommit statement: ``UPDATE ... WHERE request_id = ANY(ARRAY(SELECT
  ... ORDER BY priority DESC, enqueued_at, request_id LIMIT n FOR UPDATE SKIP LOCKED))``.
  ``ARRAY(...)`` is an init plan run exactly once (an ``IN (subquery)`` may be planned as
  a join that re-runs the locking subquery). ``LIMIT`` sits above the row locking, so a
  row skipped because a concurrent claimer holds it, or dropped because that claimer's
  update committed first (the recheck sees ``claimed_until`` in the future), does not use
  up the limit. Claimable means ``claimed_until IS NULL OR claimed_until <= now()``: an
  expired claim needs no sweeper, the next claim takes it (``deliveries`` + 1).
* The claim index is not partial: ``now()`` cannot appear in an index predicate, and a
  predicate on ``worker`` would exclude expired claims. It keeps the claimed rows too,
  which a claim steps over (at most the jobs running at that moment). No indexed column
  changes on claim, renew or release, so those updates are HOT (``fillfactor = 80``
  leaves room on each page for the new row versions).
* Time is the server's ``now()`` everywhere (claim expiry and the age order): no
  client clock skew between workers. ``enqueued_at`` is the server's time at enqueue,
  the job's own ``enqueued_at`` is kept as written inside the job.
* Only the holder renews, acks or releases (``WHERE worker = $``): a worker whose claim
  expired and was taken by another cannot remove or release the job from under it. A
  claim that expired but was not taken yet is still renewed (nobody else has the job).
* Setup runs in one transaction under the store's migration advisory lock (so workers
  starting at once, and a store migrating at the same moment, never race on ``CREATE
  TABLE``). The queue table's schema version is its comment (``blokrun queue v1``), not a
  row of ``blokrun_migrations``: the store's own version is untouched, so older blokruns
  still open the store. A table of that name without the comment is refused (it is not a
  queue table, e.g. a store configured with table ``<table>_queue``).
* A job whose bytes no longer decode stays claimed (it is re-delivered after its TTL,
  ``deliveries`` counting up) and is logged; it does not keep the other jobs of the same
  claim from their workers, and it is not deleted (a newer blokrun may read it).
* Errors come from the store's connection handling (:class:`DatasourceUnavailable` for
  connection-level failures, password masked); the datasource name and request id are
  filled in here. Every statement is bounded by the store's ``command_timeout``.
"""

from __future__ import annotations

import hashlib
import logging
import math
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import msgspec

from blokrun.datasources.datasource import validate_key
from blokrun.errors import DatasourceError
from blokrun.queues.queue import Claim, QueueStats, decode_job, encode_job

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Sequence

    from blokrun.datasources import Datasource
    from blokrun.datasources.postgresql import PostgresStore
    from blokrun.queues.queue import Job

__all__ = ["SCHEMA_VERSION", "PostgresQueue", "create", "queue_table"]

log = logging.getLogger("blokrun.worker")

_SUFFIX = "_queue"
_COMMENT = "blokrun queue v"
_INT4 = 2**31 - 1
_FREE = "(claimed_until IS NULL OR claimed_until <= now())"
_ORDER = "priority DESC, enqueued_at, request_id"
_SQL = {  # {q}: the quoted queue table; $1 is always the prefix
    "enqueue": "INSERT INTO {q} (prefix, request_id, priority, job) VALUES ($1, $2, $3, $4) "
    "ON CONFLICT (prefix, request_id) DO NOTHING",
    "claim": "WITH c AS (UPDATE {q} SET worker = $2, "
    "claimed_until = now() + make_interval(secs => $4), deliveries = deliveries + 1 "
    "WHERE prefix = $1 AND request_id = ANY(ARRAY(SELECT request_id FROM {q} "
    "WHERE prefix = $1 AND {free} ORDER BY {order} LIMIT $3 FOR UPDATE SKIP LOCKED)) "
    "RETURNING request_id, priority, enqueued_at, job, deliveries) "
    "SELECT request_id, job, deliveries FROM c ORDER BY {order}",
    "renew": "UPDATE {q} SET claimed_until = now() + make_interval(secs => $4) "
    "WHERE prefix = $1 AND request_id = ANY($2::text[]) AND worker = $3 RETURNING request_id",
    "ack": "DELETE FROM {q} WHERE prefix = $1 AND request_id = $2 AND worker = $3",
    "release": "UPDATE {q} SET worker = NULL, claimed_until = NULL "
    "WHERE prefix = $1 AND request_id = $2 AND worker = $3",
    "stats": "SELECT count(*) FILTER (WHERE {free}), count(*) FILTER (WHERE NOT {free}) "
    "FROM {q} WHERE prefix = $1",
    "holds": "SELECT EXISTS (SELECT 1 FROM {q} WHERE prefix = $1 AND request_id = $2)",
}
_MIGRATIONS: tuple[tuple[str, ...], ...] = (  # append only: version N is _MIGRATIONS[N - 1]
    (
        """CREATE TABLE IF NOT EXISTS {q} (
            prefix text COLLATE "C" NOT NULL,
            request_id text COLLATE "C" NOT NULL,
            priority integer NOT NULL,
            enqueued_at timestamptz NOT NULL DEFAULT now(),
            job bytea NOT NULL,
            worker text NULL,
            claimed_until timestamptz NULL,
            deliveries integer NOT NULL DEFAULT 0,
            PRIMARY KEY (prefix, request_id)) WITH (fillfactor = 80)""",
        "CREATE INDEX ON {q} (prefix, {order})",
    ),
)
#: The queue table's schema version this blokrun writes and reads.
SCHEMA_VERSION = len(_MIGRATIONS)
_LOCK_ID = 0x626C6F6B72756E  # the store's migration lock (blokrun.datasources.postgresql)


def queue_table(table: str) -> str:
    """The queue table beside ``table``: ``<table>_queue``, hashed to fit 63 bytes."""
    if len(table) <= 63 - len(_SUFFIX):
        return f"{table}{_SUFFIX}"
    digest = hashlib.sha256(table.encode()).hexdigest()[:8]
    return f"{table[:47]}_{digest}{_SUFFIX}"


class PostgresQueue:
    """The queue of one datasource (one prefix) in its store; see the module docstring."""

    def __init__(self, datasource: Datasource, store: PostgresStore) -> None:
        self._name = datasource.name
        self._prefix = datasource.settings.prefix or ""
        self._store = store
        self.table = queue_table(store.table)
        quoted = f'"{self.table}"'  # derived from a checked identifier: no quote inside
        self._quoted = quoted
        self._sql = {op: sql.format(q=quoted, free=_FREE, order=_ORDER) for op, sql in _SQL.items()}

    @asynccontextmanager
    async def _conn(self, op: str, key: str | None = None) -> AsyncIterator[Any]:
        """A pooled connection; errors name the datasource (and the request id)."""
        try:
            async with self._store.connection(f"queue {op}") as con:
                yield con
        except DatasourceError as exc:
            if exc.datasource is None:
                exc.datasource = self._name
                if exc.key is None:
                    exc.key = key
            raise

    async def setup(self) -> None:
        async with self._conn("setup") as con, con.transaction():
            await con.execute("SELECT pg_advisory_xact_lock($1)", _LOCK_ID)
            exists, comment = await con.fetchrow(
                "SELECT r IS NOT NULL, obj_description(r, 'pg_class') FROM to_regclass($1) AS r",
                self._quoted,
            )
            done = 0
            if exists:
                if not (comment or "").startswith(_COMMENT):
                    raise DatasourceError(
                        f"table {self.table!r} exists and is not a blokrun queue table "
                        "(is a store configured with that table?)",
                        datasource=self._name,
                    )
                try:
                    done = int(comment[len(_COMMENT) :])
                except ValueError:
                    raise DatasourceError(
                        f"queue table {self.table!r}: unreadable schema version {comment!r}",
                        datasource=self._name,
                    ) from None
            if done > SCHEMA_VERSION:
                raise DatasourceError(
                    f"queue table {self.table!r} is at schema version {done}, newer than "
                    f"this blokrun knows ({SCHEMA_VERSION}): upgrade blokrun",
                    datasource=self._name,
                )
            if done == SCHEMA_VERSION:
                return
            for version in range(done + 1, SCHEMA_VERSION + 1):
                for statement in _MIGRATIONS[version - 1]:
                    await con.execute(statement.format(q=self._quoted, order=_ORDER))
            # COMMENT takes no parameters; the text is ours (digits only), quoted literally.
            await con.execute(f"COMMENT ON TABLE {self._quoted} IS '{_COMMENT}{SCHEMA_VERSION}'")

    async def enqueue(self, job: Job) -> bool:
        rid = job.request_id
        validate_key(rid)
        if not -_INT4 - 1 <= job.priority <= _INT4:
            raise DatasourceError(
                f"enqueue: priority {job.priority} out of range (32-bit integer)",
                datasource=self._name,
                key=rid,
            )
        data = encode_job(job)
        async with self._conn("enqueue", rid) as con:
            status: str = await con.execute(
                self._sql["enqueue"], self._prefix, rid, job.priority, data
            )
        return status == "INSERT 0 1"

    async def claim(self, worker: str, n: int, ttl: float) -> list[Claim]:
        if n <= 0:
            return []
        ttl = self._check_ttl("claim", ttl)
        async with self._conn("claim") as con:
            rows = await con.fetch(self._sql["claim"], self._prefix, worker, n, ttl)
        out = []
        for rid, data, deliveries in rows:
            try:
                job = decode_job(data)
            except msgspec.DecodeError as exc:  # left claimed: see the module docstring
                log.error(
                    "queue %s: job %s does not decode, left claimed: %s", self._name, rid, exc
                )
                continue
            out.append(Claim(job, deliveries))
        return out

    async def renew(self, worker: str, request_ids: Sequence[str], ttl: float) -> set[str]:
        if not request_ids:
            return set()
        ttl = self._check_ttl("renew", ttl)
        async with self._conn("renew") as con:
            rows = await con.fetch(self._sql["renew"], self._prefix, list(request_ids), worker, ttl)
        return {row[0] for row in rows}

    async def ack(self, worker: str, request_id: str) -> None:
        async with self._conn("ack", request_id) as con:
            await con.execute(self._sql["ack"], self._prefix, request_id, worker)

    async def release(self, worker: str, request_id: str) -> None:
        async with self._conn("release", request_id) as con:
            await con.execute(self._sql["release"], self._prefix, request_id, worker)

    async def holds(self, request_id: str) -> bool:
        async with self._conn("holds", request_id) as con:
            found: bool = await con.fetchval(self._sql["holds"], self._prefix, request_id)
        return found

    async def stats(self) -> QueueStats:
        async with self._conn("stats") as con:
            waiting, claimed = await con.fetchrow(self._sql["stats"], self._prefix)
        return QueueStats(waiting=waiting, claimed=claimed)

    def _check_ttl(self, op: str, ttl: float) -> float:
        if not math.isfinite(ttl) or ttl <= 0:
            raise DatasourceError(
                f"{op}: invalid claim ttl {ttl!r}: expected a positive number",
                datasource=self._name,
            )
        return float(ttl)


def create(datasource: Datasource) -> PostgresQueue:
    """The queue of ``datasource`` (connected, type postgresql), in its store's database."""
    from blokrun.datasources.postgresql import PostgresStore

    store = datasource.store
    if not isinstance(store, PostgresStore):
        raise TypeError(f"not a PostgreSQL store: {type(store).__name__}")
    return PostgresQueue(datasource, store)
