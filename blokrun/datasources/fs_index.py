"""The filesystem driver's run index: an SQLite file in the datasource folder.

``<folder>/.index.sqlite`` (a name starting with ``.``, so never a key's file) holds one row
per run and space (:mod:`blokrun.datasources.index`), with B-tree indexes by time, by
status and time, and by workflow and time: a page is one index range read, whatever the
folder holds. SQLite comes with Python and locks the file for processes sharing the
folder (WAL journal; a writer waits up to the driver's timeout).

A batch's files are not written atomically together, so the row is written **pending**
and made durable (``synchronous=FULL``) *before* the files, and confirmed after them: a
crash in between leaves a pending row, which every query returns for its caller to check
against the head -- a run is never missing from the index, whatever the crash. The
confirmation is not synced (losing it leaves the row pending: the safe side). With
``FSYNC=false`` nothing is synced, as for the files.

Every method is synchronous and called inside the store's thread hop; one connection,
guarded by a lock, serves the store's threads.
"""

from __future__ import annotations

import sqlite3
import threading
from typing import TYPE_CHECKING

from blokrun.datasources.index import IndexQuery, IndexRow, matches, micros
from blokrun.errors import DatasourceError, DatasourceUnavailable

if TYPE_CHECKING:
    from collections.abc import Sequence
    from pathlib import Path

__all__ = ["INDEX_FILE", "SqliteIndex"]

INDEX_FILE = ".index.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    space TEXT NOT NULL, rid TEXT NOT NULL, status TEXT NOT NULL,
    neg INTEGER NOT NULL, started_at REAL NOT NULL, workflow TEXT NOT NULL,
    pending INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (space, rid)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS runs_by_time ON runs (space, neg, rid);
CREATE INDEX IF NOT EXISTS runs_by_status ON runs (space, status, neg, rid);
CREATE INDEX IF NOT EXISTS runs_by_workflow ON runs (space, workflow, neg, rid);
CREATE INDEX IF NOT EXISTS runs_pending ON runs (space) WHERE pending = 1;
CREATE TABLE IF NOT EXISTS built (space TEXT PRIMARY KEY) WITHOUT ROWID;
"""
_SELECT = "SELECT rid, status, started_at, workflow, pending FROM runs WHERE space = ?"
_UPSERT = (
    "INSERT INTO runs (space, rid, status, neg, started_at, workflow, pending) "
    "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (space, rid) DO UPDATE SET "
    "status = excluded.status, neg = excluded.neg, started_at = excluded.started_at, "
    "workflow = excluded.workflow, pending = excluded.pending"
)


def _values(space: str, row: IndexRow, pending: bool) -> tuple[object, ...]:
    return (
        space,
        row.request_id,
        row.status,
        -micros(row.started_at),
        row.started_at,
        row.workflow,
        int(pending),
    )


def _row(found: tuple[str, str, float, str, int]) -> IndexRow:
    rid, status, started_at, workflow, pending = found
    return IndexRow(rid, status, started_at, workflow, bool(pending))


class SqliteIndex:
    """See the module docstring."""

    __slots__ = ("_con", "_fsync", "_lock", "_path", "_timeout")

    def __init__(self, folder: Path, *, fsync: bool, timeout: float) -> None:
        self._path = folder / INDEX_FILE
        self._fsync = fsync
        self._timeout = timeout
        self._lock = threading.Lock()
        self._con: sqlite3.Connection | None = None

    def _exists(self) -> bool:
        return self._con is not None or self._path.exists()

    def _open(self) -> sqlite3.Connection:
        if self._con is None:
            try:
                con = sqlite3.connect(
                    self._path,
                    timeout=self._timeout,
                    isolation_level=None,  # autocommit; transactions are explicit
                    check_same_thread=False,  # one connection, used under self._lock
                )
                con.execute("PRAGMA journal_mode=WAL")
                con.executescript(_SCHEMA)
            except sqlite3.Error as exc:
                raise self._error(exc, "open") from exc
            self._con = con
        return self._con

    def _error(self, exc: sqlite3.Error, op: str) -> DatasourceError:
        text = f"run index {str(self._path)!r}: {op} failed: {exc}"
        if isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc):
            return DatasourceUnavailable(text)
        return DatasourceError(text)

    def close(self) -> None:
        with self._lock:
            if self._con is not None:
                self._con.close()
                self._con = None

    def _sync(self, durable: bool) -> str:
        return "PRAGMA synchronous=" + ("FULL" if durable and self._fsync else "OFF")

    # -- writes ------------------------------------------------------------------------------

    def write(self, rows: Sequence[tuple[str, IndexRow]], *, pending: bool) -> None:
        """Upsert ``rows`` (pending: durable, before the files they describe)."""
        with self._lock:
            con = self._open()
            try:
                con.execute(self._sync(pending))
                con.execute("BEGIN IMMEDIATE")
                try:
                    con.executemany(_UPSERT, [_values(s, r, pending) for s, r in rows])
                    con.execute("COMMIT")
                except BaseException:
                    con.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                raise self._error(exc, "write") from exc

    def confirm(self, rows: Sequence[tuple[str, IndexRow]]) -> None:
        """Clear the pending mark of rows still as written (not synced: see the module)."""
        with self._lock:
            con = self._open()
            try:
                con.execute(self._sync(False))
                con.executemany(
                    "UPDATE runs SET pending = 0 WHERE space = ? AND rid = ? AND status = ? "
                    "AND neg = ? AND workflow = ? AND pending = 1",
                    [
                        (s, r.request_id, r.status, -micros(r.started_at), r.workflow)
                        for s, r in rows
                    ],
                )
            except sqlite3.Error as exc:
                raise self._error(exc, "confirm") from exc

    def fix(self, space: str, expected: IndexRow, actual: IndexRow | None) -> bool:
        with self._lock:
            if not self._exists():
                return False
            con = self._open()
            try:
                con.execute(self._sync(True))
                con.execute("BEGIN IMMEDIATE")
                try:
                    found = con.execute(
                        _SELECT + " AND rid = ?",
                        (space, expected.request_id),
                    ).fetchone()
                    now = None if found is None else _row(found)
                    same = (
                        now is not None and now.same(expected) and now.pending == expected.pending
                    )
                    if same:
                        if actual is None:
                            con.execute(
                                "DELETE FROM runs WHERE space = ? AND rid = ?",
                                (space, expected.request_id),
                            )
                        else:
                            con.execute(_UPSERT, _values(space, actual, False))
                    con.execute("COMMIT")
                except BaseException:
                    con.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                raise self._error(exc, "fix") from exc
            return same

    def fill(self, space: str, rows: Sequence[IndexRow], built: bool) -> None:
        with self._lock:
            con = self._open()
            try:
                con.execute(self._sync(True))
                con.execute("BEGIN IMMEDIATE")
                try:
                    con.executemany(
                        "INSERT OR IGNORE INTO runs (space, rid, status, neg, started_at, "
                        "workflow, pending) VALUES (?, ?, ?, ?, ?, ?, ?)",
                        [_values(space, r, False) for r in rows],
                    )
                    if built:
                        con.execute("INSERT OR IGNORE INTO built (space) VALUES (?)", (space,))
                    con.execute("COMMIT")
                except BaseException:
                    con.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                raise self._error(exc, "fill") from exc

    def remove(self, space: str, request_ids: Sequence[str]) -> None:
        with self._lock:
            if not self._exists():
                return
            con = self._open()
            try:
                con.execute(self._sync(True))
                con.executemany(
                    "DELETE FROM runs WHERE space = ? AND rid = ?",
                    [(space, rid) for rid in request_ids],
                )
            except sqlite3.Error as exc:
                raise self._error(exc, "remove") from exc

    # -- reads -------------------------------------------------------------------------------

    def built(self, space: str) -> bool:
        """Whether every run of ``space`` has its row (``index_fill(..., built=True)``)."""
        with self._lock:
            if not self._exists():
                return False
            con = self._open()
            try:
                found = con.execute("SELECT 1 FROM built WHERE space = ?", (space,)).fetchone()
            except sqlite3.Error as exc:
                raise self._error(exc, "read") from exc
        return found is not None

    def counts(self, space: str) -> dict[str, int]:
        with self._lock:
            if not self._exists():
                return {}
            con = self._open()
            try:
                found = con.execute(
                    "SELECT status, count(*) FROM runs WHERE space = ? GROUP BY status", (space,)
                ).fetchall()
            except sqlite3.Error as exc:
                raise self._error(exc, "count") from exc
        return {status: n for status, n in found}

    def query(self, space: str, query: IndexQuery) -> list[IndexRow]:
        """One ordered range per status asked (each served by an index), merged; plus the
        pending rows, whatever their status."""
        where = ["space = ?"]
        args: list[object] = [space]
        if query.workflow is not None:
            where.append("workflow = ?")
            args.append(query.workflow)
        if query.since is not None:
            where.append("neg <= ?")
            args.append(-micros(query.since))
        if query.after is not None:
            where.append("(neg, rid) > (?, ?)")
            args += [query.after[0], query.after[1]]
        if query.contains:
            where.append("instr(rid, ?) > 0")
            args.append(query.contains)
        tail = f" ORDER BY neg, rid LIMIT {int(query.limit)}"
        # every part is one of the constants above; values are parameters
        sql = " AND ".join([_SELECT, *where[1:]])
        with self._lock:
            if not self._exists():
                return []
            con = self._open()
            try:
                found: list[IndexRow] = []
                if query.statuses is None:
                    found += map(_row, con.execute(sql + tail, args))
                else:
                    for status in query.statuses:
                        rows = con.execute(sql + " AND status = ?" + tail, [*args, status])
                        found += map(_row, rows)
                pending = con.execute(_SELECT + " AND pending = 1", (space,))
                found += (row for row in map(_row, pending) if matches(row, query))
            except sqlite3.Error as exc:
                raise self._error(exc, "query") from exc
        unique = {row.request_id: row for row in found}
        ordered = sorted(unique.values(), key=lambda r: (-micros(r.started_at), r.request_id))
        return ordered[: query.limit]
