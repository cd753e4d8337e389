"""A third-party blokrun driver, as a package would ship it: SQLite through the standard
library, declared in the ``blokrun.drivers`` entry-point group of its distribution metadata
(``blokrun_sqlite-0.1.0.dist-info/entry_points.txt``). It takes one setting of its own,
``DATASOURCE_<NAME>_FILE``. Used by ``tests/unit/test_drivers_plugin.py``."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import anyio

from blokrun.datasources import Capabilities, DatasourceSettings, Driver
from blokrun.errors import ConfigError

__all__ = ["DRIVER", "SqliteStore"]

_CAPS = Capabilities(native_batch=True, atomic_batch=True, durable=True, shared=True)


class SqliteStore:
    def __init__(self, path: str) -> None:
        self._path = path
        self._db: sqlite3.Connection | None = None

    @property
    def capabilities(self) -> Capabilities:
        return _CAPS

    @property
    def is_connected(self) -> bool:
        return self._db is not None

    async def _call(self, fn: Any, *args: Any) -> Any:
        return await anyio.to_thread.run_sync(fn, *args)

    def _open(self) -> None:
        db = sqlite3.connect(self._path, check_same_thread=False, isolation_level=None)
        db.execute("CREATE TABLE IF NOT EXISTS kv (k TEXT PRIMARY KEY, v BLOB, exp REAL)")
        self._db = db

    async def connect(self) -> None:
        await self._call(self._open)

    async def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def _conn(self) -> sqlite3.Connection:
        assert self._db is not None
        return self._db

    def _save(self, entries: Sequence[tuple[str, bytes, float | None]]) -> None:
        now = time.time()
        rows = [(k, bytes(v), None if t is None else now + t) for k, v, t in entries]
        with self._conn():
            self._conn().executemany("INSERT OR REPLACE INTO kv VALUES (?, ?, ?)", rows)

    def _load(self, keys: Sequence[str]) -> dict[str, bytes]:
        out: dict[str, bytes] = {}
        now = time.time()
        for k in keys:
            row = self._conn().execute("SELECT v, exp FROM kv WHERE k = ?", (k,)).fetchone()
            if row is not None and (row[1] is None or row[1] > now):
                out[k] = row[0]
        return out

    def _delete(self, keys: Sequence[str]) -> int:
        with self._conn():
            return sum(
                self._conn().execute("DELETE FROM kv WHERE k = ?", (k,)).rowcount for k in keys
            )

    def _keys(self, prefix: str) -> list[str]:
        now = time.time()
        rows = self._conn().execute(
            "SELECT k FROM kv WHERE substr(k, 1, ?) = ? AND (exp IS NULL OR exp > ?) ORDER BY k",
            (len(prefix), prefix, now),
        )
        return [r[0] for r in rows]

    async def save(self, key: str, data: bytes, ttl: float | None = None) -> None:
        await self._call(self._save, [(key, data, ttl)])

    async def load(self, key: str) -> bytes | None:
        found: dict[str, bytes] = await self._call(self._load, [key])
        return found.get(key)

    async def exists(self, key: str) -> bool:
        return await self.load(key) is not None

    async def delete(self, key: str) -> bool:
        return bool(await self._call(self._delete, [key]))

    async def save_batch(self, entries: Sequence[tuple[str, bytes, float | None]]) -> None:
        await self._call(self._save, list(entries))

    async def load_batch(self, keys: Sequence[str]) -> dict[str, bytes]:
        result: dict[str, bytes] = await self._call(self._load, list(keys))
        return result

    async def delete_batch(self, keys: Sequence[str]) -> int:
        deleted: int = await self._call(self._delete, list(keys))
        return deleted

    async def keys(self, prefix: str = "") -> AsyncIterator[str]:
        for key in await self._call(self._keys, prefix):
            yield key

    async def size(self) -> int:
        return len(await self._call(self._keys, ""))


def create(settings: DatasourceSettings) -> SqliteStore:
    path = settings.options.get("FILE")
    if not path:
        raise ConfigError(
            f"DATASOURCE_{settings.name.upper()}_FILE is missing: the sqlite file",
            variable=f"DATASOURCE_{settings.name.upper()}_FILE",
        )
    return SqliteStore(path)


DRIVER = Driver(
    "sqlite",
    create,
    needs=frozenset({"FILE"}),
    settings=frozenset({"FILE"}),
    aliases=("sqlite3",),
)
