"""The storage contract every datasource driver implements.

A driver is a :class:`Store`: a small async key-value store that **moves bytes**. It knows
nothing about workflows, checkpoints, codecs, key prefixes or timeouts: those are written
once above it, in :class:`blokrun.datasources.datasource.Datasource`.

Rules every driver follows (the contract suite in ``tests/contract`` checks them):

* Keys are non-empty ``str`` without NUL or other control characters, of at most 1024
  UTF-8 bytes plus the datasource's ``PREFIX`` (checked above the driver). Any other
  character may appear -- ``/``, ``..``, spaces, unicode -- and the driver must store it
  safely (no path traversal, no injection) and return it unchanged from
  :meth:`Store.keys`.
* ``ttl`` is in seconds (float); ``None`` means no expiry. An expired key is never
  returned by ``load``, ``load_batch``, ``exists``, ``keys`` or counted by ``size``,
  whether or not the server expires keys itself.
* ``save`` replaces the whole value atomically: a concurrent reader sees the old or the
  new bytes, never a mix.
* Library exceptions are translated at the driver boundary: connection problems raise
  :class:`~blokrun.errors.DatasourceUnavailable`, other failures
  :class:`~blokrun.errors.DatasourceError` (``raise ... from exc``). The wrapper adds
  the datasource name and key.
* A driver closes only what it opened: a client injected by the caller is left open.
* A driver *may* be a :class:`HealthStore` (``blokrun doctor``): ``describe()`` reports the
  server's version and the state of what blokrun keeps there. It is optional: a driver
  without it is reported as "unknown" and works as before.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, TypeAlias, runtime_checkable

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Mapping, Sequence

__all__ = [
    "OWNED_MARK",
    "RELEASE_ENTRY",
    "RELEASE_KEY",
    "Capabilities",
    "Entry",
    "Group",
    "GroupStore",
    "HealthStore",
    "LeaseState",
    "LeaseStore",
    "ReadingLeaseStore",
    "Store",
    "StoreHealth",
    "WritingLeaseStore",
    "next_token",
    "may_own",
    "owned_key",
    "owner_of",
]

#: The mark of an owned entry's key in a batch (see ``Capabilities.owned_writes``); a key
#: never starts with a control character, so no stored key can be taken for one.
OWNED_MARK = "\x1f"


#: The key of the release entry (:data:`RELEASE_ENTRY`); no stored key can equal it.
RELEASE_KEY = "\x1dblokrun.release"
#: Put in a batch fenced by a lease, it ends that lease once the batch is written, in the
#: same atomic step, on a driver with ``Capabilities.release_in_batch`` (a run's last
#: checkpoint: one round trip less); the wrapper drops it anywhere else.
RELEASE_ENTRY: Entry = (RELEASE_KEY, b"", None)


def owned_key(key: str) -> str:
    """``key`` as an owned entry: written only where it is free or already this owner's."""
    return OWNED_MARK + key


def owner_of(data: bytes) -> bytes | None:
    """The owner of an owned entry's value: its bytes up to and including the first NUL
    (``None``: no NUL, no owner -- such a value is never written as owned)."""
    end = data.find(b"\x00")
    return None if end < 0 else data[: end + 1]


def may_own(current: bytes | None, data: bytes) -> bool:
    """Whether an owned entry ``data`` may replace ``current`` (``None``: nothing live)."""
    owner = owner_of(data)
    return owner is not None and (current is None or current.startswith(owner))


#: One item of a batch save: ``(key, data, ttl_seconds_or_None)``.
Entry: TypeAlias = "tuple[str, bytes, float | None]"
#: One run's save in a group commit: ``(entries, lease_key_or_None, token)``; a group with
#: a lease key is fenced like :meth:`LeaseStore.save_batch_fenced`.
Group: TypeAlias = "tuple[Sequence[Entry], str | None, int]"


@dataclass(frozen=True, slots=True)
class Capabilities:
    """Fast paths a driver has, so the layers above can use them.

    native_ttl
        The server expires keys itself (Redis ``PX``, Mongo TTL index); otherwise the
        driver stores the expiry and filters on read.
    native_batch
        ``save_batch`` / ``load_batch`` cost one round trip (pipeline, one statement,
        one thread hop) rather than one per key.
    atomic_batch
        ``save_batch`` is all-or-nothing (a transaction).
    durable
        A completed ``save`` survives a crash of this process *and* of the machine
        (fsync / committed transaction). The memory driver is not durable.
    shared
        Other processes see the data (false for the memory driver).
    self_timed
        Every operation is bounded by the driver itself (socket / command timeouts set from
        ``settings.timeout``), so the wrapper adds no timer per operation. A timer costs a
        few microseconds and, in asyncio, stays scheduled until its deadline even after
        the operation ended. Drivers that cannot promise this get the wrapper's timer.
    leases
        The driver is a :class:`LeaseStore`: runs can hold a lease with a fencing token
        in it, so two processes never drive one run at once.
    atomic_fencing
        ``save_batch_fenced`` checks the token and writes in one atomic step (a script, a
        row lock, a file lock). Otherwise it checks and then writes, which leaves a window
        of one round trip in which a holder that has just lost its lease can still write.
    group_commit
        The driver has ``save_groups(groups) -> list[bool]``: the saves of many runs (each
        fenced or not) in one round trip and one command or statement, each group written
        all or nothing. The wrapper then coalesces concurrent saves into it.
    owned_writes
        The driver writes **owned entries** (:func:`owned_key`) in its batches: such an
        entry is written only if its key holds no live value, or a value with the same
        *owner* -- the bytes up to and including the first NUL of the new value -- checked
        and written in one atomic step (Redis: in its save scripts). The run recorder
        then stores a step's key-pattern
        alias with its checkpoint without reading it first (one round trip per step
        less); without it, it reads the alias and decides. Such a driver keeps the (full)
        keys of the owned entries it refused in a set ``refused_owned`` until the wrapper
        asks (:meth:`~blokrun.datasources.datasource.Datasource.refused`).
    release_in_batch
        The driver ends the fencing lease of a fenced batch (``save_batch_fenced``, a fenced
        group of ``save_groups``) that holds the entry ``(RELEASE_KEY, b"", None)`` -- as
        the wrapper gives it -- in the same atomic step as the batch, like
        :meth:`LeaseStore.release_lease`, and only if the batch is written. The run
        recorder puts :data:`RELEASE_ENTRY` in a run's last checkpoint.
    lease_reads
        The driver is a :class:`ReadingLeaseStore`: it takes a lease and reads keys in one
        round trip, the read made after the acquire (a run's lease and its head: one round
        trip at a run's start instead of two).
    lease_writes
        The driver is a :class:`WritingLeaseStore`: it takes a lease, reads keys and, when
        the lease was taken and those keys hold what was expected (nothing, or given
        bytes), writes a batch fenced by the new token -- in one round trip and one atomic
        step (a new run's lease, its existence check and its start record; a resume's lease,
        the check that its head did not move and the attempt's start: one round trip
        instead of two).
    lease_matches
        :meth:`WritingLeaseStore.acquire_lease_writing` can write where a key must hold
        given bytes (``match``), not only where keys must be free: Redis (its script sees
        the latest value), PostgreSQL for one such key (an UPDATE, whose condition is
        checked again on the row's latest version).
    """

    native_ttl: bool = False
    native_batch: bool = False
    atomic_batch: bool = False
    durable: bool = True
    shared: bool = True
    self_timed: bool = False
    leases: bool = False
    atomic_fencing: bool = False
    group_commit: bool = False
    owned_writes: bool = False
    release_in_batch: bool = False
    lease_reads: bool = False
    lease_writes: bool = False
    lease_matches: bool = False


@dataclass(frozen=True, slots=True)
class LeaseState:
    """A lease as stored: who holds it, its fencing token, until when (unix seconds).

    ``token`` grows on every successful :meth:`LeaseStore.acquire_lease` and never goes
    back, also across releases, expiries, a deleted lease and a store that lost its data:
    it is the fencing token (see :func:`next_token`).
    """

    owner: str
    token: int
    expires_at: float

    def live(self, now: float) -> bool:
        return self.expires_at > now


def next_token(previous: int | None, now_us: int | None = None) -> int:
    """The fencing token an acquire issues after ``previous`` (``None``: no lease stored).

    A token is the clock in microseconds (``now_us``, else this process's), or one more
    than the previous token where that is higher. So tokens never go back, not even once a
    lease was deleted (gc) or lost with a store's data: a deleted lease's tokens were all
    issued at or before the clock's time then (plus one per acquire in the same
    microsecond), and a new lease starts from the clock's time now. A paused holder can
    never find its token issued again to someone else -- as long as the clock that issues
    the tokens does not step back: drivers use the server's clock where there is one
    (Redis, PostgreSQL), and the in-process memory store keeps its own floor.
    """
    us = time.time_ns() // 1000 if now_us is None else now_us
    return us if previous is None else max(previous, us) + 1


@runtime_checkable
class Store(Protocol):
    """An async byte store. See the module docstring for the rules."""

    @property
    def capabilities(self) -> Capabilities: ...

    @property
    def is_connected(self) -> bool: ...

    async def connect(self) -> None:
        """Open connections / pools and create schema if needed. Idempotent."""

    async def close(self) -> None:
        """Release what :meth:`connect` opened. Idempotent."""

    async def save(self, key: str, data: bytes, ttl: float | None = None) -> None:
        """Store ``data`` under ``key``, replacing any previous value."""

    async def load(self, key: str) -> bytes | None:
        """The bytes under ``key``, or ``None`` if absent or expired."""

    async def exists(self, key: str) -> bool:
        """Whether a live value is stored under ``key``."""

    async def delete(self, key: str) -> bool:
        """Remove ``key``; ``True`` if something was removed."""

    async def save_batch(self, entries: Sequence[Entry]) -> None:
        """Store many entries; see :attr:`Capabilities.native_batch`."""

    async def load_batch(self, keys: Sequence[str]) -> dict[str, bytes]:
        """The live values among ``keys`` (absent or expired keys are left out)."""

    async def delete_batch(self, keys: Sequence[str]) -> int:
        """Remove many keys; returns how many live keys were removed."""

    def keys(self, prefix: str = "") -> AsyncIterator[str]:
        """Iterate the live keys that start with ``prefix`` (any order, each once).

        Must stream (SCAN with a large COUNT, server-side cursor, paginated listing):
        never load every key in one reply.
        """
        ...

    async def size(self) -> int:
        """How many live keys the store holds."""


@runtime_checkable
class LeaseStore(Protocol):
    """Leases with fencing tokens, kept in the datasource itself.

    ``key`` is the full (prefixed) lease key, ``_blokrun.lease.<request id>``. Rules (the
    contract suite checks them against every driver, across processes where it can):

    * :meth:`acquire_lease` succeeds when no live lease exists or ``owner`` already holds
      it; it then stores ``owner``, a token higher than any token ever issued for ``key``
      -- also before a :meth:`delete_lease` or a loss of the store's data: the clock in
      microseconds, or the previous token + 1 where that is higher (:func:`next_token`) --
      and ``expires_at = now + ttl`` (server time where the server has a clock).
      It returns the stored state: the caller holds the lease iff ``state.owner == owner``
      and the state is fresh; otherwise the state names the live holder.
    * :meth:`renew_lease` extends the lease iff ``token`` is still the latest token issued
      (even if the lease expired meanwhile and nobody took it); returns whether it did.
    * :meth:`release_lease` ends the lease now iff ``token`` is the latest; the token count
      is kept, so a later holder gets a higher token.
    * :meth:`save_batch_fenced` stores ``entries`` like ``save_batch`` iff ``token`` is the
      latest token of ``lease_key``, and returns ``True``; otherwise it writes nothing and
      returns ``False`` (a stale holder's write is rejected).
    * :meth:`delete_batch_fenced` deletes ``keys`` like ``delete_batch`` iff ``token`` is the
      latest token of ``lease_key`` and returns ``True``; otherwise it deletes nothing and
      returns ``False`` (gc holding a lease it lost cannot delete a run resumed meanwhile).
    * :meth:`read_lease` returns the stored state (live or expired), ``None`` if none.
    * :meth:`delete_lease` forgets the lease (garbage collection of a finished run) -- with
      ``token``, only while that is its latest token (never a new holder's lease); a later
      acquire still issues a higher token, from the clock. Returns whether something was
      removed.

    Where fencing is not atomic (``Capabilities.atomic_fencing`` false), the fenced
    operations check the token, then act: a holder that lost its lease in that round trip
    can still land one.
    """

    async def acquire_lease(self, key: str, owner: str, ttl: float) -> LeaseState: ...

    async def renew_lease(self, key: str, owner: str, token: int, ttl: float) -> bool: ...

    async def release_lease(self, key: str, owner: str, token: int) -> None: ...

    async def save_batch_fenced(
        self, entries: Sequence[Entry], lease_key: str, token: int
    ) -> bool: ...

    async def delete_batch_fenced(
        self, keys: Sequence[str], lease_key: str, token: int
    ) -> bool: ...

    async def read_lease(self, key: str) -> LeaseState | None: ...

    async def delete_lease(self, key: str, token: int | None = None) -> bool: ...


class ReadingLeaseStore(Protocol):
    """A driver with ``Capabilities.lease_reads``.

    :meth:`acquire_lease_reading` is :meth:`LeaseStore.acquire_lease` and then
    ``load_batch(keys)`` in one round trip: the values as they are once the acquire is
    done -- after every write fenced by an earlier token. A driver that cannot promise that
    for this acquire (PostgreSQL when the lease had a holder before: its statement's
    snapshot may predate that holder's last write) returns ``None`` for the values, and the
    caller reads them itself.
    """

    async def acquire_lease_reading(
        self, key: str, owner: str, ttl: float, keys: Sequence[str]
    ) -> tuple[LeaseState, dict[str, bytes] | None]: ...


class WritingLeaseStore(Protocol):
    """A driver with ``Capabilities.lease_writes``.

    :meth:`acquire_lease_writing` is :meth:`ReadingLeaseStore.acquire_lease_reading` of
    ``keys`` and then, only if ``owner`` now holds the lease and each of ``keys`` holds
    exactly what ``match`` gives for it -- nothing (of any type) for a key not in
    ``match`` --, ``save_batch_fenced(entries, key, new token)``: all in one atomic step.
    ``entries`` hold plain and index entries only (no owned or release entry). The third
    value says whether they were written; a driver that cannot vouch for the check
    (PostgreSQL when the lease had a holder before) writes nothing and says so.
    """

    async def acquire_lease_writing(
        self,
        key: str,
        owner: str,
        ttl: float,
        keys: Sequence[str],
        entries: Sequence[Entry],
        *,
        match: Mapping[str, bytes] | None = None,
    ) -> tuple[LeaseState, dict[str, bytes] | None, bool]: ...


@runtime_checkable
class GroupStore(Protocol):
    """A driver with ``Capabilities.group_commit``: the saves of many runs in one round trip
    (one script or one statement), each group written all or nothing -- fenced by its lease
    key and token when it has one. Returns, per group, whether it was written (False: its
    fence refused it)."""

    async def save_groups(self, groups: Sequence[Group]) -> list[bool]: ...


@dataclass(frozen=True, slots=True)
class StoreHealth:
    """What a driver's :meth:`HealthStore.describe` reports (``blokrun doctor``).

    server
        What answers: ``Redis``, ``PostgreSQL``, ``S3 (MinIO)``, ``local folder``.
    version
        The server's own version string (``7.2.4``, ``16.3 (Debian 16.3-1)``); ``-`` where
        there is no server; ``unknown`` when it cannot be told.
    schema
        One line on what blokrun keeps there: tables, indexes, migration version, folder.
    notes
        Facts worth knowing that are not faults (key count, free space, eviction policy).
    problems
        What is wrong (a table missing, a column of another type, a folder not writable):
        the datasource is then not healthy. Empty when all is well.

    Nothing in it may hold a secret (the caller also redacts it).
    """

    server: str = "unknown"
    version: str = "unknown"
    schema: str = "unknown"
    notes: tuple[str, ...] = ()
    problems: tuple[str, ...] = ()

    @property
    def healthy(self) -> bool:
        return not self.problems


@runtime_checkable
class HealthStore(Protocol):
    """A driver that can describe its server and its blokrun schema (optional).

    ``describe`` only reads (it creates, repairs and migrates nothing) and raises like any
    other operation when the server cannot be reached. Problems it *finds* (a dropped
    table) are returned in :attr:`StoreHealth.problems`, not raised.
    """

    async def describe(self) -> StoreHealth: ...
