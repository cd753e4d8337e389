"""A named datasource: a :class:`Store` plus what is written once for every driver.

The wrapper adds, above any driver: the key prefix, key validation, the default TTL, a
timeout on every operation, and error translation (every failure names the datasource and
the key; nothing leaks a password). It moves bytes; codecs live in ``blokrun.persistence``.
"""

from __future__ import annotations

import fnmatch
import math
import re
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, NoReturn, Protocol, Self, cast

import anyio
import msgspec

from blokrun.datasources.groupcommit import GroupCommit
from blokrun.datasources.index import (
    INDEX_KEY,
    IndexQuery,
    IndexRow,
    IndexStore,
    decode_row,
    space_key,
)
from blokrun.datasources.protocol import (
    OWNED_MARK,
    RELEASE_KEY,
    GroupStore,
    HealthStore,
    StoreHealth,
)
from blokrun.errors import BlokrunError, DatasourceError, DatasourceUnavailable

if TYPE_CHECKING:
    import builtins
    from collections.abc import AsyncIterator, Mapping, Sequence
    from types import TracebackType

    from blokrun.datasources.protocol import (
        Capabilities,
        Entry,
        Group,
        LeaseState,
        LeaseStore,
        ReadingLeaseStore,
        Store,
        WritingLeaseStore,
    )
    from blokrun.datasources.settings import DatasourceSettings

__all__ = ["MAX_KEY_BYTES", "Datasource", "DatasourceObserver", "validate_key"]

MAX_KEY_BYTES = 1024


_FORBIDDEN = re.compile(r"[\x00-\x1f\x7f]")


def validate_key(key: str) -> None:
    """Reject keys no driver should see: empty, NUL or other C0 controls, over 1 KiB."""
    if not isinstance(key, str) or not key:
        raise DatasourceError(f"invalid key {key!r}: expected a non-empty string")
    if len(key) > MAX_KEY_BYTES // 4:  # only long keys can exceed the limit in UTF-8
        try:
            size = len(key.encode("utf-8"))
        except UnicodeEncodeError:
            raise DatasourceError(f"invalid key {key[:40]!r}: not valid unicode") from None
        if size > MAX_KEY_BYTES:
            raise DatasourceError(f"invalid key {key[:40]!r}...: longer than {MAX_KEY_BYTES} bytes")
    elif not key.isascii():
        try:
            key.encode("utf-8")
        except UnicodeEncodeError:
            raise DatasourceError(f"invalid key {key!r}: not valid unicode") from None
    if _FORBIDDEN.search(key) is not None:
        raise DatasourceError(f"invalid key {key!r}: control characters are not allowed")


class DatasourceObserver(Protocol):
    """Sees a datasource's writes (telemetry; :mod:`blokrun.otel`). Set as
    ``datasource.observer``; with none set a write costs one attribute check more."""

    def write_started(self, ds: Datasource, entries: Sequence[Entry]) -> object:
        """A batch write starts (``entries`` as the caller gave them); returns what
        :meth:`write_ended` gets back."""
        ...

    def write_ended(self, started: object, error: BaseException | None) -> None:
        """That write ended (``error``: how it failed)."""

    def flushed(self, ds: Datasource, groups: int) -> None:
        """A group-commit flush of ``groups`` runs' saves is about to go."""

    def lease_event(self, ds: Datasource, request_id: str, event: str) -> None:
        """Something happened to a run's lease: ``taken_from_dead``, ``lost``."""


class Datasource:
    """A configured, named store. Use ``async with`` or :meth:`connect` / :meth:`close`."""

    __slots__ = (
        "_index",
        "_prefix",
        "_redactor",
        "_timeout",
        "group_commit",
        "name",
        "observer",
        "settings",
        "store",
        "ttl",
    )

    def __init__(self, settings: DatasourceSettings, store: Store) -> None:
        self.name = settings.name
        self.settings = settings
        self.store = store
        self.ttl = settings.ttl
        self._prefix = settings.prefix
        self._timeout = settings.timeout
        self._redactor = settings.redactor()
        #: the driver's run index, if it keeps one (see blokrun.datasources.index)
        self._index: IndexStore | None = store if isinstance(store, IndexStore) else None
        #: Sees every write and group-commit flush (telemetry: blokrun.otel); None: off
        self.observer: DatasourceObserver | None = None
        #: Coalesces concurrent saves into one round trip, when the driver can.
        self.group_commit: GroupCommit | None = None
        if store.capabilities.group_commit:
            if not isinstance(store, GroupStore):
                raise DatasourceError(
                    f"driver {settings.type!r} says it has group commit but no save_groups",
                    datasource=settings.name,
                )
            self.group_commit = GroupCommit(self._save_groups, self._save_one)

    def __repr__(self) -> str:
        return f"Datasource({self.settings.describe()})"

    @property
    def type(self) -> str:
        return self.settings.type

    @property
    def capabilities(self) -> Capabilities:
        return self.store.capabilities

    @property
    def is_connected(self) -> bool:
        return self.store.is_connected

    # -- lifecycle ---------------------------------------------------------------------

    async def connect(self) -> None:
        """Connect within the datasource's timeout; failures name it, password masked."""
        async with self._guard(None, "connect", timer=True):
            await self.store.connect()

    async def close(self) -> None:
        with anyio.CancelScope(shield=True):
            try:
                with anyio.fail_after(self._timeout):
                    await self.store.close()
            except TimeoutError:
                pass

    async def __aenter__(self) -> Self:
        await self.connect()
        return self

    async def __aexit__(
        self,
        exc_type: builtins.type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- error mapping -------------------------------------------------------------------

    @asynccontextmanager
    async def _guard(
        self, key: str | None, op: str, *, timer: bool | None = None
    ) -> AsyncIterator[None]:
        """Translate errors; bound the operation with a timer unless the driver does. No
        error leaves with a secret of this datasource in it, nor in what it chains to."""
        if timer is None:
            timer = not self.store.capabilities.self_timed
        try:
            if timer:
                with anyio.fail_after(self._timeout):
                    yield
            else:
                yield
        except BaseException as exc:
            self._fail(exc, key, op)

    def _fail(self, exc: BaseException, key: str | None, op: str) -> NoReturn:
        """Raise what ``exc`` from the driver becomes (:meth:`_guard`'s translation)."""
        error = self._translated(exc, key, op)
        if self._redactor:
            self._redactor.exception(exc)
            self._redactor.exception(error)
        if error is exc:
            raise exc
        if isinstance(exc, TimeoutError):
            raise error from None
        raise error from exc

    def _translated(self, exc: BaseException, key: str | None, op: str) -> BaseException:
        """What ``exc`` from the driver becomes: a timeout or an OS-level failure is
        :class:`DatasourceUnavailable`; a :class:`DatasourceError` gets this datasource's
        name and the key; anything else passes as it is."""
        if isinstance(exc, TimeoutError):
            return DatasourceUnavailable(
                f"{op} timed out after {self._timeout:g}s ({self.settings.describe()})",
                datasource=self.name,
                key=key,
            )
        if isinstance(exc, DatasourceError):
            if exc.datasource is None:
                exc.datasource = self.name
                if exc.key is None:
                    exc.key = key
            return exc
        if isinstance(exc, OSError) and not isinstance(exc, BlokrunError):
            return DatasourceUnavailable(
                f"{op} failed: {type(exc).__name__}: {exc} ({self.settings.describe()})",
                datasource=self.name,
                key=key,
            )
        return exc

    def _full(self, key: str) -> str:
        validate_key(key)
        return self._prefix + key if self._prefix else key

    def _batch(self, entries: Sequence[Entry], *, fenced: bool = False) -> list[Entry]:
        """``entries`` as the driver gets them: keys prefixed, TTLs defaulted, index entries
        given this datasource's space (or dropped when the driver keeps no index), the
        release entry kept only in a fenced batch of a driver that honours it."""
        out: list[Entry] = []
        for k, d, t in entries:
            if k == RELEASE_KEY:
                if fenced and self.store.capabilities.release_in_batch:
                    out.append((RELEASE_KEY, b"", None))
            elif k[:1] == OWNED_MARK:
                if not self.store.capabilities.owned_writes:
                    raise DatasourceError(
                        f"the {self.type} driver does not write owned entries (key {k[1:]!r})",
                        datasource=self.name,
                    )
                out.append((OWNED_MARK + self._full(k[1:]), d, self._ttl(t)))
            elif k == INDEX_KEY:
                try:
                    decode_row(d)
                except msgspec.DecodeError as exc:
                    raise DatasourceError(
                        f"invalid run index entry: {exc}", datasource=self.name
                    ) from None
                if self._index is not None:
                    out.append((space_key(self._prefix), d, None))
            else:
                out.append((self._full(k), d, self._ttl(t)))
        return out

    def _ttl(self, ttl: float | None) -> float | None:
        value = self.ttl if ttl is None else ttl
        if value is not None and (not math.isfinite(value) or value <= 0):
            raise DatasourceError(
                f"invalid ttl {value!r}: expected a positive number", datasource=self.name
            )
        return value

    # -- operations ----------------------------------------------------------------------

    async def save(self, key: str, data: bytes, ttl: float | None = None) -> None:
        full = self._full(key)
        async with self._guard(key, "save"):
            await self.store.save(full, data, self._ttl(ttl))

    async def load(self, key: str) -> bytes | None:
        full = self._full(key)
        async with self._guard(key, "load"):
            return await self.store.load(full)

    async def exists(self, key: str) -> bool:
        full = self._full(key)
        async with self._guard(key, "exists"):
            return await self.store.exists(full)

    async def delete(self, key: str) -> bool:
        full = self._full(key)
        async with self._guard(key, "delete"):
            return await self.store.delete(full)

    async def save_batch(self, entries: Sequence[Entry]) -> None:
        full = self._batch(entries)
        if not full:
            return
        observer = self.observer
        if observer is None:
            await self._save_batch(entries, full)
            return
        started = observer.write_started(self, entries)
        try:
            await self._save_batch(entries, full)
        except BaseException as exc:
            observer.write_ended(started, exc)
            raise
        observer.write_ended(started, None)

    async def _save_batch(self, entries: Sequence[Entry], full: list[Entry]) -> None:
        async with self._guard(entries[0][0] if len(entries) == 1 else None, "save_batch"):
            if self.group_commit is not None:
                await self.group_commit.save(full, None, 0)
            else:
                await self.store.save_batch(full)

    async def load_batch(self, keys: Sequence[str]) -> dict[str, bytes]:
        if not keys:
            return {}
        full = [self._full(k) for k in keys]
        async with self._guard(None, "load_batch"):
            found = await self.store.load_batch(full)
        cut = len(self._prefix)
        return {k[cut:]: v for k, v in found.items()}

    async def delete_batch(self, keys: Sequence[str]) -> int:
        if not keys:
            return 0
        full = [self._full(k) for k in keys]
        async with self._guard(None, "delete_batch"):
            return await self.store.delete_batch(full)

    async def keys(self, prefix: str = "") -> list[str]:
        """All live keys starting with ``prefix`` (the datasource prefix removed)."""
        if prefix:
            validate_key(prefix)
        cut = len(self._prefix)
        out: list[str] = []
        async with self._guard(prefix or None, "keys"):
            async for k in self.store.keys(self._prefix + prefix):
                out.append(k[cut:])
        return out

    async def match(self, pattern: str) -> list[str]:
        """Keys matching a glob ``pattern`` (``job-*``, ``run-?-step``; ``[...]`` classes).

        Served by :meth:`keys` with the literal prefix before the first wildcard, then
        filtered exactly, so ``job-*`` costs a prefix listing, never a full scan.
        """
        cut = min((i for i, c in enumerate(pattern) if c in "*?["), default=len(pattern))
        candidates = await self.keys(pattern[:cut])
        if cut == len(pattern):
            return [k for k in candidates if k == pattern]
        return [k for k in candidates if fnmatch.fnmatchcase(k, pattern)]

    @property
    def refusing(self) -> bool:
        """Whether any owned write was refused and not asked about yet (:meth:`refused`)."""
        return bool(getattr(self.store, "refused_owned", None))

    def refused(self, key: str) -> bool:
        """Whether an owned write of ``key`` was refused since last asked (another owner
        holds it); asking forgets it. A driver with ``owned_writes`` keeps the keys it
        refused in ``refused_owned``."""
        refused: set[str] | None = getattr(self.store, "refused_owned", None)
        if not refused:
            return False
        full = self._full(key)
        if full in refused:
            refused.discard(full)
            return True
        return False

    # -- the run index (blokrun.datasources.index) -------------------------------------------

    @property
    def indexed(self) -> bool:
        """Whether the driver keeps a run index."""
        return self._index is not None

    def _index_store(self) -> IndexStore:
        if self._index is None:
            raise DatasourceError(
                f"the {self.type} driver keeps no run index", datasource=self.name
            )
        return self._index

    async def index_query(self, query: IndexQuery) -> list[IndexRow]:
        store = self._index_store()
        async with self._guard(None, "index_query"):
            return await store.index_query(self._prefix, query)

    async def index_counts(self) -> dict[str, int]:
        store = self._index_store()
        async with self._guard(None, "index_counts"):
            return await store.index_counts(self._prefix)

    async def index_fix(self, expected: IndexRow, actual: IndexRow | None) -> bool:
        store = self._index_store()
        async with self._guard(None, "index_fix"):
            return await store.index_fix(self._prefix, expected, actual)

    async def index_fill(self, rows: Sequence[IndexRow], *, built: bool = False) -> None:
        store = self._index_store()
        async with self._guard(None, "index_fill"):
            await store.index_fill(self._prefix, rows, built=built)

    async def index_built(self) -> bool:
        store = self._index_store()
        async with self._guard(None, "index_built"):
            return await store.index_built(self._prefix)

    async def index_remove(
        self, request_ids: Sequence[str], *, fence: tuple[str, int] | None = None
    ) -> bool:
        """Drop the index rows of ``request_ids``; with ``fence`` (a lease key and token),
        only while that token is the lease's latest (gc: never a new run's row). Whether
        they were dropped."""
        if not request_ids:
            return True
        store = self._index_store()
        lease = None if fence is None else (self._full(fence[0]), fence[1])
        async with self._guard(None, "index_remove"):
            return await store.index_remove(self._prefix, request_ids, fence=lease)

    async def describe(self) -> StoreHealth:
        """The server's version and the state of blokrun's schema there (``blokrun doctor``),
        within the timeout; ``unknown`` fields for a driver that cannot tell
        (:class:`~blokrun.datasources.protocol.HealthStore` is optional)."""
        if not isinstance(self.store, HealthStore):
            return StoreHealth()
        async with self._guard(None, "describe", timer=True):
            return await self.store.describe()

    async def size(self) -> int:
        async with self._guard(None, "size"):
            if not self._prefix:
                return await self.store.size()
            n = 0
            async for _ in self.store.keys(self._prefix):
                n += 1
            return n

    async def _save_groups(self, groups: Sequence[Group]) -> list[bool]:
        """A group-commit flush: many runs' saves in one round trip."""
        if self.observer is not None:
            self.observer.flushed(self, len(groups))
        return await self.store.save_groups(groups)  # type: ignore[attr-defined,no-any-return]

    async def _save_one(self, group: Group) -> bool:
        """A save that found no other to share its round trip with (group commit)."""
        entries, lease_key, token = group
        if lease_key is None:
            await self.store.save_batch(entries)
            return True
        return await self._lease_store().save_batch_fenced(entries, lease_key, token)

    # -- leases ----------------------------------------------------------------------------

    @property
    def supports_leases(self) -> bool:
        return self.store.capabilities.leases

    def _lease_store(self) -> LeaseStore:
        if not self.store.capabilities.leases:
            raise DatasourceError(f"the {self.type} driver keeps no leases", datasource=self.name)
        return self.store  # type: ignore[return-value]  # declared by capabilities.leases

    async def acquire_lease(self, key: str, owner: str, ttl: float) -> LeaseState:
        """Take the lease ``key`` for ``owner`` if it is free or ours; the stored state."""
        store, full = self._lease_store(), self._full(key)
        async with self._guard(key, "acquire_lease"):
            return await store.acquire_lease(full, owner, ttl)

    async def acquire_lease_reading(
        self, key: str, owner: str, ttl: float, keys: Sequence[str]
    ) -> tuple[LeaseState, dict[str, bytes]]:
        """:meth:`acquire_lease`, then ``load_batch(keys)``: one round trip where the driver
        has ``Capabilities.lease_reads``, two otherwise (same answer)."""
        store, full = self._lease_store(), self._full(key)
        loaded: dict[str, bytes] | None = None
        if self.store.capabilities.lease_reads:
            reading = cast("ReadingLeaseStore", store)
            wanted = [self._full(k) for k in keys]
            async with self._guard(key, "acquire_lease"):
                state, found = await reading.acquire_lease_reading(full, owner, ttl, wanted)
            if found is not None:
                cut = len(self._prefix)
                loaded = {k[cut:]: v for k, v in found.items()}
        else:
            async with self._guard(key, "acquire_lease"):
                state = await store.acquire_lease(full, owner, ttl)
        if loaded is None:
            loaded = await self.load_batch(keys)
        return state, loaded

    @property
    def lease_writes(self) -> bool:
        """Whether :meth:`acquire_lease_writing` can write with the acquire (one round
        trip): the driver has ``Capabilities.lease_writes`` and no observer counts writes
        (it would not see this one)."""
        return self.store.capabilities.lease_writes and self.observer is None

    @property
    def lease_matches(self) -> bool:
        """Whether :meth:`acquire_lease_writing` can write where keys must hold given bytes
        (``Capabilities.lease_matches``), in one round trip."""
        return self.lease_writes and self.store.capabilities.lease_matches

    async def acquire_lease_writing(
        self,
        key: str,
        owner: str,
        ttl: float,
        keys: Sequence[str],
        entries: Sequence[Entry],
        *,
        match: Mapping[str, bytes] | None = None,
    ) -> tuple[LeaseState, dict[str, bytes], bool]:
        """:meth:`acquire_lease_reading` of ``keys`` and, if the lease was taken and each
        of ``keys`` holds what ``match`` gives for it (nothing where it gives nothing),
        ``entries`` written fenced by the new token, in the same round trip and atomic step
        (``Capabilities.lease_writes``). The third value: whether ``entries`` were written;
        where the driver cannot (or would not vouch for the check), nothing is written and
        the caller saves them itself."""
        if match and not set(match) <= set(keys):
            raise DatasourceError(
                "acquire_lease_writing: every key to match must be among the keys read",
                datasource=self.name,
            )
        if not self.lease_writes:
            state, loaded = await self.acquire_lease_reading(key, owner, ttl, keys)
            return state, loaded, False
        if any(k == RELEASE_KEY or k[:1] == OWNED_MARK for k, _, _ in entries):
            raise DatasourceError(
                "acquire_lease_writing takes plain and index entries only", datasource=self.name
            )
        store = cast("WritingLeaseStore", self._lease_store())
        full, wanted = self._full(key), [self._full(k) for k in keys]
        batch = self._batch(entries, fenced=True)
        expected = {self._full(k): v for k, v in (match or {}).items()}
        async with self._guard(key, "acquire_lease"):
            state, found, written = await store.acquire_lease_writing(
                full, owner, ttl, wanted, batch, match=expected
            )
        if found is None:
            if written:  # the keys read hold what was just written there
                mine = {k: v for k, v, _ in entries}
                return state, {k: mine[k] for k in keys if k in mine}, written
            return state, await self.load_batch(keys), written
        cut = len(self._prefix)
        return state, {k[cut:]: v for k, v in found.items()}, written

    async def renew_lease(self, key: str, owner: str, token: int, ttl: float) -> bool:
        store, full = self._lease_store(), self._full(key)
        async with self._guard(key, "renew_lease"):
            return await store.renew_lease(full, owner, token, ttl)

    async def release_lease(self, key: str, owner: str, token: int) -> None:
        store, full = self._lease_store(), self._full(key)
        async with self._guard(key, "release_lease"):
            await store.release_lease(full, owner, token)

    async def save_batch_fenced(self, entries: Sequence[Entry], lease_key: str, token: int) -> bool:
        """``save_batch`` iff ``token`` is still the latest token of ``lease_key``."""
        store, fence = self._lease_store(), self._full(lease_key)
        full = self._batch(entries, fenced=True)
        observer = self.observer
        if observer is None:
            return await self._save_fenced(store, entries, full, fence, token)
        started = observer.write_started(self, entries)
        try:
            held = await self._save_fenced(store, entries, full, fence, token)
        except BaseException as exc:
            observer.write_ended(started, exc)
            raise
        observer.write_ended(started, None)
        return held

    async def _save_fenced(
        self,
        store: LeaseStore,
        entries: Sequence[Entry],
        full: list[Entry],
        fence: str,
        token: int,
    ) -> bool:
        key = entries[0][0] if len(entries) == 1 else None
        if not self.store.capabilities.self_timed:
            async with self._guard(key, "save_batch"):
                return await self._send_fenced(store, full, fence, token)
        try:  # the hot path: _guard's translation, without a generator per checkpoint
            return await self._send_fenced(store, full, fence, token)
        except BaseException as exc:
            self._fail(exc, key, "save_batch")

    async def _send_fenced(
        self, store: LeaseStore, full: list[Entry], fence: str, token: int
    ) -> bool:
        if self.group_commit is not None:
            return await self.group_commit.save(full, fence, token)
        return await store.save_batch_fenced(full, fence, token)

    async def read_lease(self, key: str) -> LeaseState | None:
        store, full = self._lease_store(), self._full(key)
        async with self._guard(key, "read_lease"):
            return await store.read_lease(full)

    async def delete_lease(self, key: str, token: int | None = None) -> bool:
        """Forget the lease ``key`` -- with ``token``, only while that is its latest."""
        store, full = self._lease_store(), self._full(key)
        async with self._guard(key, "delete_lease"):
            return await store.delete_lease(full, token)

    async def delete_batch_fenced(self, keys: Sequence[str], lease_key: str, token: int) -> bool:
        """``delete_batch`` iff ``token`` is still the latest token of ``lease_key``."""
        store, fence = self._lease_store(), self._full(lease_key)
        # the lease itself goes only by delete_lease (drivers that keep leases beside the
        # data would delete it here)
        full = [f for f in (self._full(k) for k in keys) if f != fence]
        async with self._guard(None, "delete_batch"):
            return await store.delete_batch_fenced(full, fence, token)
