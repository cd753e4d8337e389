"""The PostgreSQL tables blokrun needs, checked against what the database holds
(``blokrun doctor``, through :meth:`PostgresStore.describe`).

It reads the catalog only (``pg_attribute``, ``pg_index``, ``blokrun_migrations``) and
changes nothing. For the store table and its lease table it checks: the table is there,
every column blokrun uses has the type, nullability and (for ``key``) the ``"C"``
collation the migrations gave it (the ``keys()`` range scan relies on that collation), the
primary key is ``(key)`` and its index valid, and this user may read and write it. It also
reads the migration version ``blokrun_migrations`` records for the table.
"""

from __future__ import annotations

from typing import Any

from blokrun.datasources.protocol import StoreHealth

__all__ = ["LEASE_COLUMNS", "STORE_COLUMNS", "Layout", "describe"]

_TZ = "timestamp with time zone"
#: column -> (type as format_type() prints it, NOT NULL, collation or None for any)
Layout = dict[str, tuple[str, bool, str | None]]
STORE_COLUMNS: Layout = {
    "key": ("text", True, "C"),
    "data": ("bytea", True, None),
    "expires_at": (_TZ, False, None),
    "updated_at": (_TZ, True, None),
}
LEASE_COLUMNS: Layout = {
    "key": ("text", True, "C"),
    "owner": ("text", True, None),
    "token": ("bigint", True, None),
    "expires_at": (_TZ, True, None),
}
RUNS_COLUMNS: Layout = {
    "space": ("text", True, "C"),
    "rid": ("text", True, "C"),
    "status": ("text", True, None),
    "neg": ("bigint", True, None),
    "started_at": ("double precision", True, None),
    "workflow": ("text", True, None),
}
_PRIVILEGES = ("SELECT", "INSERT", "UPDATE", "DELETE")

_COLUMNS = (
    "SELECT a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull, co.collname "
    "FROM pg_attribute a LEFT JOIN pg_collation co ON co.oid = a.attcollation "
    "WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped"
)
_PRIMARY = (
    "SELECT i.indisvalid, ARRAY(SELECT a.attname FROM unnest(i.indkey) WITH ORDINALITY "
    "AS k(n, o) JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.n "
    "ORDER BY k.o) FROM pg_index i WHERE i.indrelid = to_regclass($1) AND i.indisprimary"
)
_MISSING_PRIVILEGES = (
    "SELECT p FROM unnest($2::text[]) AS p WHERE NOT has_table_privilege(to_regclass($1), p)"
)


async def _table(
    con: Any, name: str, expected: Layout, primary_key: tuple[str, ...] = ("key",)
) -> list[str]:
    """What is wrong with table ``name`` (unquoted) against ``expected``; [] if nothing."""
    quoted = f'"{name}"'
    if not await con.fetchval("SELECT to_regclass($1) IS NOT NULL", quoted):
        return [f"table {name!r} is missing (dropped after its migration was recorded?)"]
    problems: list[str] = []
    found = {row[0]: (row[1], row[2], row[3]) for row in await con.fetch(_COLUMNS, quoted)}
    for column, (kind, not_null, collation) in expected.items():
        have = found.get(column)
        if have is None:
            problems.append(f"table {name!r}: column {column!r} is missing")
            continue
        if have[0] != kind:
            problems.append(f"table {name!r}: column {column!r} is {have[0]}, expected {kind}")
        if have[1] != not_null:
            want = "NOT NULL" if not_null else "nullable"
            problems.append(f"table {name!r}: column {column!r} should be {want}")
        if collation is not None and have[2] != collation:
            problems.append(
                f"table {name!r}: column {column!r} has collation {have[2]!r}, expected "
                f"{collation!r} (the key range scans rely on it)"
            )
    primary = await con.fetchrow(_PRIMARY, quoted)
    if primary is None or tuple(primary[1]) != primary_key:
        shown = "none" if primary is None else f"({', '.join(primary[1])})"
        problems.append(
            f"table {name!r}: primary key is {shown}, expected ({', '.join(primary_key)})"
        )
    elif not primary[0]:
        problems.append(f"table {name!r}: its primary key index is invalid (REINDEX it)")
    lacking = [row[0] for row in await con.fetch(_MISSING_PRIVILEGES, quoted, list(_PRIVILEGES))]
    if lacking:
        problems.append(f"table {name!r}: this user lacks {', '.join(lacking)}")
    return problems


async def _migration(con: Any, table: str) -> int | None:
    """The version ``blokrun_migrations`` records for ``table``; None without that table."""
    if not await con.fetchval("SELECT to_regclass('blokrun_migrations') IS NOT NULL"):
        return None
    done: int = await con.fetchval(
        "SELECT coalesce(max(version), 0) FROM blokrun_migrations WHERE table_name = $1", table
    )
    return done


async def describe(
    con: Any, table: str, leases: str, known: int, runs: str | None = None
) -> StoreHealth:
    """The server and blokrun's tables ``table``, ``leases`` and ``runs`` (the run index) on
    connection ``con`` (asyncpg); ``known``: the newest migration version this blokrun has."""
    version: str = await con.fetchval("SHOW server_version")
    database: str = await con.fetchval("SELECT current_database()")
    problems = await _table(con, table, STORE_COLUMNS)
    problems += await _table(con, leases, LEASE_COLUMNS)
    if runs is not None:
        problems += await _table(con, runs, RUNS_COLUMNS, ("space", "rid"))
    done = await _migration(con, table)
    if done is None:
        problems.append("table 'blokrun_migrations' is missing")
    elif done != known:
        problems.append(f"table {table!r} is at migration {done}, this blokrun's is {known}")
    state = "ok" if not problems else f"{len(problems)} problem(s)"
    return StoreHealth(
        server="PostgreSQL",
        version=version,
        schema=f"{table} + {leases}{' + ' + runs if runs else ''}, "
        f"migration {done or 0}/{known}: {state}",
        notes=(f"database {database}",),
        problems=tuple(problems),
    )
