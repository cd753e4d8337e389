"""Fencing tokens as a stateful property, on every driver: random sequences of acquires by
several owners, releases, renewals, fenced writes with any token ever issued, and deletes
of the lease (gc, or a store that lost it), checked against a model of the lease contract
(``LeaseStore`` in ``blokrun/datasources/protocol.py``).

Invariants: every token issued for the key is higher than every token issued before it,
deletes included (a holder frozen since then can never find its token is the latest
again); a fenced write, a fenced delete, a renewal, a release and a delete of the lease
with a token take effect iff their token is the latest issued and the lease was not
deleted since; a live lease of another owner is never taken.
Budget: ``BUDGET`` sequences per driver (``BLOKRUN_PROPERTY_EXAMPLES`` overrides).
"""

from __future__ import annotations

import os
import time
from dataclasses import replace
from typing import TYPE_CHECKING, Any
from uuid import uuid4

import anyio
import anyio.from_thread
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from blokrun.config import DatasourceSettings
from blokrun.datasources import Datasource, build_datasource

if TYPE_CHECKING:
    from pathlib import Path

    from tests.conftest import ServerPool

BUDGET = int(os.environ.get("BLOKRUN_PROPERTY_EXAMPLES", "40"))
#: S3 (moto over HTTP) and MongoDB (the emulator) answer slowly: fewer sequences there
SLOW = {"s3": 4, "mongodb": 2}
LEASE = "_blokrun.lease.prop"
OWNERS = st.sampled_from(["p1", "p2", "p3"])
#: the store of the running test (hypothesis builds the machine itself)
SETTINGS: dict[str, Any] = {}


class LeaseTokenMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.portal_cm = anyio.from_thread.start_blocking_portal()
        self.portal = self.portal_cm.__enter__()
        base: DatasourceSettings = SETTINGS["settings"]
        self.ds: Datasource = build_datasource(replace(base, prefix=f"t{uuid4().hex[:10]}/"))
        self.portal.call(self.ds.__aenter__)
        self.issued: list[int] = []  # every token issued for the key, in order
        self.latest: int | None = None  # None: no lease stored (never taken, or deleted)
        self.holder: str | None = None
        self.live = False

    def teardown(self) -> None:
        try:
            self.portal.call(self.ds.__aexit__, None, None, None)
        finally:
            self.portal_cm.__exit__(None, None, None)

    def _call(self, fn: Any, *args: Any) -> Any:
        async def go() -> Any:
            with anyio.fail_after(30):
                return await fn(*args)

        return self.portal.call(go)

    @rule(owner=OWNERS)
    def acquire(self, owner: str) -> None:
        state = self._call(self.ds.acquire_lease, LEASE, owner, 30)
        if self.live and self.holder != owner:
            assert (state.owner, state.token) == (self.holder, self.latest)  # refused
            return
        assert state.owner == owner
        assert all(state.token > t for t in self.issued), (state.token, self.issued[-3:])
        self.issued.append(state.token)
        self.latest, self.holder, self.live = state.token, owner, True

    @precondition(lambda self: self.issued)
    @rule(pick=st.integers(min_value=0), owner=OWNERS)
    def release(self, pick: int, owner: str) -> None:
        token = self.issued[pick % len(self.issued)]
        self._call(self.ds.release_lease, LEASE, owner, token)
        if token == self.latest:
            self.live = False

    @precondition(lambda self: self.issued)
    @rule(pick=st.integers(min_value=0), owner=OWNERS)
    def renew(self, pick: int, owner: str) -> None:
        token = self.issued[pick % len(self.issued)]
        renewed = self._call(self.ds.renew_lease, LEASE, owner, token, 30)
        assert renewed == (token == self.latest), (token, self.latest)
        if renewed:
            self.live, self.holder = True, owner

    @precondition(lambda self: self.issued)
    @rule(pick=st.integers(min_value=0))
    def write(self, pick: int) -> None:
        token = self.issued[pick % len(self.issued)]
        value = f"{token}".encode()
        ok = self._call(self.ds.save_batch_fenced, [("k", value, None)], LEASE, token)
        assert ok == (token == self.latest), (token, self.latest)
        if ok:
            assert self._call(self.ds.load, "k") == value

    @precondition(lambda self: self.issued)
    @rule(pick=st.integers(min_value=0))
    def fenced_delete(self, pick: int) -> None:
        """gc deleting a batch of the run's keys, holding the token it was issued."""
        token = self.issued[pick % len(self.issued)]
        self._call(self.ds.save, "d", b"x")
        held = self._call(self.ds.delete_batch_fenced, ["d"], LEASE, token)
        assert held == (token == self.latest), (token, self.latest)
        assert (self._call(self.ds.load, "d") is None) == held

    @rule(pick=st.none() | st.integers(min_value=0))
    def delete(self, pick: int | None) -> None:
        """gc collected the run (with the token it holds), or the store lost the lease."""
        token = None if pick is None or not self.issued else self.issued[pick % len(self.issued)]
        removed = self._call(self.ds.delete_lease, LEASE, token)
        if token is not None and token != self.latest:
            assert not removed  # never a lease gc does not hold any more
            return
        assert removed == (self.latest is not None)
        self.latest, self.holder, self.live = None, None, False

    @invariant()
    def stored_as_modelled(self) -> None:
        state = self._call(self.ds.read_lease, LEASE)
        if self.latest is None:
            assert state is None
            return
        assert state is not None and state.token == self.latest
        assert state.live(time.time()) == self.live


@pytest.fixture(params=["memory", "filesystem", "redis", "postgresql", "mongodb", "s3"])
def store_settings(
    request: pytest.FixtureRequest, tmp_path: Path, server_pool: ServerPool
) -> DatasourceSettings:
    if request.param == "filesystem":
        return DatasourceSettings(name="p", type="filesystem", path=str(tmp_path / "fs"))
    if request.param == "memory":
        return DatasourceSettings(name="p", type="memory")
    return server_pool.get(request.param).settings("p")


def test_fencing_tokens_keep_their_promise(store_settings: DatasourceSettings) -> None:
    SETTINGS["settings"] = store_settings
    budget = max(1, BUDGET // SLOW.get(store_settings.type, 1))
    try:
        run_state_machine_as_test(
            LeaseTokenMachine,
            settings=settings(
                max_examples=budget,
                stateful_step_count=25,
                deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
            ),
        )
    finally:
        SETTINGS.clear()
