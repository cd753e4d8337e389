"""Apache Burr: a linear graph of async actions, each writing one ~50-byte state field.

Backends: Burr's async persisters, used as documented (``with_state_persister``, built
with ``abuild``): ``AsyncRedisBasePersister`` (redis-py asyncio), ``AsyncPostgreSQLPersister``
(asyncpg, ``use_pool=True``: asyncpg's default pool of 10), ``AsyncSQLitePersister``
(aiosqlite), and ``off`` (no persister). The graph is built once; every run is a new
``Application`` (that is how Burr starts a run), whose build is part of the run's time.
100 runs at once: ``asyncio.gather`` of 100 applications' ``arun``, one shared persister.
Resume: the 100th action raises (Burr saves the state with status ``failed``), then a new
application ``initialize_from`` the persister (``resume_at_next_action=True``) runs it.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from burr.core import ApplicationBuilder, State, action
from burr.core.graph import GraphBuilder
from common import RESUME_STEPS, VALUE, main

if TYPE_CHECKING:
    import argparse

PARTITION = "bench"


class LastStep:
    """The last step of the resume graph raises while ``failing`` is set."""

    failing = False


def make_action(i: int, *, fail: bool = False) -> Any:
    key = f"k{i}"

    @action(reads=[], writes=[key])
    async def step(state: State) -> State:
        if fail and LastStep.failing:
            raise RuntimeError("the last step failed on purpose (the benchmark's crash)")
        return state.update(**{key: VALUE})

    return step


def graph(n: int, *, fail_last: bool = False) -> Any:
    actions = {f"s{i}": make_action(i, fail=fail_last and i == n - 1) for i in range(n)}
    return (
        GraphBuilder()
        .with_actions(**actions)
        .with_transitions(*[(f"s{i}", f"s{i + 1}") for i in range(n - 1)])
        .build()
    )


async def persister(args: argparse.Namespace) -> Any:
    if args.backend == "off":
        return None
    if args.backend == "redis":
        from burr.integrations.persisters.b_redis import AsyncRedisBasePersister

        url = urlsplit(args.redis_url)
        return AsyncRedisBasePersister.from_values(host=url.hostname, port=url.port, db=2)
    if args.backend == "postgresql":
        from burr.integrations.persisters.b_asyncpg import AsyncPostgreSQLPersister

        url = urlsplit(args.pg_url)
        p = await AsyncPostgreSQLPersister.from_values(
            db_name=url.path.lstrip("/"), user=url.username, password=url.password or "",
            host=url.hostname, port=url.port, table_name="burr_state", use_pool=True,
        )  # fmt: skip
    elif args.backend == "sqlite":
        from burr.integrations.persisters.b_aiosqlite import AsyncSQLitePersister

        p = await AsyncSQLitePersister.from_values(
            db_path=f"{args.data_dir}/burr.sqlite", table_name="burr_state"
        )
    else:
        raise ValueError(f"unknown backend {args.backend}")
    await p.initialize()  # creates the table if missing
    return p


class Burr:
    def __init__(self, p: Any) -> None:
        self.persister = p
        self.graphs: dict[int, Any] = {}

    def builder(self, g: Any, app_id: str) -> Any:
        b = (
            ApplicationBuilder()
            .with_graph(g)
            .with_identifiers(app_id=app_id, partition_key=PARTITION)
        )
        if self.persister is not None:
            b = b.with_state_persister(self.persister)
        return b

    async def run(self, n: int) -> None:
        if n not in self.graphs:
            self.graphs[n] = graph(n)
        builder = self.builder(self.graphs[n], uuid.uuid4().hex)
        app = await builder.with_state().with_entrypoint("s0").abuild()
        _, _, state = await app.arun(halt_after=[f"s{n - 1}"])
        assert state[f"k{n - 1}"] == VALUE

    async def prepare(self, k: int) -> list[str]:
        self.resume_graph = graph(RESUME_STEPS, fail_last=True)
        ids = [uuid.uuid4().hex for _ in range(k)]
        LastStep.failing = True
        try:
            for app_id in ids:
                app = (
                    await self.builder(self.resume_graph, app_id)
                    .with_state()
                    .with_entrypoint("s0")
                    .abuild()
                )
                try:
                    await app.arun(halt_after=[f"s{RESUME_STEPS - 1}"])
                except RuntimeError:
                    pass
                else:
                    raise AssertionError("the last step did not fail")
        finally:
            LastStep.failing = False
        return ids

    async def resume(self, run_id: str) -> None:
        g = getattr(self, "resume_graph", None) or graph(RESUME_STEPS, fail_last=True)
        app = await (
            self.builder(g, run_id)
            .initialize_from(
                self.persister,
                resume_at_next_action=True,
                default_state={},
                default_entrypoint="s0",
            )
            .abuild()
        )
        last = f"s{RESUME_STEPS - 1}"
        assert app.get_next_action().name == last, app.get_next_action()
        _, _, state = await app.arun(halt_after=[last])
        assert all(state[f"k{i}"] == VALUE for i in range(RESUME_STEPS))

    async def close(self) -> None:
        if self.persister is not None:
            await self.persister.cleanup()


async def connect(args: argparse.Namespace) -> Burr:
    return Burr(await persister(args))


if __name__ == "__main__":
    main(connect, "burr", ["burr", "apache-burr", "redis", "asyncpg", "aiosqlite"])
