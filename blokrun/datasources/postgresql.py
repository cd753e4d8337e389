"""PostgreSQL store on an asyncpg pool: one row per key, one round trip per operation.

Schema (``settings.table``, default ``blokrun_store``)::

    key text COLLATE "C" PRIMARY KEY, data bytea NOT NULL,
    expires_at timestamptz NULL, updated_at timestamptz NOT NULL DEFAULT now()

and its leases, in ``<table>_leases`` (schema version 2)::

    key text COLLATE "C" PRIMARY KEY, owner text NOT NULL, token bigint NOT NULL,
    expires_at timestamptz NOT NULL

Both are created by versioned migrations on the first :meth:`PostgresStore.connect`: the
applied versions of each table are recorded in ``blokrun_migrations``, and pending ones run
in one transaction under ``pg_advisory_xact_lock``, so two processes connecting at once
never race on ``CREATE TABLE`` (the loser waits, then finds nothing left to do). A table
migrated by a newer blokrun is refused rather than misread.

Design decisions:

* ``COLLATE "C"`` on the key makes the primary-key btree order keys by code point (UTF-8
  byte order, whatever the database locale), so ``keys(prefix)`` is a plain range
  ``key >= prefix AND key < successor(prefix)`` served by that index: no LIKE, so no
  metacharacter (``%``, ``_``, ``\\``) needs escaping and the plan stays an index scan
  even as a generic (cached) plan. The contract tests ``EXPLAIN`` it.
* ``keys()`` uses keyset pagination (``key > last ORDER BY key LIMIT 1000``): each page
  borrows a connection for one query and gives it back before yielding, so an abandoned
  iteration holds no connection, transaction or cursor.
* Expiry is stored as ``expires_at = now() + ttl`` and filtered with the server's
  ``now()`` on every read (no client/server clock skew). PostgreSQL does not expire rows:
  an expired row stays until overwritten, deleted or removed by :meth:`purge_expired`,
  and is never returned or counted meanwhile.
* Every write is ``INSERT ... ON CONFLICT (key) DO UPDATE`` (atomic replace).
  ``save_batch`` is one statement over ``unnest`` arrays, hence atomic, and faster than
  ``executemany`` in a transaction (``benchmarks/PROFILE.md``). Duplicate keys are
  collapsed first (last one wins), because one statement cannot update a row twice.
  ``load_batch`` and ``delete_batch`` use ``key = ANY($1)``.
* The pool's reset query is disabled: by default asyncpg sends ``SELECT
  pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL`` each time a connection
  goes back to the pool, a hidden second round trip per operation (PROFILE.md). We pass
  ``reset=_keep_session`` (a no-op): asyncpg still rolls back a transaction left open, and
  this driver never changes session state (no ``SET``, ``LISTEN``, session advisory locks
  or cursors outside a transaction). An injected pool keeps its own ``reset`` policy.
* One connection is kept out of the pool, and used by whichever operation finds it free
  (with group commit, the checkpoint writer nearly always): asyncpg's acquire and release
  cost ~45 µs of client CPU per statement, a tenth of a checkpoint. It goes back to the
  pool (which rolls back, checks and replaces it) after any error or cancellation on it,
  when its borrower left a transaction open or a listener on it, when its server closed
  it while idle, whenever a borrower waits in the pool for a connection, and on
  ``close``; a handle used after its block refuses, as a pool's does. Not with an
  injected pool.
* Leases (:class:`~blokrun.datasources.protocol.LeaseStore`) are rows of the lease table,
  timed by the server's ``now()``; each operation is one autocommit statement.
  ``acquire_lease`` is ``INSERT ... ON CONFLICT DO UPDATE SET token = GREATEST(token,
  clock) + 1 ... WHERE expired OR same owner`` (a new row's token is the server clock in
  microseconds, so a deleted row never issues an old token again): the unique key
  serialises racing acquirers, so exactly one wins.
  A refused acquire reads the holder in the same statement (``FOR SHARE``, which follows
  the row to its newest version); only when the holder's row was inserted after the
  statement's snapshot (a racing first acquire) is the statement run again. Release sets
  ``expires_at`` to the epoch and keeps the token; ``delete_lease`` drops the row (the next
  token still comes from the clock, above any issued before). A table name too long for
  ``_leases`` gets a hashed lease table name.
* Fencing is atomic (``atomic_fencing``): ``save_batch_fenced`` is the ``save_batch``
  statement behind a CTE that locks the lease row ``FOR SHARE`` where ``token = $n``; the
  rows are written only if it found one. The lock conflicts with every ``UPDATE`` of the
  lease row, so an acquire that would raise the token waits for the write to commit, and
  a write that starts after the acquire committed sees the new token and writes nothing.
* Bounds: ``timeout`` (connect) and ``command_timeout`` (every query) are
  ``settings.timeout``, and so is the wait for a free pooled connection.
* Errors: connection-level failures (socket errors, timeouts, SQLSTATE classes 08, 28, 53,
  57) become :class:`DatasourceUnavailable`, naming the URL with its password masked
  (and the password scrubbed from the library's text); anything else is
  :class:`DatasourceError`. All SQL is parameterised; the table name is checked as an
  identifier and always quoted.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import anyio
import asyncpg  # type: ignore[import-untyped,unused-ignore]  # asyncpg ships no type hints

from blokrun.datasources.index import (
    IndexRow,
    decode_row,
    is_index_key,
    micros,
    ordered,
    split_index,
)
from blokrun.datasources.protocol import (
    OWNED_MARK,
    RELEASE_KEY,
    Capabilities,
    LeaseState,
    StoreHealth,
)
from blokrun.errors import DatasourceError, DatasourceUnavailable
from blokrun.redact import mask_url

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Mapping, Sequence

    from blokrun.datasources.index import IndexQuery
    from blokrun.datasources.protocol import Entry, Group
    from blokrun.datasources.settings import DatasourceSettings

__all__ = ["PostgresStore", "create", "lease_table", "prefix_end"]

DEFAULT_TABLE = "blokrun_store"
DEFAULT_POOL_SIZE = 10
PAGE = 1000
_CAPS = Capabilities(
    native_ttl=False,
    native_batch=True,
    atomic_batch=True,
    self_timed=True,
    leases=True,
    atomic_fencing=True,
    group_commit=True,
    owned_writes=True,
    release_in_batch=True,
    lease_reads=True,
    lease_writes=True,
    lease_matches=True,
)
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
_LOCK_ID = 0x626C6F6B72756E  # "blokrun": the advisory lock serialising migrations
_UNAVAILABLE_SQLSTATE = ("08", "28", "53", "57")
_LIVE = "(expires_at IS NULL OR expires_at > now())"
_UPSERT = (
    "ON CONFLICT (key) DO UPDATE SET data = EXCLUDED.data, expires_at = EXCLUDED.expires_at, "
    "updated_at = now()"
)
_ROWS = (  # the rows of save_batch: $1 keys, $2 data, $3 ttls
    "SELECT k, d, now() + make_interval(secs => s) "
    "FROM unnest($1::text[], $2::bytea[], $3::float8[]) AS u(k, d, s)"
)
_LEASE = "owner, token, extract(epoch FROM expires_at)::float8"
# The lease $1 taken for owner $2 (ttl $3 s) when it is free, expired or already $2's: the
# CTE ``won``, then the lease as stored -- the holder, read FOR SHARE so that a version newer
# than the snapshot (the one ON CONFLICT saw) is followed; empty only if the row is newer
# than the snapshot (a racing first acquire: the statement is run again).
# The token (protocol.next_token): the server clock in microseconds for a new row, else
# max(token, that clock) + 1 -- so it never goes back, not even once the row was deleted
# (gc), and a new row's token is exactly _US while any other is above it (_FRESH).
_US = "floor(extract(epoch FROM now()) * 1000000)::int8"
_WON = (
    "won AS (INSERT INTO {l} AS l (key, owner, token, expires_at) "
    "VALUES ($1, $2, " + _US + ", now() + make_interval(secs => $3)) ON CONFLICT (key) DO "
    "UPDATE SET owner = EXCLUDED.owner, token = GREATEST(l.token, EXCLUDED.token) + 1, "
    "expires_at = EXCLUDED.expires_at "
    "WHERE l.expires_at <= now() OR l.owner = EXCLUDED.owner RETURNING {lease})"
)
_FRESH = "EXISTS (SELECT FROM won WHERE token = " + _US + ")"
_TAKEN = (
    "SELECT * FROM won UNION ALL SELECT * FROM (SELECT {lease} FROM {l} "
    "WHERE key = $1 AND NOT EXISTS (SELECT FROM won) FOR SHARE) AS held"
)
_SQL = {  # {t}: the quoted table, {l}: its quoted lease table
    "save": "INSERT INTO {t} (key, data, expires_at) "
    "VALUES ($1, $2, now() + make_interval(secs => $3)) {upsert}",
    "save_batch": "INSERT INTO {t} (key, data, expires_at) {rows} {upsert}",
    "load": "SELECT data FROM {t} WHERE key = $1 AND {live}",
    "exists": "SELECT EXISTS (SELECT FROM {t} WHERE key = $1 AND {live})",
    "delete": "DELETE FROM {t} WHERE key = $1 RETURNING {live}",
    "load_batch": "SELECT key, data FROM {t} WHERE key = ANY($1::text[]) AND {live}",
    "delete_batch": "WITH gone AS (DELETE FROM {t} WHERE key = ANY($1::text[]) "
    "RETURNING expires_at) SELECT count(*) FILTER (WHERE {live}) FROM gone",
    "keys": "SELECT key FROM {t} WHERE key >= $1 AND key > $2 AND key < $3 AND {live} "
    "ORDER BY key LIMIT {page}",
    "keys_open": "SELECT key FROM {t} WHERE key >= $1 AND key > $2 AND {live} "
    "ORDER BY key LIMIT {page}",
    "size": "SELECT count(*) FROM {t} WHERE {live}",
    "purge": "DELETE FROM {t} WHERE expires_at <= now()",
    "acquire": "WITH " + _WON + " " + _TAKEN,
    # acquire, then the rows of keys $4 -- read in the statement's snapshot, which may
    # predate a previous holder's last write (the acquire waited for it): used only when
    # the lease row is new (the last column), when no holder wrote before (see
    # acquire_lease_reading)
    "acquire_reading": "WITH " + _WON + ", got AS (SELECT key, data FROM {t} WHERE key = "  # noqa: S608 -- constants only
    "ANY($4::text[]) AND {live}) SELECT *, ARRAY(SELECT key FROM got ORDER BY key), "
    "ARRAY(SELECT data FROM got ORDER BY key), " + _FRESH + " FROM (" + _TAKEN + ") AS lease",
    # acquire_reading, then -- only for a new lease row (no holder wrote before, so the
    # snapshot shows every write there is) of which none of keys $4 has a live row -- the
    # rows $5-$7 written in the same statement (Capabilities.lease_writes); the last
    # columns say whether they were, and whether the row is new
    "acquire_writing": "WITH " + _WON + ", got AS (SELECT key, data FROM {t} WHERE key = "  # noqa: S608 -- constants only
    "ANY($4::text[]) AND {live}), ok AS (SELECT FROM won WHERE token = " + _US + " AND NOT EXISTS "
    "(SELECT FROM got)), w AS (INSERT INTO {t} (key, data, expires_at) SELECT k, d, now() + "
    "make_interval(secs => s) FROM unnest($5::text[], $6::bytea[], $7::float8[]) AS u(k, d, s) "
    "WHERE EXISTS (SELECT FROM ok) {upsert}) SELECT *, ARRAY(SELECT key FROM got ORDER BY "
    "key), ARRAY(SELECT data FROM got ORDER BY key), EXISTS (SELECT FROM ok), "
    + _FRESH
    + " FROM ("
    + _TAKEN
    + ") AS lease",
    # the same with run index rows ($8-$13)
    "acquire_writing_ix": "WITH " + _WON + ", got AS (SELECT key, data FROM {t} WHERE key = "  # noqa: S608 -- constants only
    "ANY($4::text[]) AND {live}), ok AS (SELECT FROM won WHERE token = " + _US + " AND NOT EXISTS "
    "(SELECT FROM got)), w AS (INSERT INTO {t} (key, data, expires_at) SELECT k, d, now() + "
    "make_interval(secs => s) FROM unnest($5::text[], $6::bytea[], $7::float8[]) AS u(k, d, s) "
    "WHERE EXISTS (SELECT FROM ok) {upsert}), ix AS (INSERT INTO {r} AS r (space, rid, status, "
    "neg, started_at, workflow) SELECT * FROM unnest($8::text[], $9::text[], $10::text[], "
    "$11::int8[], $12::float8[], $13::text[]) WHERE EXISTS (SELECT FROM ok) {ix_upsert}) "
    "SELECT *, ARRAY(SELECT key FROM got ORDER BY key), ARRAY(SELECT data FROM got ORDER BY "
    "key), EXISTS (SELECT FROM ok), " + _FRESH + " FROM (" + _TAKEN + ") AS lease",
    # acquire, then a compare-and-set of one key ($4): its live row updated to $5 (ttl $6)
    # only where it holds exactly $7, and then the rows $8-$10 written -- an UPDATE's
    # condition is checked again on the row's latest version (a previous holder's write
    # the statement's snapshot predates included), so this holds whatever the lease's past
    # (Capabilities.lease_matches). The last column says whether it was written.
    "acquire_matching": "WITH " + _WON + ", h AS (UPDATE {t} SET data = $5, expires_at = "  # noqa: S608 -- constants only
    "now() + make_interval(secs => $6), updated_at = now() WHERE key = $4 AND data = $7 AND "
    "{live} AND EXISTS (SELECT FROM won) RETURNING key), w AS (INSERT INTO {t} (key, data, "
    "expires_at) SELECT k, d, now() + make_interval(secs => s) FROM unnest($8::text[], "
    "$9::bytea[], $10::float8[]) AS u(k, d, s) WHERE EXISTS (SELECT FROM h) {upsert}) "
    "SELECT *, EXISTS (SELECT FROM h) FROM (" + _TAKEN + ") AS lease",
    # the same with run index rows ($11-$16)
    "acquire_matching_ix": "WITH " + _WON + ", h AS (UPDATE {t} SET data = $5, expires_at = "  # noqa: S608 -- constants only
    "now() + make_interval(secs => $6), updated_at = now() WHERE key = $4 AND data = $7 AND "
    "{live} AND EXISTS (SELECT FROM won) RETURNING key), w AS (INSERT INTO {t} (key, data, "
    "expires_at) SELECT k, d, now() + make_interval(secs => s) FROM unnest($8::text[], "
    "$9::bytea[], $10::float8[]) AS u(k, d, s) WHERE EXISTS (SELECT FROM h) {upsert}), ix AS "
    "(INSERT INTO {r} AS r (space, rid, status, neg, started_at, workflow) SELECT * FROM "
    "unnest($11::text[], $12::text[], $13::text[], $14::int8[], $15::float8[], $16::text[]) "
    "WHERE EXISTS (SELECT FROM h) {ix_upsert}) SELECT *, EXISTS (SELECT FROM h) FROM ("
    + _TAKEN
    + ") AS lease",
    "renew": "UPDATE {l} SET owner = $2, expires_at = now() + make_interval(secs => $4) "
    "WHERE key = $1 AND token = $3",
    "release": "UPDATE {l} SET expires_at = 'epoch' WHERE key = $1 AND token = $2",
    "save_batch_fenced": "WITH fence AS (SELECT FROM {l} WHERE key = $4 AND token = $5 "
    "FOR SHARE), w AS (INSERT INTO {t} (key, data, expires_at) {rows} "
    "WHERE EXISTS (SELECT FROM fence) {upsert}) SELECT EXISTS (SELECT FROM fence)",
    # Group commit: the saves of many runs in one statement. $1-$3 the rows, $4 each row's
    # group; $5/$6 each group's lease key (NULL: not fenced) and token. Groups whose fence
    # holds are written (a key twice: the last wins); their numbers are returned.
    "save_groups": "WITH g AS (SELECT * FROM unnest($5::text[], $6::int8[]) "
    "WITH ORDINALITY AS g(lk, tok, gi)), "
    "fence AS (SELECT g.gi FROM g JOIN {l} AS l ON l.key = g.lk AND l.token = g.tok "
    "FOR SHARE OF l), ok AS (SELECT gi FROM fence UNION ALL SELECT gi FROM g WHERE lk IS NULL), "
    "w AS (INSERT INTO {t} (key, data, expires_at) SELECT DISTINCT ON (k) k, d, "
    "now() + make_interval(secs => s) FROM unnest($1::text[], $2::bytea[], $3::float8[], "
    "$4::int8[]) WITH ORDINALITY AS u(k, d, s, gi, n) WHERE gi IN (SELECT gi FROM ok) "
    "ORDER BY k, n DESC {upsert}) SELECT coalesce(array_agg(gi), '{{}}') FROM ok",
    # -- the run index (see "Run index" above) --
    "save_batch_ix": "WITH w AS (INSERT INTO {t} (key, data, expires_at) {rows} {upsert}) "
    "INSERT INTO {r} AS r (space, rid, status, neg, started_at, workflow) "
    "SELECT * FROM unnest($4::text[], $5::text[], $6::text[], $7::int8[], $8::float8[], "
    "$9::text[]) {ix_upsert}",
    "save_batch_fenced_ix": "WITH fence AS (SELECT FROM {l} WHERE key = $4 AND token = $5 "
    "FOR SHARE), w AS (INSERT INTO {t} (key, data, expires_at) {rows} "
    "WHERE EXISTS (SELECT FROM fence) {upsert}), ix AS (INSERT INTO {r} AS r (space, rid, "
    "status, neg, started_at, workflow) SELECT * FROM unnest($6::text[], $7::text[], "
    "$8::text[], $9::int8[], $10::float8[], $11::text[]) WHERE EXISTS (SELECT FROM fence) "
    "{ix_upsert}) SELECT EXISTS (SELECT FROM fence)",
    "ix_query": "SELECT rid, status, started_at, workflow FROM {r} WHERE space = $1",
    "ix_counts": "SELECT status, count(*) FROM {r} WHERE space = $1 GROUP BY status",
    "ix_drop": "DELETE FROM {r} WHERE space = $1 AND rid = $2 AND status = $3 AND neg = $4 "
    "AND workflow = $5",
    "ix_replace": "UPDATE {r} SET status = $6, neg = $7, started_at = $8, workflow = $9 "
    "WHERE space = $1 AND rid = $2 AND status = $3 AND neg = $4 AND workflow = $5",
    "ix_fill": "INSERT INTO {r} (space, rid, status, neg, started_at, workflow) "
    "SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::int8[], $5::float8[], "
    "$6::text[]) ON CONFLICT (space, rid) DO NOTHING",
    "ix_built": "SELECT EXISTS (SELECT FROM {b} WHERE space = $1)",
    "ix_mark_built": "INSERT INTO {b} (space) VALUES ($1) ON CONFLICT DO NOTHING",
    "ix_remove": "DELETE FROM {r} WHERE space = $1 AND rid = ANY($2::text[])",
    # ix_remove behind the fence of save_batch_fenced ($3/$4: lease key and token)
    "ix_remove_fenced": "WITH fence AS (SELECT FROM {l} WHERE key = $3 AND token = $4 FOR "
    "SHARE), gone AS (DELETE FROM {r} WHERE space = $1 AND rid = ANY($2::text[]) AND EXISTS "
    "(SELECT FROM fence)) SELECT EXISTS (SELECT FROM fence)",
    "save_groups_ix": "WITH g AS (SELECT * FROM unnest($5::text[], $6::int8[]) "
    "WITH ORDINALITY AS g(lk, tok, gi)), "
    "fence AS (SELECT g.gi FROM g JOIN {l} AS l ON l.key = g.lk AND l.token = g.tok "
    "FOR SHARE OF l), ok AS (SELECT gi FROM fence UNION ALL SELECT gi FROM g WHERE lk IS NULL), "
    "w AS (INSERT INTO {t} (key, data, expires_at) SELECT DISTINCT ON (k) k, d, "
    "now() + make_interval(secs => s) FROM unnest($1::text[], $2::bytea[], $3::float8[], "
    "$4::int8[]) WITH ORDINALITY AS u(k, d, s, gi, n) WHERE gi IN (SELECT gi FROM ok) "
    "ORDER BY k, n DESC {upsert}), "
    "ix AS (INSERT INTO {r} AS r (space, rid, status, neg, started_at, workflow) "
    "SELECT sp, ri, st, ng, sa, wf FROM unnest($7::text[], $8::text[], $9::text[], "
    "$10::int8[], $11::float8[], $12::text[], $13::int8[]) AS x(sp, ri, st, ng, sa, wf, gi) "
    "WHERE gi IN (SELECT gi FROM ok) {ix_upsert}) "
    "SELECT coalesce(array_agg(gi), '{{}}') FROM ok",
    # delete_batch behind the fence of save_batch_fenced: $1 the keys, $2/$3 lease and token
    "delete_batch_fenced": "WITH fence AS (SELECT FROM {l} WHERE key = $2 AND token = $3 "
    "FOR SHARE), gone AS (DELETE FROM {t} WHERE key = ANY($1::text[]) AND EXISTS "
    "(SELECT FROM fence)) SELECT EXISTS (SELECT FROM fence)",
    "read_lease": "SELECT {lease} FROM {l} WHERE key = $1",
    "delete_lease": "DELETE FROM {l} WHERE key = $1",
    "delete_lease_fenced": "DELETE FROM {l} WHERE key = $1 AND token = $2",
}
# (Every part of these statements is a constant of this module; values are $n parameters.)
# -- owned entries (Capabilities.owned_writes): written by a CTE of the save's own statement,
# only where the key holds no live row or a row with the same owner (the value's bytes up to
# its first NUL); the keys it refused come back. {a}: its first parameter; {gate}: the
# fence or group condition. Then the run index's CTE (ix_*) when the save carries rows.
_NUL = "'\\x00'::bytea"
_OWNED_CTE = (
    "o AS (INSERT INTO {{t}} AS t (key, data, expires_at) SELECT k, d, "  # noqa: S608
    "now() + make_interval(secs => s) FROM {source} WHERE position(" + _NUL + " in d) > 0 "
    "{gate} ON CONFLICT (key) DO UPDATE SET data = EXCLUDED.data, expires_at = "
    "EXCLUDED.expires_at, updated_at = now() WHERE (t.expires_at IS NOT NULL AND "
    "t.expires_at <= now()) OR substring(t.data from 1 for position(" + _NUL + " in "
    "EXCLUDED.data)) = substring(EXCLUDED.data from 1 for position(" + _NUL + " in "
    "EXCLUDED.data)) RETURNING key)"
)
_IX_CTE = (
    "ix AS (INSERT INTO {{r}} AS r (space, rid, status, neg, started_at, workflow) "
    "SELECT * FROM unnest(${p}::text[], ${p1}::text[], ${p2}::text[], ${p3}::int8[], "
    "${p4}::float8[], ${p5}::text[]) {gate} {{ix_upsert}})"
)
_IX_CTE_GROUPED = (
    "ix AS (INSERT INTO {{r}} AS r (space, rid, status, neg, started_at, workflow) "
    "SELECT sp, ri, st, ng, sa, wf FROM unnest(${p}::text[], ${p1}::text[], ${p2}::text[], "
    "${p3}::int8[], ${p4}::float8[], ${p5}::text[], ${p6}::int8[]) AS x(sp, ri, st, ng, sa, "
    "wf, gi) WHERE gi IN (SELECT gi FROM ok) {{ix_upsert}})"
)


def _owned_statement(op: str, ix: bool) -> str:
    """The save statement ``op`` (save_batch, save_batch_fenced, save_groups) with owned
    rows, and the run index's rows when ``ix`` (a template for ``str.format``)."""

    def ix_cte(first: int, gate: str, grouped: bool = False) -> str:
        if not ix:
            return ""
        n = {f"p{i}" if i else "p": first + i for i in range(7)}
        return ", " + (_IX_CTE_GROUPED if grouped else _IX_CTE).format(gate=gate, **n)

    if op == "save_batch":  # $1-$3 rows, $4-$6 owned, then the index's
        source = "unnest($4::text[], $5::bytea[], $6::float8[]) AS u(k, d, s)"
        return (
            "WITH w AS (INSERT INTO {t} (key, data, expires_at) {rows} {upsert}), "  # noqa: S608
            + _OWNED_CTE.format(source=source, gate="")
            + ix_cte(7, "")
            + " SELECT coalesce(array_agg(k), '{{}}') FROM unnest($4::text[]) AS k "
            "WHERE k NOT IN (SELECT key FROM o)"
        )
    if op == "save_batch_fenced":  # $1-$3 rows, $4/$5 fence, $6-$8 owned, then the index's
        source = "unnest($6::text[], $7::bytea[], $8::float8[]) AS u(k, d, s)"
        fenced = "AND EXISTS (SELECT FROM fence)"
        return (
            "WITH fence AS (SELECT FROM {l} WHERE key = $4 AND token = $5 FOR SHARE), "  # noqa: S608
            "w AS (INSERT INTO {t} (key, data, expires_at) {rows} WHERE EXISTS "
            "(SELECT FROM fence) {upsert}), "
            + _OWNED_CTE.format(source=source, gate=fenced)
            + ix_cte(9, "WHERE EXISTS (SELECT FROM fence)")
            + " SELECT EXISTS (SELECT FROM fence), coalesce((SELECT array_agg(k) FROM "
            "unnest($6::text[]) AS k WHERE EXISTS (SELECT FROM fence) AND k NOT IN "
            "(SELECT key FROM o)), '{{}}')"
        )
    # save_groups: $1-$4 rows, $5/$6 fences, $7-$10 owned (with their group), the index's
    source = "unnest($7::text[], $8::bytea[], $9::float8[], $10::int8[]) AS u(k, d, s, gi)"
    return (
        "WITH g AS (SELECT * FROM unnest($5::text[], $6::int8[]) WITH ORDINALITY AS "  # noqa: S608
        "g(lk, tok, gi)), fence AS (SELECT g.gi FROM g JOIN {l} AS l ON l.key = g.lk AND "
        "l.token = g.tok FOR SHARE OF l), ok AS (SELECT gi FROM fence UNION ALL SELECT gi "
        "FROM g WHERE lk IS NULL), w AS (INSERT INTO {t} (key, data, expires_at) SELECT "
        "DISTINCT ON (k) k, d, now() + make_interval(secs => s) FROM unnest($1::text[], "
        "$2::bytea[], $3::float8[], $4::int8[]) WITH ORDINALITY AS u(k, d, s, gi, n) WHERE "
        "gi IN (SELECT gi FROM ok) ORDER BY k, n DESC {upsert}), "
        + _OWNED_CTE.format(source=source, gate="AND gi IN (SELECT gi FROM ok)")
        + ix_cte(11, "", grouped=True)
        + " SELECT coalesce((SELECT array_agg(gi) FROM ok), '{{}}'), coalesce((SELECT "
        "array_agg(k) FROM unnest($7::text[], $10::int8[]) AS x(k, gi) WHERE gi IN (SELECT "
        "gi FROM ok) AND k NOT IN (SELECT key FROM o)), '{{}}')"
    )


def _with_release(sql: str, leases: str) -> str:
    """A fenced save statement that also ends its fencing lease (as ``release`` does) when
    the fence holds (``Capabilities.release_in_batch``): a CTE after the fence's. For
    ``save_groups``, the numbers of the groups whose lease ends are one more parameter."""
    grouped = sql.startswith("WITH g AS")
    anchor = "FOR SHARE OF l), " if grouped else "FOR SHARE), "
    assert sql.count(anchor) >= 1, sql
    if grouped:
        last = max(int(n) for n in re.findall(r"\$(\d+)", sql))
        cte = (
            f"rl AS (UPDATE {leases} AS rl SET expires_at = 'epoch' FROM g WHERE "  # noqa: S608
            f"rl.key = g.lk AND rl.token = g.tok AND g.gi = ANY(${last + 1}::int8[]) "
            "AND g.gi IN (SELECT gi FROM fence)), "
        )
    else:
        cte = (
            f"rl AS (UPDATE {leases} SET expires_at = 'epoch' WHERE key = $4 "  # noqa: S608
            "AND token = $5 AND EXISTS (SELECT FROM fence)), "
        )
    return sql.replace(anchor, anchor + cte, 1)


_MIGRATIONS = (  # append only: version N is _MIGRATIONS[N - 1]
    """CREATE TABLE IF NOT EXISTS {t} (
        key text COLLATE "C" PRIMARY KEY,
        data bytea NOT NULL,
        expires_at timestamptz NULL,
        updated_at timestamptz NOT NULL DEFAULT now())""",
    """CREATE TABLE IF NOT EXISTS {l} (
        key text COLLATE "C" PRIMARY KEY,
        owner text NOT NULL,
        token bigint NOT NULL,
        expires_at timestamptz NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS {r} (
        space text COLLATE "C" NOT NULL,
        rid text COLLATE "C" NOT NULL,
        status text NOT NULL,
        neg bigint NOT NULL,
        started_at float8 NOT NULL,
        workflow text NOT NULL,
        PRIMARY KEY (space, rid));
    CREATE INDEX IF NOT EXISTS {r_time} ON {r} (space, neg, rid);
    CREATE INDEX IF NOT EXISTS {r_status} ON {r} (space, status, neg, rid);
    CREATE INDEX IF NOT EXISTS {r_workflow} ON {r} (space, workflow, neg, rid);
    CREATE TABLE IF NOT EXISTS {b} (space text COLLATE "C" PRIMARY KEY)""",
)
#: the run index's upsert: a row that has not changed is not written again
_IX_UPSERT = (
    "ON CONFLICT (space, rid) DO UPDATE SET status = EXCLUDED.status, neg = EXCLUDED.neg, "
    "started_at = EXCLUDED.started_at, workflow = EXCLUDED.workflow "
    "WHERE (r.status, r.neg, r.workflow) IS DISTINCT FROM "
    "(EXCLUDED.status, EXCLUDED.neg, EXCLUDED.workflow)"
)
_ACQUIRE_TRIES = 5  # a refused acquire re-runs only while racing a first acquire


def lease_table(table: str) -> str:
    """The lease table beside ``table``: ``<table>_leases``, hashed to fit 63 bytes."""
    if len(table) <= 63 - len("_leases"):
        return f"{table}_leases"
    digest = hashlib.sha256(table.encode()).hexdigest()[:8]
    return f"{table[:47]}_{digest}_leases"


def side_table(table: str, suffix: str) -> str:
    """A table beside ``table``: ``<table><suffix>``, hashed to fit 63 bytes."""
    if len(table) + len(suffix) <= 63:
        return f"{table}{suffix}"
    digest = hashlib.sha256(table.encode()).hexdigest()[:8]
    return f"{table[: 63 - len(suffix) - 9]}_{digest}{suffix}"


def prefix_end(prefix: str) -> str | None:
    """The least string above every string starting with ``prefix`` (code-point order).

    ``None`` when there is none (empty prefix, or only U+10FFFF characters).
    """
    chars = list(prefix)
    while chars:
        code = ord(chars.pop()) + 1
        if code <= 0x10FFFF:
            return "".join(chars) + chr(0xE000 if 0xD800 <= code <= 0xDFFF else code)
    return None


def _open(con: Any) -> bool:
    """Whether a pooled connection kept out of the pool can still run a statement: its
    server did not close it (asyncpg's pool takes such a connection back at once)."""
    try:
        return not con.is_closed()
    except asyncpg.InterfaceError:  # released back to the pool: it was closed
        return False


def _reusable(con: Any) -> bool:
    """Whether a kept connection can be lent again as its borrower left it: no transaction
    left open, no listener left on it (a pool's release undoes both)."""
    try:
        return not (
            con.is_in_transaction()
            or getattr(con, "_listeners", None)
            or getattr(con, "_log_listeners", None)
        )
    except asyncpg.InterfaceError:
        return False


class _Lent:
    """The kept connection, lent for one block: a handle used after its block refuses, as
    a pool's connection does once released (another borrower may hold it by then)."""

    __slots__ = ("_lent_con",)

    def __init__(self, con: Any) -> None:
        self._lent_con: Any = con

    def given_back(self) -> None:
        self._lent_con = None

    def __getattr__(self, name: str) -> Any:
        con = self._lent_con
        if con is None:
            raise asyncpg.InterfaceError(
                f"cannot call Connection.{name}(): connection has been released (given "
                "back at the end of its block)"
            )
        return getattr(con, name)


async def _keep_session(connection: Any) -> None:
    """Pool ``reset`` hook: nothing to undo (see the module docstring)."""


async def _generic_plans(connection: Any) -> None:
    """Pool ``init`` hook: every statement of this module is planned once per connection
    (``plan_cache_mode``, PostgreSQL 12+), not again on each of its first five executions.
    Those statements are CTEs whose planning costs more than their execution: a resume's
    acquire, rarer than a run's, paid ~0.35 ms for it (benchmarks/PROFILE.md, "Issue 18,
    round four"). Their parameters never change which plan is best: keys are looked up by
    primary key or range. A server without the setting keeps its default."""
    try:
        await connection.execute("SET plan_cache_mode = force_generic_plan")
    except asyncpg.PostgresError:
        pass


#: what asyncpg raises; every one of them becomes a DatasourceError (the protocol's
#: InternalClientError too: seen when the server dies under concurrent statements)
_DRIVER_ERRORS = (
    OSError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.InternalClientError,
)


class _Groups:
    """The entries of a group commit sorted by kind, each with its group's number."""

    __slots__ = ("data", "doubled", "keys", "owned", "owners", "releasing", "rows", "ttls")

    def __init__(self, groups: Sequence[Group]) -> None:
        self.keys: list[str] = []
        self.data: list[bytes] = []
        self.ttls: list[float | None] = []
        self.owners: list[int] = []
        #: index rows: a run twice, the last wins
        self.rows: dict[tuple[str, str], tuple[str, IndexRow, int]] = {}
        #: owned rows: a key twice in one flush (two runs' aliases): the first group's goes,
        #: the later ones are refused -- one statement cannot write a row twice
        self.owned: dict[str, tuple[bytes, float | None, int]] = {}
        self.doubled: list[str] = []
        #: the fenced groups whose lease ends with the write (Capabilities.release_in_batch)
        self.releasing: list[int] = []
        for number, (entries, fence, _) in enumerate(groups, 1):
            for key, value, ttl in entries:
                if key == RELEASE_KEY:
                    if fence is not None:
                        self.releasing.append(number)
                elif is_index_key(key):
                    row = decode_row(value)
                    self.rows[key, row.request_id] = (key[1:], row, number)
                elif key[:1] == OWNED_MARK:
                    self._own(key[1:], value, ttl, number)
                else:
                    self.keys.append(key)
                    self.data.append(value)
                    self.ttls.append(ttl)
                    self.owners.append(number)

    def _own(self, key: str, value: bytes, ttl: float | None, number: int) -> None:
        known = self.owned.get(key)
        if known is None or known[2] == number:
            self.owned[key] = (value, ttl, number)
        else:
            self.doubled.append(key)


class PostgresStore:
    """A table of ``key -> bytea``; see the module docstring."""

    __slots__ = ("_hot", "_hot_busy", "_names", "_owned", "_password", "_pool",
                 "_pool_size", "_ready", "_sql", "_table", "_timeout", "_url", "_waiting",
                 "_where", "refused_owned")  # fmt: skip

    def __init__(
        self,
        url: str | None,
        *,
        table: str = DEFAULT_TABLE,
        pool_size: int = DEFAULT_POOL_SIZE,
        timeout: float = 5.0,
        pool: Any = None,
    ) -> None:
        if not _IDENT.match(table):
            raise DatasourceError(f"invalid table name {table!r}: expected an identifier")
        if url is None and pool is None:
            raise DatasourceError("a postgresql datasource needs a URL or a pool")
        self._url, self._table, self._pool_size, self._timeout = url, table, pool_size, timeout
        self._pool: Any = pool
        self._owned = pool is None
        #: one connection kept out of the pool, for whichever operation finds it free (see
        #: connection()); None until first used, and after a statement failed on it
        self._hot: Any = None
        self._hot_busy = False
        self._waiting = 0  # borrowers waiting for the pool to hand them a connection
        self._ready = False
        self._where = mask_url(url) if url else "an injected asyncpg pool"
        try:
            self._password = urlsplit(url).password if url else None
        except ValueError:
            self._password = None
        # The table name is a checked identifier, quoted; values are always $n parameters.
        self._names = {
            "t": f'"{table}"',
            "l": f'"{lease_table(table)}"',
            "r": f'"{side_table(table, "_runs")}"',
            "b": f'"{side_table(table, "_runs_built")}"',
            "r_time": f'"{side_table(table, "_runs_time")}"',
            "r_status": f'"{side_table(table, "_runs_status")}"',
            "r_workflow": f'"{side_table(table, "_runs_workflow")}"',
        }
        fill = {
            "live": _LIVE,
            "page": PAGE,
            "upsert": _UPSERT,
            "rows": _ROWS,
            "lease": _LEASE,
            "ix_upsert": _IX_UPSERT,
        }
        fill.update(self._names)
        self._sql = {name: sql.format(**fill) for name, sql in _SQL.items()}
        for op in ("save_batch", "save_batch_fenced", "save_groups"):
            for ix in (False, True):
                name = f"{op}_owned{'_ix' if ix else ''}"
                self._sql[name] = _owned_statement(op, ix).format(**fill)
        for name in [n for n in self._sql if n.startswith(("save_batch_fenced", "save_groups"))]:
            self._sql[name + "_rl"] = _with_release(self._sql[name], self._names["l"])
        #: owned entries a write refused (another owner's), until the wrapper asks
        self.refused_owned: set[str] = set()

    @property
    def capabilities(self) -> Capabilities:
        return _CAPS

    @property
    def is_connected(self) -> bool:
        return self._ready and self._pool is not None and not self._pool.is_closing()

    @property
    def table(self) -> str:
        return self._table

    # -- errors -------------------------------------------------------------------------------

    def _error(self, exc: BaseException, op: str) -> DatasourceError:
        text = f"{type(exc).__name__}: {exc}"
        if isinstance(exc, TimeoutError) and not str(exc):
            text = f"timed out after {self._timeout:g}s"
        if self._password:
            text = text.replace(self._password, "***")
        state = str(getattr(exc, "sqlstate", "") or "")
        if (
            isinstance(exc, OSError | asyncpg.PostgresConnectionError)
            or state[:2] in _UNAVAILABLE_SQLSTATE
            or (isinstance(exc, asyncpg.InterfaceError) and "closed" in str(exc))
            # the connection's protocol state broke (its server died mid-statement)
            or isinstance(exc, asyncpg.exceptions.InternalClientError)
        ):
            return DatasourceUnavailable(f"{op}: PostgreSQL at {self._where} unavailable: {text}")
        return DatasourceError(f"{op}: PostgreSQL at {self._where} failed: {text}")

    @asynccontextmanager
    async def connection(self, op: str) -> AsyncIterator[Any]:
        """A pooled asyncpg connection for ``op``, bounded by the timeout, errors translated
        and secrets scrubbed: the public hook other blokrun parts (the run queue) use."""
        if self._pool is None:
            raise DatasourceError(f"{op}: not connected (call connect() first)")
        pool = self._pool
        # The kept connection, if free: asyncpg's acquire and release cost ~45 µs of CPU a
        # statement (release shields itself in a new task), a tenth of a checkpoint
        # (benchmarks/PROFILE.md, "round six"). Only for a pool of our own.
        hot = self._owned and not self._hot_busy
        con = await self._take_hot(pool, op) if hot else await self._acquire(pool, op)
        lent = _Lent(con) if hot else None
        clean = False
        try:
            yield con if lent is None else lent
            clean = True
        except DatasourceError:
            raise
        except _DRIVER_ERRORS as exc:
            raise self._error(exc, op) from exc
        finally:
            if lent is not None:
                lent.given_back()
                # kept while every statement on it succeeded, the pool is still ours, no
                # borrower waits in the pool for a connection, and the borrower left nothing
                # a pool's release would undo; else back to the pool, which does
                keep = clean and self._pool is pool and not self._waiting and _reusable(con)
                self._hot = con if keep else None
                self._hot_busy = False
            if self._hot is not con:
                await pool.release(con)

    async def _take_hot(self, pool: Any, op: str) -> Any:
        """The kept connection (marked busy), taken from the pool the first time, or again
        if its server went away while it idled."""
        self._hot_busy = True
        try:
            con, self._hot = self._hot, None
            if con is not None and not _open(con):
                await pool.release(con)  # (a no-op if the pool took it back already)
                con = None
            return con if con is not None else await self._acquire(pool, op)
        except BaseException:
            self._hot_busy = False
            raise

    async def _acquire(self, pool: Any, op: str) -> Any:
        self._waiting += 1  # (the kept connection goes back to the pool while anyone waits)
        try:
            # asyncio.timeout, not acquire(timeout=...): on Python 3.11 that is wait_for, a
            # new task per statement, a visible share of a checkpoint (PROFILE.md).
            async with asyncio.timeout(self._timeout):
                return await pool.acquire()
        except TimeoutError as exc:
            raise self._error(exc, op) from exc
        except _DRIVER_ERRORS as exc:
            raise self._error(exc, op) from exc
        finally:
            self._waiting -= 1

    # -- lifecycle ------------------------------------------------------------------------------

    async def connect(self) -> None:
        if self.is_connected:
            return
        try:
            with anyio.fail_after(self._timeout):
                if self._owned:
                    self._pool = await asyncpg.create_pool(
                        self._url,
                        min_size=1,
                        max_size=self._pool_size,
                        timeout=self._timeout,
                        command_timeout=self._timeout,
                        reset=_keep_session,
                        init=_generic_plans,
                    )
                await self._migrate()
        except BaseException as exc:
            if self._owned and self._pool is not None:
                self._pool.terminate()
                self._pool = None
            if isinstance(exc, _DRIVER_ERRORS):
                raise self._error(exc, "connect") from exc
            if isinstance(exc, ValueError):  # a URL asyncpg cannot parse
                raise DatasourceError(f"connect: bad URL {self._where}: {exc}") from exc
            raise
        self._ready = True

    async def _migrate(self) -> None:
        async with self.connection("migrate") as con, con.transaction():
            await con.execute("SELECT pg_advisory_xact_lock($1)", _LOCK_ID)
            await con.execute(
                "CREATE TABLE IF NOT EXISTS blokrun_migrations (table_name text NOT NULL, "
                "version integer NOT NULL, applied_at timestamptz NOT NULL DEFAULT now(), "
                "PRIMARY KEY (table_name, version))"
            )
            done: int = await con.fetchval(
                "SELECT coalesce(max(version), 0) FROM blokrun_migrations WHERE table_name = $1",
                self._table,
            )
            if done > len(_MIGRATIONS):
                raise DatasourceError(
                    f"table {self._table!r} is at schema version {done}, newer than this "
                    f"blokrun knows ({len(_MIGRATIONS)}): upgrade blokrun"
                )
            for version in range(done + 1, len(_MIGRATIONS) + 1):
                await con.execute(_MIGRATIONS[version - 1].format(**self._names))
                await con.execute(
                    "INSERT INTO blokrun_migrations (table_name, version) VALUES ($1, $2)",
                    self._table,
                    version,
                )

    async def close(self) -> None:
        pool, self._pool = self._pool, (None if self._owned else self._pool)
        self._ready = False
        hot, self._hot = self._hot, None
        if pool is None or not self._owned:
            return
        if hot is not None:  # (one in use is not here: its borrower gives it back)
            await pool.release(hot)
        with anyio.move_on_after(self._timeout) as scope:
            await pool.close()
        if scope.cancelled_caught:
            pool.terminate()

    async def describe(self) -> StoreHealth:
        """Server version and the state of blokrun's tables, from the catalog; reads only
        (``blokrun doctor``; :mod:`blokrun.datasources.pg_schema`)."""
        from blokrun.datasources import pg_schema

        async with self.connection("describe") as con:
            return await pg_schema.describe(
                con,
                self._table,
                lease_table(self._table),
                len(_MIGRATIONS),
                side_table(self._table, "_runs"),
            )

    # -- the contract --------------------------------------------------------------------------

    async def save(self, key: str, data: bytes, ttl: float | None = None) -> None:
        async with self.connection("save") as con:
            await con.execute(self._sql["save"], key, data, ttl)

    async def load(self, key: str) -> bytes | None:
        async with self.connection("load") as con:
            data: bytes | None = await con.fetchval(self._sql["load"], key)
        return data

    async def exists(self, key: str) -> bool:
        async with self.connection("exists") as con:
            found: bool = await con.fetchval(self._sql["exists"], key)
        return found

    async def delete(self, key: str) -> bool:
        async with self.connection("delete") as con:
            live: bool | None = await con.fetchval(self._sql["delete"], key)
        return live is True

    async def save_batch(self, entries: Sequence[Entry]) -> None:
        if not entries:
            return
        entries, rows = split_index(entries)
        entries, owned = _split_owned(entries)
        ix = _ix(rows) if rows else ()
        async with self.connection("save_batch") as con:
            if owned:
                name = "save_batch_owned_ix" if rows else "save_batch_owned"
                refused = await con.fetchval(
                    self._sql[name], *_columns(entries), *_columns(owned), *ix
                )
                self._refused(refused)
            elif rows:
                await con.execute(self._sql["save_batch_ix"], *_columns(entries), *ix)
            else:
                await con.execute(self._sql["save_batch"], *_columns(entries))

    async def load_batch(self, keys: Sequence[str]) -> dict[str, bytes]:
        if not keys:
            return {}
        async with self.connection("load_batch") as con:
            rows = await con.fetch(self._sql["load_batch"], list(keys))
        return {row[0]: row[1] for row in rows}

    async def delete_batch(self, keys: Sequence[str]) -> int:
        if not keys:
            return 0
        async with self.connection("delete_batch") as con:
            n: int = await con.fetchval(self._sql["delete_batch"], list(keys))
        return n

    async def keys(self, prefix: str = "") -> AsyncIterator[str]:
        end = prefix_end(prefix)
        sql = self._sql["keys_open" if end is None else "keys"]
        last = ""
        while True:
            async with self.connection("keys") as con:  # one page per borrowed connection
                args = (prefix, last) if end is None else (prefix, last, end)
                rows = await con.fetch(sql, *args)
            for row in rows:
                yield row[0]
            if len(rows) < PAGE:
                return
            last = rows[-1][0]

    async def size(self) -> int:
        async with self.connection("size") as con:
            n: int = await con.fetchval(self._sql["size"])
        return n

    async def purge_expired(self) -> int:
        """Delete expired rows (reads already ignore them); returns how many went."""
        async with self.connection("purge_expired") as con:
            status: str = await con.execute(self._sql["purge"])
        return int(status.rsplit(" ", 1)[-1])

    # -- leases (see the module docstring) -------------------------------------------------

    async def _take(self, statement: str, *args: Any) -> Any:
        """The acquire ``statement``'s row, run again while it races a first acquire."""
        async with self.connection("acquire_lease") as con:
            for _ in range(_ACQUIRE_TRIES):
                row = await con.fetchrow(self._sql[statement], *args)
                if row is not None:
                    return row
        raise DatasourceError(
            f"acquire_lease: PostgreSQL at {self._where}: the lease row kept changing "
            f"({_ACQUIRE_TRIES} tries)"
        )

    async def acquire_lease(self, key: str, owner: str, ttl: float) -> LeaseState:
        row = await self._take("acquire", key, owner, ttl)
        return LeaseState(row[0], row[1], row[2])

    async def acquire_lease_reading(
        self, key: str, owner: str, ttl: float, keys: Sequence[str]
    ) -> tuple[LeaseState, dict[str, bytes] | None]:
        """The values are given only for a new lease row: a later acquire may have waited
        for a previous holder's fenced write, which the statement's snapshot then does not
        show -- the caller reads those itself."""
        row = await self._take("acquire_reading", key, owner, ttl, keys)
        state = LeaseState(row[0], row[1], row[2])
        if state.owner != owner or not row[5]:
            return state, None
        return state, dict(zip(row[3], row[4], strict=True))

    async def acquire_lease_writing(
        self,
        key: str,
        owner: str,
        ttl: float,
        keys: Sequence[str],
        entries: Sequence[Entry],
        *,
        match: Mapping[str, bytes] | None = None,
    ) -> tuple[LeaseState, dict[str, bytes] | None, bool]:
        """Where keys must be free: writes only with a new lease row, as its values
        are given only then (see :meth:`acquire_lease_reading`). Where one key must hold
        given bytes (``match``: a resume's head): a compare-and-set by UPDATE, whose
        condition is checked on the row's latest version (:meth:`_acquire_matching`)."""
        plain, rows = split_index(entries)  # plain and index entries only (the protocol)
        if match:
            return await self._acquire_matching(
                key, owner, ttl, keys, plain=plain, rows=rows, match=match
            )
        if rows:
            row = await self._take(
                "acquire_writing_ix", key, owner, ttl, keys, *_columns(plain), *_ix(rows)
            )
        else:
            row = await self._take("acquire_writing", key, owner, ttl, keys, *_columns(plain))
        state = LeaseState(row[0], row[1], row[2])
        written = bool(row[5])
        if state.owner != owner or not row[6]:
            return state, None, written
        return state, dict(zip(row[3], row[4], strict=True)), written

    async def _acquire_matching(
        self,
        key: str,
        owner: str,
        ttl: float,
        keys: Sequence[str],
        *,
        plain: list[Entry],
        rows: list[tuple[str, IndexRow]],
        match: Mapping[str, bytes],
    ) -> tuple[LeaseState, dict[str, bytes] | None, bool]:
        """A compare-and-set of one key read with the lease, written in the batch (a
        resume's head); anything else is not checked here: taken, and nothing written."""
        new = next((e for e in plain if e[0] in match), None)
        if len(match) != 1 or set(keys) != set(match) or new is None:
            state, found = await self.acquire_lease_reading(key, owner, ttl, keys)
            return state, found, False
        mkey, data, mttl = new
        rest = [e for e in plain if e[0] != mkey]
        cas = (mkey, data, mttl, match[mkey], *_columns(rest))
        if rows:
            row = await self._take("acquire_matching_ix", key, owner, ttl, *cas, *_ix(rows))
        else:
            row = await self._take("acquire_matching", key, owner, ttl, *cas)
        return LeaseState(row[0], row[1], row[2]), None, bool(row[3])

    async def renew_lease(self, key: str, owner: str, token: int, ttl: float) -> bool:
        async with self.connection("renew_lease") as con:
            status: str = await con.execute(self._sql["renew"], key, owner, token, ttl)
        return status == "UPDATE 1"

    async def release_lease(self, key: str, owner: str, token: int) -> None:
        async with self.connection("release_lease") as con:
            await con.execute(self._sql["release"], key, token)

    async def save_batch_fenced(self, entries: Sequence[Entry], lease_key: str, token: int) -> bool:
        release = "_rl" if any(key == RELEASE_KEY for key, _, _ in entries) else ""
        if release:
            entries = [e for e in entries if e[0] != RELEASE_KEY]
        entries, rows = split_index(entries)
        entries, owned = _split_owned(entries)
        ix = _ix(rows) if rows else ()
        async with self.connection("save_batch_fenced") as con:
            if owned:
                name = "save_batch_fenced_owned_ix" if rows else "save_batch_fenced_owned"
                args = (*_columns(entries), lease_key, token, *_columns(owned), *ix)
                row = await con.fetchrow(self._sql[name + release], *args)
                held: bool = row[0]
                self._refused(row[1])
            elif rows:
                args = (*_columns(entries), lease_key, token, *ix)
                held = await con.fetchval(self._sql["save_batch_fenced_ix" + release], *args)
            else:
                args = (*_columns(entries), lease_key, token)
                held = await con.fetchval(self._sql["save_batch_fenced" + release], *args)
        return held

    async def save_groups(self, groups: Sequence[Group]) -> list[bool]:
        """Many runs' saves in one statement (group commit); per group, whether it was
        written (``False``: its fence no longer holds). See :class:`Capabilities`."""
        parts = _Groups(groups)
        fences = [lease for _, lease, _ in groups]
        tokens = [token for _, _, token in groups]
        args: list[Any] = [parts.keys, parts.data, parts.ttls, parts.owners, fences, tokens]
        owned, rows = parts.owned, parts.rows
        if owned:
            args += [
                list(owned),
                [v for v, _, _ in owned.values()],
                [t for _, t, _ in owned.values()],
                [n for _, _, n in owned.values()],
            ]
        if rows:
            args += _ix([(space, row) for space, row, _ in rows.values()])
            args.append([number for _, _, number in rows.values()])
        release = ""
        if parts.releasing:
            args.append(parts.releasing)
            release = "_rl"
        async with self.connection("save_groups") as con:
            if owned:
                sql = self._sql[("save_groups_owned_ix" if rows else "save_groups_owned") + release]
                row = await con.fetchrow(sql, *args)
                written = set(row[0])
                self._refused([*row[1], *parts.doubled])
            else:
                sql = self._sql[("save_groups_ix" if rows else "save_groups") + release]
                written = set(await con.fetchval(sql, *args))
                self._refused(parts.doubled)
        return [number in written for number in range(1, len(groups) + 1)]

    def _refused(self, keys: Sequence[str] | None) -> None:
        if keys:
            if len(self.refused_owned) > 10_000:  # nobody asked: start over
                self.refused_owned.clear()
            self.refused_owned.update(keys)

    async def read_lease(self, key: str) -> LeaseState | None:
        async with self.connection("read_lease") as con:
            row = await con.fetchrow(self._sql["read_lease"], key)
        return None if row is None else LeaseState(row[0], row[1], row[2])

    async def delete_batch_fenced(self, keys: Sequence[str], lease_key: str, token: int) -> bool:
        async with self.connection("delete_batch") as con:
            held: bool = await con.fetchval(
                self._sql["delete_batch_fenced"], list(keys), lease_key, token
            )
        return held

    async def delete_lease(self, key: str, token: int | None = None) -> bool:
        async with self.connection("delete_lease") as con:
            if token is None:
                status: str = await con.execute(self._sql["delete_lease"], key)
            else:
                status = await con.execute(self._sql["delete_lease_fenced"], key, token)
        return status == "DELETE 1"

    # -- the run index ----------------------------------------------------------------------

    async def index_query(self, space: str, query: IndexQuery) -> list[IndexRow]:
        """One ordered index range per status asked (``(space, status, neg, rid)``), or one
        over ``(space, workflow, ...)`` / ``(space, neg, rid)``, each ``LIMIT``-ed."""
        where = [self._sql["ix_query"]]
        args: list[Any] = [space]

        def param(sql: str, value: Any) -> None:
            args.append(value)
            where.append(sql.replace("?", f"${len(args)}"))

        if query.workflow is not None:
            param("workflow = ?", query.workflow)
        if query.since is not None:
            param("neg <= ?", -micros(query.since))
        if query.after is not None:
            args.append(query.after[0])
            param(f"(neg, rid) > (${len(args)}, ?)", query.after[1])
        if query.contains:
            param("strpos(rid, ?) > 0", query.contains)
        tail = f" ORDER BY neg, rid LIMIT {int(query.limit)}"
        found: list[IndexRow] = []
        async with self.connection("index_query") as con:
            for status in query.statuses if query.statuses is not None else (None,):
                sql = " AND ".join(where)
                extra = args
                if status is not None:
                    sql += f" AND status = ${len(args) + 1}"
                    extra = [*args, status]
                for row in await con.fetch(sql + tail, *extra):
                    found.append(IndexRow(row[0], row[1], row[2], row[3]))
        return ordered(found, query.limit)

    async def index_counts(self, space: str) -> dict[str, int]:
        async with self.connection("index_counts") as con:
            rows = await con.fetch(self._sql["ix_counts"], space)
        return {row[0]: row[1] for row in rows}

    async def index_fix(self, space: str, expected: IndexRow, actual: IndexRow | None) -> bool:
        if expected.pending:
            return False  # this driver never writes a pending row
        old = (space, expected.request_id, expected.status, -micros(expected.started_at))
        async with self.connection("index_fix") as con:
            if actual is None:
                status: str = await con.execute(self._sql["ix_drop"], *old, expected.workflow)
            else:
                new = (actual.status, -micros(actual.started_at), actual.started_at)
                status = await con.execute(
                    self._sql["ix_replace"], *old, expected.workflow, *new, actual.workflow
                )
        return status.endswith(" 1")

    async def index_fill(
        self, space: str, rows: Sequence[IndexRow], *, built: bool = False
    ) -> None:
        async with self.connection("index_fill") as con, con.transaction():
            if rows:
                await con.execute(self._sql["ix_fill"], *_ix([(space, r) for r in rows]))
            if built:
                await con.execute(self._sql["ix_mark_built"], space)

    async def index_built(self, space: str) -> bool:
        async with self.connection("index_built") as con:
            found: bool = await con.fetchval(self._sql["ix_built"], space)
        return found

    async def index_remove(
        self, space: str, request_ids: Sequence[str], *, fence: tuple[str, int] | None = None
    ) -> bool:
        async with self.connection("index_remove") as con:
            if fence is None:
                await con.execute(self._sql["ix_remove"], space, list(request_ids))
                return True
            held: bool = await con.fetchval(
                self._sql["ix_remove_fenced"], space, list(request_ids), *fence
            )
        return held


def _split_owned(entries: Sequence[Entry]) -> tuple[list[Entry], list[Entry]]:
    """The plain entries and the owned ones (their mark taken off)."""
    plain = [e for e in entries if e[0][:1] != OWNED_MARK]
    if len(plain) == len(entries):
        return plain, []
    return plain, [(k[1:], d, t) for k, d, t in entries if k[:1] == OWNED_MARK]


def _ix(rows: Sequence[tuple[str, IndexRow]]) -> tuple[list[Any], ...]:
    """Index rows as the six arrays of the run index upsert (a run twice: the last wins)."""
    last = {(space, row.request_id): (space, row) for space, row in rows}
    return (
        [space for space, _ in last.values()],
        [row.request_id for _, row in last.values()],
        [row.status for _, row in last.values()],
        [-micros(row.started_at) for _, row in last.values()],
        [row.started_at for _, row in last.values()],
        [row.workflow for _, row in last.values()],
    )


def _columns(entries: Sequence[Entry]) -> tuple[list[str], list[bytes], list[float | None]]:
    """``entries`` as the three arrays of the batch upsert, duplicate keys collapsed (last
    one wins: one statement cannot update a row twice)."""
    latest = {key: (data, ttl) for key, data, ttl in entries}
    return list(latest), [d for d, _ in latest.values()], [t for _, t in latest.values()]


def create(settings: DatasourceSettings) -> PostgresStore:
    if not settings.url:
        raise DatasourceError("a postgresql datasource needs a URL (DATASOURCE_<NAME>_URL)")
    return PostgresStore(
        settings.url,
        table=settings.table or DEFAULT_TABLE,
        pool_size=settings.pool_size or DEFAULT_POOL_SIZE,
        timeout=settings.timeout,
    )
