"""LangGraph: a linear ``StateGraph`` of async nodes, each writing one ~50-byte state key.

The state is a ``TypedDict`` with one key per step (each node's update is one channel, as a
LangGraph user would write it). Backends: the async savers, used as documented:
``AsyncPostgresSaver`` on a psycopg ``AsyncConnectionPool`` (max 10 connections,
``autocommit``, ``prepare_threshold=0``, ``dict_row``: the documented pool set-up),
``AsyncSqliteSaver.from_conn_string``, ``AsyncRedisSaver`` (needs the RediSearch and
RedisJSON modules), and ``off`` (compiled without a checkpointer). Every ``ainvoke`` uses
``durability="sync"``: each step's checkpoint is written before the next step starts, the
guarantee the other systems give (LangGraph's default, ``"async"``, writes it while the
next step runs). One compiled graph per N; a run is an ``ainvoke`` on a new ``thread_id``.
100 runs at once: ``asyncio.gather`` of 100 ``ainvoke``. Resume: the 100th node raises,
then ``ainvoke(None, config)`` on the same thread continues from the latest checkpoint.
"""

from __future__ import annotations

import re
import uuid
from typing import TYPE_CHECKING, Any, TypedDict

from common import RESUME_STEPS, VALUE, Unavailable, main
from langgraph.graph import END, START, StateGraph

if TYPE_CHECKING:
    import argparse


class LastStep:
    """The last step of the resume graph raises while ``failing`` is set."""

    failing = False


def make_node(i: int, *, fail: bool = False) -> Any:
    key = f"k{i}"

    async def step(state: Any) -> dict[str, str]:
        if fail and LastStep.failing:
            raise RuntimeError("the last step failed on purpose (the benchmark's crash)")
        return {key: VALUE}

    return step


def builder(n: int, *, fail_last: bool = False) -> StateGraph:
    state = TypedDict(f"State{n}", {f"k{i}": str for i in range(n)}, total=False)  # type: ignore[misc]
    g = StateGraph(state)
    prev = START
    for i in range(n):
        g.add_node(f"s{i}", make_node(i, fail=fail_last and i == n - 1))
        g.add_edge(prev, f"s{i}")
        prev = f"s{i}"
    g.add_edge(prev, END)
    return g


class LangGraph:
    def __init__(self, saver: Any, cleanup: Any) -> None:
        self.saver = saver
        self._cleanup = cleanup
        self.graphs: dict[int, Any] = {}

    def config(self, thread_id: str, n: int) -> dict[str, Any]:
        # the default recursion limit (25 supersteps) would stop a 100-step graph
        return {"configurable": {"thread_id": thread_id}, "recursion_limit": n + 10}

    async def run(self, n: int) -> None:
        if n not in self.graphs:
            self.graphs[n] = builder(n).compile(checkpointer=self.saver)
        # durability applies to a checkpointer; with none (off), passing it fails in 1.2
        kwargs = {"durability": "sync"} if self.saver is not None else {}
        out = await self.graphs[n].ainvoke({}, self.config(uuid.uuid4().hex, n), **kwargs)
        assert len(out) == n, out

    def resume_graph(self) -> Any:
        if not hasattr(self, "_resume_graph"):
            self._resume_graph = builder(RESUME_STEPS, fail_last=True).compile(
                checkpointer=self.saver
            )
        return self._resume_graph

    async def prepare(self, k: int) -> list[str]:
        ids = [uuid.uuid4().hex for _ in range(k)]
        LastStep.failing = True
        try:
            for tid in ids:
                try:
                    await self.resume_graph().ainvoke(
                        {}, self.config(tid, RESUME_STEPS), durability="sync"
                    )
                except RuntimeError:
                    pass
                else:
                    raise AssertionError("the last step did not fail")
        finally:
            LastStep.failing = False
        return ids

    async def resume(self, run_id: str) -> None:
        out = await self.resume_graph().ainvoke(
            None, self.config(run_id, RESUME_STEPS), durability="sync"
        )
        assert len(out) == RESUME_STEPS, out

    async def close(self) -> None:
        await self._cleanup()


async def _noop() -> None:
    pass


async def connect(args: argparse.Namespace) -> LangGraph:
    if args.backend == "off":
        return LangGraph(None, _noop)
    if args.backend == "postgresql":
        from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
        from psycopg.rows import dict_row
        from psycopg_pool import AsyncConnectionPool

        pool = AsyncConnectionPool(
            args.pg_url, max_size=10, open=False,
            kwargs={"autocommit": True, "prepare_threshold": 0, "row_factory": dict_row},
        )  # fmt: skip
        await pool.open()
        saver = AsyncPostgresSaver(pool)
        await saver.setup()  # creates and migrates the tables (idempotent)
        return LangGraph(saver, pool.close)
    if args.backend == "sqlite":
        from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

        cm = AsyncSqliteSaver.from_conn_string(f"{args.data_dir}/langgraph.sqlite")
        saver = await cm.__aenter__()
        await saver.setup()

        async def close_sqlite() -> None:
            await cm.__aexit__(None, None, None)

        return LangGraph(saver, close_sqlite)
    if args.backend == "redis":
        from langgraph.checkpoint.redis.aio import AsyncRedisSaver

        cm = AsyncRedisSaver.from_conn_string(f"{args.redis_url}/4")
        try:
            saver = await cm.__aenter__()
            await saver.asetup()
            probe = LangGraph(saver, _noop)
            await probe.run(2)  # fails here without RediSearch / RedisJSON
        except Exception as exc:
            found = re.search(r"unknown command '[^']+'", str(exc))
            said = found.group(0) if found else f"{type(exc).__name__}: {str(exc)[:120]}"
            raise Unavailable(
                f"needs Redis Stack modules (RediSearch + RedisJSON); this redis-server: {said}"
            ) from exc

        async def close_redis() -> None:
            await cm.__aexit__(None, None, None)

        return LangGraph(saver, close_redis)
    raise Unavailable(f"no {args.backend} saver")


if __name__ == "__main__":
    main(
        connect,
        "langgraph",
        ["langgraph", "langgraph-checkpoint", "langgraph-checkpoint-postgres",
         "langgraph-checkpoint-sqlite", "langgraph-checkpoint-redis", "psycopg", "psycopg-pool",
         "aiosqlite", "redis"],
    )  # fmt: skip
