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

import fcntl
import os
import sqlite3
import threading
import time
from contextlib import contextmanager
from typing import TYPE_CHECKING

from blokrun.datasources.index import IndexQuery, IndexRow, matches, micros, ordered
from blokrun.errors import DatasourceError, DatasourceUnavailable

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence
    from pathlib import Path

__all__ = ["INDEX_FILE", "SqliteIndex"]

INDEX_FILE = ".index.sqlite"
#: held (``flock``) while a connection sets the file up: SQLite answers a journal-mode
#: switch that meets another connection with "database is locked" at once, without
#: waiting, so processes opening a new folder's index together take turns here
_OPEN_LOCK = ".index.lock"

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
                with self._opening():
                    con = sqlite3.connect(
                        self._path,
                        timeout=self._timeout,
                        isolation_level=None,  # autocommit; transactions are explicit
                        check_same_thread=False,  # one connection, used under self._lock
                    )
                    try:
                        con.execute("PRAGMA journal_mode=WAL")
                        con.executescript(_SCHEMA)
                    except BaseException:
                        con.close()
                        raise
            except sqlite3.Error as exc:
                raise self._error(exc, "open") from exc
            self._con = con
        return self._con

    @contextmanager
    def _opening(self) -> Iterator[None]:
        """``flock`` on the folder's open lock, waiting up to the driver's timeout."""
        path = self._path.with_name(_OPEN_LOCK)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise DatasourceError(f"run index {str(path)!r}: open failed: {exc}") from exc
        try:
            deadline = time.monotonic() + self._timeout
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise DatasourceUnavailable(
                            f"run index {str(self._path)!r}: another process kept it "
                            f"opening for more than {self._timeout:g}s"
                        ) from None
                    time.sleep(0.005)
            yield
        finally:
            os.close(fd)  # releases the lock

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

    @contextmanager
    def _session(
        self, op: str, *, durable: bool | None = None, transaction: bool = False
    ) -> Iterator[sqlite3.Connection]:
        """The connection, under the lock, for ``op``: ``durable`` sets how the next commit
        is synced (None: as it is), ``transaction`` wraps the work in ``BEGIN IMMEDIATE`` /
        ``COMMIT`` (rolled back on any error); SQLite's errors become blokrun's."""
        with self._lock:
            con = self._open()
            try:
                if durable is not None:
                    con.execute(self._sync(durable))
                if not transaction:
                    yield con
                    return
                con.execute("BEGIN IMMEDIATE")
                try:
                    yield con
                    con.execute("COMMIT")
                except BaseException:
                    con.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                raise self._error(exc, op) from exc

    # -- writes ------------------------------------------------------------------------------

    def write(self, rows: Sequence[tuple[str, IndexRow]], *, pending: bool) -> None:
        """Upsert ``rows`` (pending: durable, before the files they describe)."""
        with self._session("write", durable=pending, transaction=True) as con:
            con.executemany(_UPSERT, [_values(s, r, pending) for s, r in rows])

    def confirm(self, rows: Sequence[tuple[str, IndexRow]]) -> None:
        """Clear the pending mark of rows still as written (not synced: see the module)."""
        with self._session("confirm", durable=False) as con:
            con.executemany(
                "UPDATE runs SET pending = 0 WHERE space = ? AND rid = ? AND status = ? "
                "AND neg = ? AND workflow = ? AND pending = 1",
                [(s, r.request_id, r.status, -micros(r.started_at), r.workflow) for s, r in rows],
            )

    def fix(self, space: str, expected: IndexRow, actual: IndexRow | None) -> bool:
        if not self._exists():
            return False
        with self._session("fix", durable=True, transaction=True) as con:
            found = con.execute(_SELECT + " AND rid = ?", (space, expected.request_id)).fetchone()
            now = None if found is None else _row(found)
            if now is None or not now.same(expected) or now.pending != expected.pending:
                return False
            if actual is None:
                con.execute(
                    "DELETE FROM runs WHERE space = ? AND rid = ?", (space, expected.request_id)
                )
            else:
                con.execute(_UPSERT, _values(space, actual, False))
        return True

    def fill(self, space: str, rows: Sequence[IndexRow], built: bool) -> None:
        with self._session("fill", durable=True, transaction=True) as con:
            con.executemany(
                "INSERT OR IGNORE INTO runs (space, rid, status, neg, started_at, "
                "workflow, pending) VALUES (?, ?, ?, ?, ?, ?, ?)",
                [_values(space, r, False) for r in rows],
            )
            if built:
                con.execute("INSERT OR IGNORE INTO built (space) VALUES (?)", (space,))

    def remove(self, space: str, request_ids: Sequence[str]) -> None:
        if not self._exists():
            return
        with self._session("remove", durable=True) as con:
            con.executemany(
                "DELETE FROM runs WHERE space = ? AND rid = ?",
                [(space, rid) for rid in request_ids],
            )

    # -- reads -------------------------------------------------------------------------------

    def built(self, space: str) -> bool:
        """Whether every run of ``space`` has its row (``index_fill(..., built=True)``)."""
        if not self._exists():
            return False
        with self._session("read") as con:
            found = con.execute("SELECT 1 FROM built WHERE space = ?", (space,)).fetchone()
        return found is not None

    def counts(self, space: str) -> dict[str, int]:
        if not self._exists():
            return {}
        with self._session("count") as con:
            found = con.execute(
                "SELECT status, count(*) FROM runs WHERE space = ? GROUP BY status", (space,)
            ).fetchall()
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
        if not self._exists():
            return []
        found: list[IndexRow] = []
        with self._session("query") as con:
            if query.statuses is None:
                found += map(_row, con.execute(sql + tail, args))
            else:
                for status in query.statuses:
                    found += map(_row, con.execute(sql + " AND status = ?" + tail, [*args, status]))
            pending = con.execute(_SELECT + " AND pending = 1", (space,))
            found += (row for row in map(_row, pending) if matches(row, query))
        return ordered(found, query.limit)
