"""How many datasource round trips a run costs, counted (not timed) by a store that wraps
the real driver: a regression in the number shows up in ``make test``, not only in a
benchmark (issue 18).

The design, per run of N checkpointed steps on one datasource with leases on:

* start: the lease, the existence check of the request id (a read of its head and run
  record) and the start record (definition, run record, head and index row): 1 where the
  driver writes with the lease when the id is free (``Capabilities.lease_writes``: Redis,
  PostgreSQL); elsewhere the lease and the check (1 where the driver reads with the
  lease, ``Capabilities.lease_reads``, else 2), then the start record (1 in one batch
  where batches are atomic);
* each step: its checkpoint (1: checkpoint, head and alias in one fenced batch) and, where
  the driver cannot keep an alias's first writer itself (``Capabilities.owned_writes``:
  Redis and PostgreSQL can), the alias ownership read (1);
* end: the lease's release: in the last checkpoint's write where the driver can
  (``Capabilities.release_in_batch``: Redis, PostgreSQL), else 1. The last checkpoint marks the run
  completed.

So N + 1 on Redis and PostgreSQL (the floor's N, plus one), and 2N + 5 on the
filesystem, whose batches are not atomic (the definition is written before the start
record, so a head never points at a missing definition) and whose alias is read first. A
resume adds the reads that find the run's latest checkpoint: its head, then the records
the head points at (2), or both at once (1) in the process that last drove the run, which
knows where it left it (:mod:`blokrun.persistence.hints`); its start goes with its lease
too where the driver can check the head it was planned on in the same step
(``Capabilities.lease_matches``: Redis, PostgreSQL). A run whose id is taken
(``--restart``), or that a hook sees before the recorder (tracing), writes its start
record in a round trip of its own.
"""

from __future__ import annotations

from collections import Counter
from typing import Any
from uuid import uuid4

import pytest

from blokrun import Runner, StepFailed
from blokrun.datasources import Datasource, create_store
from blokrun.datasources.postgresql import PostgresStore
from blokrun.execution.events import RunStarted
from blokrun.execution.hooks import Hook
from tests.conftest import ServerPool
from tests.integration import wfnodes

NODE = "tests.integration.wfnodes"
#: driver methods that are a round trip each (the batch forms are one, see Capabilities)
TRIPS = {
    "save",
    "load",
    "exists",
    "delete",
    "save_batch",
    "load_batch",
    "delete_batch",
    "acquire_lease",
    "acquire_lease_reading",
    "acquire_lease_writing",
    "renew_lease",
    "release_lease",
    "save_batch_fenced",
    "save_groups",
    "read_lease",
    "delete_lease",
    "index_query",
    "index_counts",
    "index_fix",
    "index_fill",
    "index_built",
    "index_remove",
}


class Counting:
    """The driver, with every round trip counted by method."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.calls: Counter[str] = Counter()

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if name not in TRIPS:
            return attr

        async def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls[name] += 1
            return await attr(*args, **kwargs)

        return counted

    @property
    def total(self) -> int:
        return sum(self.calls.values())


def flow(n: int) -> dict[str, Any]:
    return {
        "name": "trips",
        "steps": [
            {"name": f"s{i}", "node": f"{NODE}:add", "inputs": {"n": 1}} for i in range(1, n + 1)
        ],
    }


@pytest.fixture(params=["redis", "postgresql", "filesystem"])
async def counted(request: pytest.FixtureRequest, server_pool: ServerPool) -> Any:
    settings = server_pool.get(request.param).settings("default", prefix=f"rt-{uuid4().hex[:8]}/")
    store = Counting(create_store(settings))
    async with Runner([Datasource(settings, store)]) as runner:
        yield runner, store, 0 if store.capabilities.atomic_batch else 1


def _lease_and_read(store: Any, *, reliable: bool) -> Counter[str]:
    """Taking the run's lease and reading its first keys: one round trip where the driver
    reads with the lease and can vouch for what it read (``reliable``), else two."""
    if store.capabilities.lease_reads:
        return Counter(acquire_lease_reading=1, load_batch=0 if reliable else 1)
    return Counter(acquire_lease=1, load_batch=1)


@pytest.mark.parametrize("n", [1, 10, 100])
async def test_a_run_costs_what_the_design_says(counted: Any, n: int) -> None:
    runner, store, loose = counted
    reads = 0 if store.capabilities.owned_writes else n
    store.calls.clear()
    await runner.run(flow(n), request_id=f"run-{n}")
    release = 0 if store.capabilities.release_in_batch else 1
    if store.capabilities.lease_writes:
        start = Counter(acquire_lease_writing=1)
        expected = start + Counter(save_batch_fenced=n, load=reads, release_lease=release)
    else:
        start = _lease_and_read(store, reliable=True) + Counter(save_batch_fenced=1 + loose)
        expected = start + Counter(save_batch_fenced=n, load=reads, release_lease=release)
    assert store.calls == +expected, store.calls
    assert store.total == n + sum(start.values()) + release + reads
    if store.capabilities.lease_writes:
        assert store.total == n + 1  # the bar: the floor's N round trips, plus one


async def test_a_taken_id_or_a_hook_first_costs_the_start_record_its_own_trip(
    counted: Any,
) -> None:
    """Where the start record cannot go with the lease -- the id is taken (a restart),
    or a hook that runs before the recorder may fill the head's context -- it is written
    in a round trip of its own, after the lease and the existence check."""
    runner, store, loose = counted
    await runner.run(flow(3), request_id="again")
    store.calls.clear()
    result = await runner.run(flow(3), request_id="again", restart=True)
    assert result.status == "completed"
    assert store.calls["acquire_lease_writing"] == (1 if store.capabilities.lease_writes else 0)
    assert store.calls["save_batch_fenced"] == 3 + 1 + loose


class _Context(Hook):
    first = True

    async def on_run_start(self, event: RunStarted) -> None:
        event.context["traceparent"] = "00-" + "1" * 32 + "-" + "2" * 16 + "-01"


async def test_a_hook_first_gets_the_start_record_written_after_it(counted: Any) -> None:
    """A hook that runs before the recorder may fill the head's context at the run's
    start: the start record then waits for it (its own round trip) and carries it."""
    runner, store, loose = counted
    runner.add_hook(_Context())  # the fixture's runner is this test's own
    store.calls.clear()
    await runner.run(flow(2), request_id="hooked")
    assert store.calls["acquire_lease_writing"] == 0
    assert store.calls["save_batch_fenced"] == 2 + 1 + loose
    head = await runner.store.head("hooked")
    assert head is not None and head.context["traceparent"].startswith("00-111")


@pytest.mark.parametrize("where", ["same process", "another process"])
async def test_a_resume_costs_what_its_reads_and_remaining_steps_do(
    counted: Any, where: str
) -> None:
    """In the process that drove the run last, the records the head points at are read
    with the head; elsewhere (a runner that never saw the run) after it."""
    runner, store, loose = counted
    wfnodes.FAIL_AT.add("s6")
    try:
        with pytest.raises(StepFailed):
            await runner.run(flow(10), request_id="res")
    finally:
        wfnodes.FAIL_AT.clear()
    if where == "same process":
        store.calls.clear()
        await runner.resume("res")
        locating = 1
    else:
        settings = runner.store.datasources["default"].settings
        store = Counting(create_store(settings))
        async with Runner([Datasource(settings, store)]) as elsewhere:
            store.calls.clear()  # its start checked the run index
            await elsewhere.resume("res")
        locating = 2
    calls = +store.calls
    head = await runner.store.head("res")
    assert head is not None and head.status == "completed"
    left = 5  # s6..s10
    reads = 0 if store.capabilities.owned_writes else left
    # PostgreSQL reads with a lease only when the lease is new (its statement's snapshot
    # could predate a previous holder's last write): a resume's lease is not
    reliable = store.capabilities.lease_reads and not isinstance(store._inner, PostgresStore)
    if store.capabilities.lease_matches:
        # the lease, the head's re-check and the attempt's start in one script or statement
        # (a compare-and-set on the head it was planned on): 2 or 3 round trips before s6
        expected = Counter(acquire_lease_writing=1, load_batch=locating, save_batch_fenced=left)
        assert calls == +expected, calls
        assert calls.total() == left + 1 + locating
        return
    expected = _lease_and_read(store, reliable=reliable) + Counter(
        # locate: the head and run record, then the records after the head (roll-forward
        # probe) with the latest checkpoint and the definition the head names; both at once
        # where this process left the run
        load_batch=locating,
        # the alias reads (not on Redis or PostgreSQL)
        load=reads,
        save_batch_fenced=left + 1 + loose,  # the resume's start record, then each step
        release_lease=0 if store.capabilities.release_in_batch else 1,
    )
    assert calls == +expected, calls
    assert calls.total() == sum(expected.values())
    assert (
        calls.total()
        == left + reads + 1 + locating + loose + (1 if reliable else 2) + expected["release_lease"]
    )
