"""Regression: processes that open a new folder's run index at the same moment.

SQLite answers the switch to its WAL journal with "database is locked" *at once* (no busy
wait) when another connection is setting the same file up, so two ``blokrun run``s
started together on a new filesystem datasource could fail their first head write (CI saw
a run never reach its second step). Connections now take turns setting the file up.
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING

from blokrun.datasources.fs_index import SqliteIndex
from blokrun.datasources.index import IndexQuery, IndexRow

if TYPE_CHECKING:
    from pathlib import Path

OPENERS = 8
ROUNDS = 15


def _race(folder: Path) -> list[str]:
    """``OPENERS`` connections (each its own, as processes have) released together."""
    barrier = threading.Barrier(OPENERS)
    errors: list[str] = []

    def opener(k: int) -> None:
        index = SqliteIndex(folder, fsync=False, timeout=10.0)
        try:
            barrier.wait()
            index.write([("s", IndexRow(f"r{k}", "running", time.time(), "w"))], pending=True)
        except Exception as exc:  # collected: the test reports every one
            errors.append(repr(exc))
        finally:
            index.close()

    threads = [threading.Thread(target=opener, args=(k,)) for k in range(OPENERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    return errors


def test_connections_opening_a_new_index_together_all_write_their_row(tmp_path: Path) -> None:
    for round_ in range(ROUNDS):
        folder = tmp_path / str(round_)
        folder.mkdir()
        assert _race(folder) == []
        index = SqliteIndex(folder, fsync=False, timeout=10.0)
        try:
            rows = index.query("s", IndexQuery(limit=100))
        finally:
            index.close()
        assert sorted(r.request_id for r in rows) == [f"r{k}" for k in range(OPENERS)]
