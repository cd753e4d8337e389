"""The floor: one raw round trip per step that saves the whole context, nothing else.

Each step adds ``k<i>`` to a dict and writes the dict, JSON-encoded, under the run's key:
redis-py asyncio ``SET`` (hiredis), asyncpg ``INSERT ... ON CONFLICT (id) DO UPDATE`` (pool
of 10 without asyncpg's reset query, like blokrun's: one round trip per upsert), stdlib
``sqlite3`` upsert + commit per step (WAL, ``synchronous=FULL``: durable, as the
filesystem driver's fsync), and ``off``: the dict
assignment alone. No framework, no envelope, no history: what a checkpoint cannot go
under with these clients. Runs with blokrun's virtualenv (the same client versions).
100 runs at once: ``asyncio.gather`` of 100 runs on the pool. Resume: read the state back
and do the last step's write.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import uuid
from typing import TYPE_CHECKING, Any

from common import RESUME_STEPS, VALUE, Unavailable, main

if TYPE_CHECKING:
    import argparse

TABLE = "floor_state"


async def _no_reset(connection: Any) -> None:
    """The pool's ``reset``: nothing (one round trip per upsert)."""


class Floor:
    def __init__(self, args: argparse.Namespace) -> None:
        self.backend = args.backend
        self.args = args
        self.redis: Any = None
        self.pool: Any = None
        self.db: sqlite3.Connection | None = None

    async def start(self) -> Floor:
        a = self.args
        if self.backend == "redis":
            import redis.asyncio as aredis

            self.redis = aredis.Redis.from_url(f"{a.redis_url}/3")
            await self.redis.ping()
        elif self.backend == "postgresql":
            import asyncpg

            # reset=: asyncpg's default sends a reset query each time a connection goes
            # back to the pool, a second round trip per upsert (not the floor)
            self.pool = await asyncpg.create_pool(
                a.pg_url, min_size=1, max_size=10, reset=_no_reset
            )
            await self.pool.execute(
                f"CREATE TABLE IF NOT EXISTS {TABLE} (id text PRIMARY KEY, state bytea NOT NULL)"
            )
        elif self.backend == "sqlite":
            self.db = sqlite3.connect(f"{a.data_dir}/floor.sqlite", isolation_level=None)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=FULL")
            self.db.execute(
                f"CREATE TABLE IF NOT EXISTS {TABLE} (id TEXT PRIMARY KEY, state BLOB NOT NULL)"
            )
        elif self.backend != "off":
            raise Unavailable(f"no {self.backend} floor")
        return self

    async def save(self, run_id: str, state: dict[str, str]) -> None:
        if self.backend == "off":
            return
        data = json.dumps(state).encode()
        if self.redis is not None:
            await self.redis.set(run_id, data)
        elif self.pool is not None:
            await self.pool.execute(
                f"INSERT INTO {TABLE} (id, state) VALUES ($1, $2) "
                "ON CONFLICT (id) DO UPDATE SET state = excluded.state",
                run_id,
                data,
            )
        else:
            assert self.db is not None
            self.db.execute(
                f"INSERT INTO {TABLE} (id, state) VALUES (?, ?) "
                "ON CONFLICT (id) DO UPDATE SET state = excluded.state",
                (run_id, data),
            )

    async def load(self, run_id: str) -> dict[str, str]:
        if self.redis is not None:
            data = await self.redis.get(run_id)
        elif self.pool is not None:
            data = await self.pool.fetchval(f"SELECT state FROM {TABLE} WHERE id = $1", run_id)
        else:
            assert self.db is not None
            data = self.db.execute(f"SELECT state FROM {TABLE} WHERE id = ?", (run_id,)).fetchone()[
                0
            ]
        loaded: dict[str, str] = json.loads(data)
        return loaded

    async def run(self, n: int, run_id: str | None = None, *, start: int = 0) -> None:
        rid = run_id or uuid.uuid4().hex
        state: dict[str, str] = {} if start == 0 else await self.load(rid)
        for i in range(start, n):
            state[f"k{i}"] = VALUE
            await self.save(rid, state)
        assert len(state) == n

    async def prepare(self, k: int) -> list[str]:
        ids = [uuid.uuid4().hex for _ in range(k)]
        for rid in ids:  # the first 99 steps saved; the 100th "failed"
            await self.run(RESUME_STEPS - 1, rid)
        return ids

    async def resume(self, run_id: str) -> None:
        await self.run(RESUME_STEPS, run_id, start=RESUME_STEPS - 1)

    async def close(self) -> None:
        if self.redis is not None:
            await self.redis.aclose()
        if self.pool is not None:
            await asyncio.wait_for(self.pool.close(), 10)
        if self.db is not None:
            self.db.close()


async def connect(args: argparse.Namespace) -> Floor:
    return await Floor(args).start()


if __name__ == "__main__":
    main(connect, "floor", ["redis", "hiredis", "asyncpg"])
