"""Run leases: one process drives a run at a time, and a presumed-dead holder cannot write.

A run (``run`` or ``resume``) first takes the lease ``_blokrun.lease.<request id>`` in the
*lease datasource* (by default the first configured datasource that keeps leases, shared
ones before the in-process memory store). The datasource answers with a **fencing token**,
higher than any token issued for that run before -- also before gc deleted its lease or
the datasource lost its data (the token is taken from the clock where the count is gone).
While the run goes on, a heartbeat renews the lease every third of its TTL; when it ends
the lease is released.

* A second process that asks for the lease while it is live gets :class:`RunBusy` ("being
  resumed elsewhere") naming the holder and until when it holds it.
* A holder that dies stops renewing: the lease expires after its TTL and another process
  may take the run over, with a higher token. A holder that ran on *this* machine (same
  kernel and PID namespace) and whose process is gone is taken over at once, so
  ``blokrun resume`` right after a ``kill -9`` does not wait out the TTL.
* Every checkpoint write of the run to the lease datasource is **fenced**: the datasource
  stores it only if the run's token is still the latest. A holder that was merely paused
  (a long GC, a frozen VM, a partition) and comes back after a takeover has its write
  refused and stops with :class:`LeaseLost` — it never overwrites the new holder's state.
  Writes to *other* targets of a run are not fenced (the lease datasource is the
  authority); put the datasource you resume from first.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import math
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import anyio

from blokrun.errors import BlokrunError, DatasourceError, LeaseLost, RunBusy
from blokrun.persistence.keys import LEASE_PREFIX, SLOT_PREFIX, lease_key

if TYPE_CHECKING:
    from asyncio import TimerHandle
    from collections.abc import Mapping, Sequence

    from anyio.abc import TaskGroup

    from blokrun.datasources import Datasource, Entry, LeaseState

__all__ = [
    "LEASE_PREFIX",
    "SLOT_PREFIX",
    "Lease",
    "acquire",
    "holder_is_dead",
    "holding",
    "lease_key",
    "new_owner",
    "shown_status",
]

log = logging.getLogger("blokrun.leases")


def _node() -> str:
    """This kernel and PID namespace: processes that share it can see each other's pids."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text()
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""
    return hashlib.sha256(f"{boot}|{namespace}".encode()).hexdigest()[:12]


_NODE = _node()

#: Owner names of the leases this process holds right now. Process-wide by nature, like
#: the pid: it lets a new Runner in the same process take over a lease that an earlier
#: one could not release (its datasource was down), instead of waiting out the TTL.
_HELD_HERE: set[str] = set()


def new_owner() -> str:
    """A name for one holder, unique per acquisition: ``host/node:pid:random``."""
    return f"{_host()}/{_NODE}:{os.getpid()}:{os.urandom(6).hex()}"


@functools.cache
def _host() -> str:
    """This machine's name, asked once (a system call per run was a tenth of a run's own
    start-up cost: benchmarks/PROFILE.md); a renamed host keeps its old name here, which
    only labels the owner (liveness is judged by node and PID)."""
    return socket.gethostname()


def holder_is_dead(owner: str) -> bool:
    """Whether ``owner`` ran in this kernel and PID namespace and is certainly done: its
    process is gone, or it is this process and no code here holds that lease any more.

    A holder elsewhere (another machine, container or an unknown format) is presumed alive
    until its lease expires.
    """
    node_part, _, rest = owner.partition(":")
    pid_text = rest.partition(":")[0]
    if not _NODE or not node_part.endswith("/" + _NODE) or not pid_text.isdigit():
        return False
    pid = int(pid_text)
    if pid == os.getpid():
        return owner not in _HELD_HERE  # ours, but whoever held it is done with it
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # exists, owned by someone else
        return False
    return False


def shown_status(status: str, lease: LeaseState | None, now: float) -> str:
    """The status of a run whose head says ``status``, as every command and the API show it:
    ``"interrupted"`` when the head says running but nobody runs it any more -- its lease
    expired, or its holder's process is gone. ``lease``: the run's lease as stored (``None``
    when leases are not kept, or it was released: then the head is taken at its word)."""
    if status != "running" or lease is None:
        return status
    if not lease.live(now) or holder_is_dead(lease.owner):
        return "interrupted"
    return status


def holding(lease: LeaseState | None, now: float) -> LeaseState | None:
    """``lease`` if someone holds it now (live, and its holder is not known to be gone)."""
    if lease is None or not lease.live(now) or holder_is_dead(lease.owner):
        return None
    return lease


@dataclass(slots=True)
class Lease:
    """A held lease. ``lost`` is set once the datasource refused the token."""

    datasource: Datasource
    request_id: str
    key: str
    owner: str
    token: int
    ttl: float
    expires_at: float
    lost: bool = False
    released: bool = False
    renewals: int = field(default=0)
    #: ended by the run's last write (``Capabilities.release_in_batch``): no release to send
    released_by_write: bool = False
    #: the values of the keys asked for with the lease (``acquire(..., reading=...)``), as
    #: they were once it was taken; ``None`` if they were not read with it
    read: dict[str, bytes] | None = None
    #: a renewal's answer never came (cancelled): it may land after the lease ended
    renewal_unsettled: bool = False
    #: the heartbeat task was started (:meth:`keep`)
    beating: bool = False
    #: the entries given to ``acquire(..., writing=...)`` were written with the lease (the
    #: keys read were all free): the caller does not save them again
    wrote: bool = False

    def lost_error(self, step: str | None = None) -> LeaseLost:
        self.lost = True
        return LeaseLost(
            f"another process took this run over (lease token {self.token} on datasource "
            f"{self.datasource.name!r} is no longer the latest); this process stopped "
            "without writing",
            request_id=self.request_id,
            step=step,
        )

    def is_released(self) -> bool:
        return self.released

    async def renew(self) -> bool:
        if self.released:  # a renewal must never bring back a lease its holder let go
            return False
        try:
            ok = await self.datasource.renew_lease(self.key, self.owner, self.token, self.ttl)
        except BaseException:
            # cancelled (the run ended) or failed with its answer outstanding: the server
            # may still execute it, after the write that ended the lease -- release() must
            # then send a release of its own
            self.renewal_unsettled = True
            raise
        if self.is_released():  # released while this renewal was on its way: not lost
            if ok:
                await self.datasource.release_lease(self.key, self.owner, self.token)
            return False
        if ok:
            self.renewals += 1
            self.expires_at = time.time() + self.ttl
        else:
            self.lost = True
        return ok

    @property
    def interval(self) -> float:
        """How often the heartbeat renews the lease: a third of its TTL."""
        return max(self.ttl / 3, 0.05)

    def keep(self, tg: TaskGroup) -> TimerHandle:
        """Start :meth:`heartbeat` in ``tg`` once one :attr:`interval` has passed, from a
        timer: a run that ends sooner (most runs) never starts a task for it. Cancel the
        returned timer when the run ends; if :attr:`beating`, cancel ``tg`` too.

        Spawning and cancelling a task per run was ~15% of a run's own start and end cost
        (benchmarks/PROFILE.md, "Issue 18, round three"); the first renewal is at the same time
        as before."""

        import asyncio  # not at import: `blokrun validate` starts no event loop machinery

        def start() -> None:
            self.beating = True
            tg.start_soon(self.heartbeat, tg.cancel_scope, False, name=f"lease {self.key}")

        return asyncio.get_running_loop().call_later(self.interval, start)

    async def heartbeat(self, on_lost: anyio.CancelScope, wait_first: bool = True) -> None:
        """Renew every ``ttl / 3`` until cancelled (at once first unless ``wait_first``);
        cancel ``on_lost`` if the lease is gone.

        A renewal that fails because the datasource is unreachable is retried at the next
        beat: the run's own fenced writes are what decide, not the heartbeat.
        """
        interval = self.interval
        while True:
            if wait_first:
                await anyio.sleep(interval)
            wait_first = True
            try:
                if not await self.renew():
                    if self.released:  # ended here (the run's last write): not taken over
                        return
                    log.warning(
                        "run %s: lease taken over by another process; stopping",
                        self.request_id,
                    )
                    if self.datasource.observer is not None:
                        self.datasource.observer.lease_event(
                            self.datasource, self.request_id, "lost"
                        )
                    on_lost.cancel()
                    return
            except BlokrunError as exc:
                log.warning("run %s: could not renew its lease: %s", self.request_id, exc)

    def releasing(self) -> None:
        """A write that ends the lease is on its way: renew no more (a renewal already on
        its way that lands after it is undone: see :meth:`renew`)."""
        self.released = True

    def released_with_write(self) -> None:
        """The write that ends the lease was stored: :meth:`release` has nothing to send."""
        self.released_by_write = True

    def abandon(self) -> None:
        """Stop holding the lease here without telling the datasource (unreachable)."""
        _HELD_HERE.discard(self.owner)
        self.released = True

    async def release(self, *, deadline: float = math.inf) -> bool:
        """End the lease now; ``False`` if the datasource could not be reached (it then
        expires by itself, or the same runner releases it before its next try). Shielded
        from the caller's cancellation, but given up at ``deadline`` (``anyio.current_time``
        clock)."""
        _HELD_HERE.discard(self.owner)
        self.released = True
        if self.released_by_write and not self.renewal_unsettled:
            return True
        with anyio.CancelScope(shield=True), anyio.CancelScope(deadline=deadline) as scope:
            try:
                await self.datasource.release_lease(self.key, self.owner, self.token)
            except BlokrunError as exc:
                log.warning("run %s: could not release its lease: %s", self.request_id, exc)
                return False
        return not scope.cancelled_caught


async def _take(
    ds: Datasource,
    key: str,
    me: str,
    ttl: float,
    request_id: str,
    *,
    reading: Sequence[str],
    writing: Sequence[Entry],
    match: Mapping[str, bytes] | None,
) -> tuple[LeaseState, dict[str, bytes] | None, bool]:
    """The lease's state once ``me`` holds it, the values of ``reading`` read with it
    (``None`` when it had to be taken over: read them afterwards) and whether ``writing``
    was written with it; :class:`RunBusy` naming a live holder."""
    read: dict[str, bytes] | None = None
    wrote = False
    if writing:
        state, read, wrote = await ds.acquire_lease_writing(
            key, me, ttl, reading, writing, match=match
        )
    elif reading:
        state, read = await ds.acquire_lease_reading(key, me, ttl, reading)
    else:
        state = await ds.acquire_lease(key, me, ttl)
    if state.owner != me and holder_is_dead(state.owner):
        read = None
        # The holder was killed on this machine (SIGKILL, OOM): take over now rather than
        # after its TTL. Re-acquiring under its name succeeds only while it still holds the
        # lease, so of several processes doing this at once one ends up with the lease.
        log.warning(
            "run %s: the process holding its lease (%s) is gone; taking over",
            request_id,
            state.owner,
        )
        if ds.observer is not None:
            ds.observer.lease_event(ds, request_id, "taken_from_dead")
        dead = await ds.acquire_lease(key, state.owner, ttl)
        if dead.owner == state.owner:
            await ds.release_lease(key, dead.owner, dead.token)
        state = await ds.acquire_lease(key, me, ttl)
    if state.owner != me:
        left = max(state.expires_at - time.time(), 0.0)
        raise RunBusy(
            f"is being run or resumed elsewhere: its lease on datasource {ds.name!r} is held "
            f"by {state.owner} for {left:.1f}s more (it is renewed while that process "
            "lives; if it died, the lease expires and the run can be taken over)",
            request_id=request_id,
            owner=state.owner,
            expires_at=state.expires_at,
        )
    return state, read, wrote


#: how long an acquire that wrote may spend finding out whether it landed (see _landed)
LANDED_BOUND = 1.0


async def _landed(
    ds: Datasource, key: str, me: str, reading: Sequence[str], writing: Sequence[Entry]
) -> tuple[LeaseState, dict[str, bytes], bool] | None:
    """After an acquire with entries to write failed without an answer (a connection lost
    or timed out after the server ran it): whether it landed. It did if ``me`` holds the
    lease -- only that acquire could have given it to ``me`` --, and wrote ``writing`` if
    the keys read hold exactly its bytes. ``None`` (raise the error) if it did not land, or
    the datasource cannot say within :data:`LANDED_BOUND` seconds: then the lease, if it
    was taken, expires by itself, and a start record that landed stands for an interrupted
    run (resumable), as a start record whose own write lost its answer always did."""
    mine = {k: v for k, v, _ in writing}
    with anyio.move_on_after(LANDED_BOUND):
        try:
            state = await ds.read_lease(key)
            if state is None or state.owner != me:
                return None
            values = await ds.load_batch(reading)
        except BlokrunError:
            return None
        checked = [k for k in reading if k in mine]
        wrote = bool(checked) and all(values.get(k) == mine[k] for k in checked)
        log.warning(
            "lease %s: the acquire's answer was lost, but it was taken%s",
            key,
            " with its write" if wrote else "",
        )
        return state, values, wrote
    return None


async def acquire(
    ds: Datasource,
    request_id: str,
    ttl: float,
    owner: str | None = None,
    *,
    prefix: str = LEASE_PREFIX,
    reading: Sequence[str] = (),
    writing: Sequence[Entry] = (),
    match: Mapping[str, bytes] | None = None,
) -> Lease:
    """Take the run's lease (or another lease under ``prefix``) or raise :class:`RunBusy`
    naming the live holder. ``reading``: keys of ``ds`` to read once the lease is taken --
    in the same round trip where the driver can (``Lease.read``). ``writing``: entries to
    write fenced by the new lease if every key of ``reading`` is free -- or holds exactly
    what ``match`` gives for it --, in the same round trip and atomic step where the driver
    can (``Lease.wrote``; else nothing is written)."""
    key = prefix + request_id
    me = owner or new_owner()
    # Held here from the moment it is asked for: another Runner of this process whose
    # acquire answers first must see a live holder in this process, not a dead one.
    _HELD_HERE.add(me)
    try:
        try:
            state, read, wrote = await _take(
                ds, key, me, ttl, request_id, reading=reading, writing=writing, match=match
            )
        except DatasourceError:
            landed = await _landed(ds, key, me, reading, writing) if writing else None
            if landed is None:
                raise
            state, read, wrote = landed
    except BaseException:
        _HELD_HERE.discard(me)
        raise
    return Lease(
        ds, request_id, key, me, state.token, ttl, state.expires_at, read=read, wrote=wrote
    )
