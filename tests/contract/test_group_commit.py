"""``save_groups`` (group commit) on every driver that declares it, and the wrapper's
coalescing of concurrent saves into it."""

from __future__ import annotations

from typing import TYPE_CHECKING
from uuid import uuid4

import anyio
import pytest

from blokrun.datasources import build_datasource

if TYPE_CHECKING:
    from tests.servers.base import ThrowawayServer

#: The drivers that declare group commit (memory, filesystem, MongoDB and S3 do not: each
#: of their saves is its own round trip or thread hop).
pytestmark = pytest.mark.parametrize("server", ["redis", "postgresql"], indirect=True)


async def test_save_groups_writes_each_group_whose_fence_holds(server: ThrowawayServer) -> None:
    async with build_datasource(server.settings("g", prefix=f"g-{uuid4().hex[:8]}/")) as ds:
        assert ds.capabilities.group_commit
        live = await ds.acquire_lease("_blokrun.lease.a", "me", 30)
        other = await ds.acquire_lease("_blokrun.lease.b", "me", 30)
        await ds.release_lease("_blokrun.lease.b", "me", other.token)
        await ds.acquire_lease("_blokrun.lease.b", "someone", 30)  # b's token moved on
        p = ds.settings.prefix
        groups = [
            (
                [(p + "a-1", b"a1", None), (p + "h", b"from-a", None)],
                p + "_blokrun.lease.a",
                live.token,
            ),
            (
                [(p + "b-1", b"b1", None), (p + "h", b"from-b", None)],
                p + "_blokrun.lease.b",
                other.token,
            ),
            ([(p + "c-1", b"c1", 60.0), (p + "h", b"from-c", None)], None, 0),
            ([(p + "d-1", b"d1", None)], p + "_blokrun.lease.none", 1),
        ]
        assert await ds.store.save_groups(groups) == [True, False, True, False]  # type: ignore[attr-defined]
        assert await ds.load_batch(["a-1", "b-1", "c-1", "d-1", "h"]) == {
            "a-1": b"a1",
            "c-1": b"c1",
            "h": b"from-c",  # a key twice in one flush: the later group wins
        }


async def test_concurrent_saves_share_round_trips_and_keep_their_own_answers(
    server: ThrowawayServer,
) -> None:
    async with build_datasource(server.settings("g", prefix=f"g-{uuid4().hex[:8]}/")) as ds:
        assert ds.group_commit is not None
        leases = {}
        for i in range(100):
            leases[i] = await ds.acquire_lease(f"_blokrun.lease.r{i}", "me", 30)
        for i in range(0, 100, 10):  # every tenth run was taken over by someone else
            await ds.release_lease(f"_blokrun.lease.r{i}", "me", leases[i].token)
            await ds.acquire_lease(f"_blokrun.lease.r{i}", "other", 30)
        answers: dict[int, bool] = {}
        before = (ds.group_commit.flushes, ds.group_commit.groups)

        async def one(i: int) -> None:
            answers[i] = await ds.save_batch_fenced(
                [(f"r{i}-s", b"%d" % i, None)], f"_blokrun.lease.r{i}", leases[i].token
            )

        async with anyio.create_task_group() as tg:
            for i in range(100):
                tg.start_soon(one, i)
        flushes = ds.group_commit.flushes - before[0]
        assert ds.group_commit.groups - before[1] == 100
        assert flushes < 50  # shared: far fewer round trips than saves
        assert answers == {i: i % 10 != 0 for i in range(100)}
        stored = await ds.load_batch([f"r{i}-s" for i in range(100)])
        assert stored == {f"r{i}-s": b"%d" % i for i in range(100) if i % 10}
