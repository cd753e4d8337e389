"""The release entry (``Capabilities.release_in_batch``): a run's last checkpoint ends its
lease in the same atomic write -- only if the write's fence holds -- and the entry is
never stored as a key, on any driver (the ones without the capability drop it, and the
run releases its lease with a round trip of its own).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any
from uuid import uuid4

import anyio
import pytest

from blokrun import Runner
from blokrun.datasources import Datasource, build_datasource, create_store
from blokrun.datasources.protocol import RELEASE_ENTRY, RELEASE_KEY
from blokrun.persistence.fanout import save_everywhere
from blokrun.persistence.keys import lease_key
from blokrun.persistence.leases import acquire

if TYPE_CHECKING:
    from tests.servers.base import ThrowawayServer

LEASE = "_blokrun.lease.run-1"
pytestmark = pytest.mark.parametrize(
    "server", ["memory", "filesystem", "redis", "postgresql"], indirect=True
)


def open_ds(server: ThrowawayServer) -> Datasource:
    return build_datasource(server.settings("rb", prefix=f"rb-{uuid4().hex[:8]}/"))


async def _stored_keys(ds: Datasource) -> list[str]:
    return sorted(k for k in await ds.keys("") if not k.startswith("_blokrun."))


async def test_a_fenced_write_with_the_entry_ends_the_lease_it_holds(
    server: ThrowawayServer,
) -> None:
    async with open_ds(server) as ds:
        held = await ds.acquire_lease(LEASE, "me", 30)
        assert await ds.save_batch_fenced([("ck", b"last", None), RELEASE_ENTRY], LEASE, held.token)
        assert await ds.load("ck") == b"last"
        after = await ds.read_lease(LEASE)
        assert after is not None and after.token == held.token
        assert after.live(time.time()) != ds.capabilities.release_in_batch
        assert RELEASE_KEY not in await _stored_keys(ds)
        # ended: anyone may take it, with a higher token
        if ds.capabilities.release_in_batch:
            taken = await ds.acquire_lease(LEASE, "you", 30)
            assert taken.owner == "you" and taken.token > held.token


async def test_a_refused_write_ends_nothing(server: ThrowawayServer) -> None:
    async with open_ds(server) as ds:
        held = await ds.acquire_lease(LEASE, "me", 30)
        assert not await ds.save_batch_fenced(
            [("ck", b"stale", None), RELEASE_ENTRY], LEASE, held.token - 1
        )
        assert await ds.load("ck") is None
        after = await ds.read_lease(LEASE)
        assert after is not None and after.live(time.time()) and after.owner == "me"


async def test_an_unfenced_batch_drops_the_entry(server: ThrowawayServer) -> None:
    async with open_ds(server) as ds:
        held = await ds.acquire_lease(LEASE, "me", 30)
        await ds.save_batch([("plain", b"x", None), RELEASE_ENTRY])
        assert await _stored_keys(ds) == ["plain"]
        after = await ds.read_lease(LEASE)
        assert after is not None and after.live(time.time()) and after.token == held.token


async def test_a_completed_run_leaves_its_lease_ended_however_the_heartbeat_ran(
    server: ThrowawayServer,
) -> None:
    """With a lease renewed every 20 ms, a renewal is often on its way when the last
    checkpoint ends the lease; it must not bring the lease back (else the next process
    would wait out the TTL for a finished run)."""
    settings = server.settings("rb", prefix=f"rb-{uuid4().hex[:8]}/")
    wf = {
        "name": "quick",
        "persistence": {"enabled": True, "targets": ["rb"]},
        "steps": [{"name": f"s{i}", "node": "tests.integration.wfnodes:add"} for i in range(30)],
    }
    async with Runner([build_datasource(settings)], lease_ttl=0.06) as runner:
        ds = runner.datasources["rb"]
        for i in range(15):
            result = await runner.run(wf, request_id=f"r{i}")
            assert result.status == "completed"
            state = await ds.read_lease(lease_key(f"r{i}"))
            assert state is not None and not state.live(time.time()), (i, state)


class _GatedRenewals:
    """The driver, with every lease renewal held back until ``gate`` is set: a renewal
    that was on its way before the last write and reaches the server after it."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.gate = anyio.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def renew_lease(self, key: str, owner: str, token: int, ttl: float) -> bool:
        await self.gate.wait()
        ok: bool = await self._inner.renew_lease(key, owner, token, ttl)
        return ok


async def test_a_renewal_landing_after_the_last_write_is_undone(server: ThrowawayServer) -> None:
    settings = server.settings("rb", prefix=f"rb-{uuid4().hex[:8]}/")
    driver = _GatedRenewals(create_store(settings))
    async with Datasource(settings, driver) as ds:
        lease = await acquire(ds, "r", 30)
        async with anyio.create_task_group() as tg:
            renewed: list[bool] = []

            async def renew() -> None:
                renewed.append(await lease.renew())

            tg.start_soon(renew)
            await anyio.sleep(0.01)  # the renewal is on its way, held at the gate
            await save_everywhere(
                [ds],
                [("ck", b"last", None), RELEASE_ENTRY],
                request_id="r",
                lease=lease,
                step="s",
                what="the last checkpoint",
            )
            driver.gate.set()
        assert renewed == [False]  # landed after the release: undone, and said so
        assert await lease.release()  # the run's end: nothing left to send
        state = await ds.read_lease(lease.key)
        assert state is not None and not state.live(time.time()), state
        assert await ds.load("ck") == b"last"


async def test_grouped_saves_end_only_the_leases_of_their_written_groups(
    server: ThrowawayServer,
) -> None:
    """Group commit (one script or statement for many runs): each fenced group with the
    entry ends its own lease if its fence holds; a refused group ends nothing; an unfenced
    group's entry is ignored."""
    if server.driver not in ("redis", "postgresql"):
        pytest.skip(f"{server.driver}: no group commit")
    settings = server.settings("rb", prefix="")
    store: Any = create_store(settings)
    await store.connect()
    try:
        a = await store.acquire_lease("la", "a", 30)
        b = await store.acquire_lease("lb", "b", 30)
        c = await store.acquire_lease("lc", "c", 30)
        written = await store.save_groups(
            [
                ([("ka", b"1", None), (RELEASE_KEY, b"", None)], "la", a.token),
                ([("kb", b"2", None), (RELEASE_KEY, b"", None)], "lb", b.token - 1),  # stale
                ([("kc", b"3", None)], "lc", c.token),  # kept
                ([("kd", b"4", None), (RELEASE_KEY, b"", None)], None, 0),
            ]
        )
        assert written == [True, False, True, True]
        now = time.time()
        ended = {k: not (await store.read_lease(k)).live(now) for k in ("la", "lb", "lc")}
        assert ended == {"la": True, "lb": False, "lc": False}
        assert await store.load_batch(["ka", "kb", "kc", "kd"]) == {
            "ka": b"1",
            "kc": b"3",
            "kd": b"4",
        }
        assert await store.load(RELEASE_KEY) is None
    finally:
        await store.close()
