"""In-process memory store: for tests and ephemeral runs. Not shared, not durable."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from anyio.lowlevel import checkpoint

from blokrun.datasources.index import MemoryIndex, split_index
from blokrun.datasources.protocol import Capabilities, LeaseState, StoreHealth, next_token

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Sequence

    from blokrun.datasources.index import IndexQuery, IndexRow
    from blokrun.datasources.protocol import Entry
    from blokrun.datasources.settings import DatasourceSettings

__all__ = ["MemoryStore", "create"]

_CAPS = Capabilities(
    native_ttl=True,
    native_batch=True,
    atomic_batch=True,
    durable=False,
    shared=False,
    self_timed=True,
    leases=True,
    atomic_fencing=True,
)


class MemoryStore:
    """A dict of ``key -> (bytes, expires_at_monotonic | None)``."""

    __slots__ = ("_clock", "_connected", "_data", "_indexes", "_issued", "_leases", "extras")

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock  # wall-clock seconds for lease expiry (tests pass a fake)
        self._data: dict[str, tuple[bytes, float | None]] = {}
        self._leases: dict[str, LeaseState] = {}
        self._issued = 0  # the highest token of a deleted lease: new tokens start above it
        self._indexes: dict[str, MemoryIndex] = {}  # run index per space (datasource prefix)
        self.extras: dict[str, object] = {}  # in-process features kept with the store (queue)
        self._connected = False

    @property
    def capabilities(self) -> Capabilities:
        return _CAPS

    @property
    def is_connected(self) -> bool:
        return self._connected

    async def connect(self) -> None:
        self._connected = True

    async def close(self) -> None:
        self._connected = False

    async def describe(self) -> StoreHealth:
        """No server and nothing to migrate (``blokrun doctor``)."""
        return StoreHealth(
            server="in-process memory",
            version="-",
            schema="n/a",
            notes=(f"{len(self._data)} key(s)", "not shared, not durable: gone with the process"),
        )

    def _live(self, key: str, now: float) -> bytes | None:
        item = self._data.get(key)
        if item is None:
            return None
        data, expires = item
        if expires is not None and expires <= now:
            del self._data[key]
            return None
        return data

    async def save(self, key: str, data: bytes, ttl: float | None = None) -> None:
        await checkpoint()  # yield like a real store, so no caller can starve the loop
        self._data[key] = (bytes(data), None if ttl is None else time.monotonic() + ttl)

    async def load(self, key: str) -> bytes | None:
        await checkpoint()
        return self._live(key, time.monotonic())

    async def exists(self, key: str) -> bool:
        return self._live(key, time.monotonic()) is not None

    async def delete(self, key: str) -> bool:
        return self._data.pop(key, None) is not None

    async def save_batch(self, entries: Sequence[Entry]) -> None:
        now = time.monotonic()
        entries, rows = split_index(entries)
        for space, row in rows:
            self._space(space).put(row)
        for key, data, ttl in entries:
            self._data[key] = (bytes(data), None if ttl is None else now + ttl)
        await checkpoint()  # after the write, so save_batch_fenced's check stays atomic

    async def load_batch(self, keys: Sequence[str]) -> dict[str, bytes]:
        await checkpoint()
        now = time.monotonic()
        out: dict[str, bytes] = {}
        for key in keys:
            data = self._live(key, now)
            if data is not None:
                out[key] = data
        return out

    async def delete_batch(self, keys: Sequence[str]) -> int:
        return sum(self._data.pop(k, None) is not None for k in keys)

    async def keys(self, prefix: str = "") -> AsyncIterator[str]:
        now = time.monotonic()
        for key in [k for k in self._data if k.startswith(prefix)]:
            if self._live(key, now) is not None:
                yield key

    async def size(self) -> int:
        now = time.monotonic()
        return sum(self._live(k, now) is not None for k in list(self._data))

    # -- leases (one event loop: every method below runs without yielding, so it is atomic)

    async def acquire_lease(self, key: str, owner: str, ttl: float) -> LeaseState:
        await checkpoint()
        now = self._clock()
        current = self._leases.get(key)
        if current is not None and current.live(now) and current.owner != owner:
            return current
        # a deleted lease's count is kept as a floor: this store's tokens never go back,
        # whatever the clock does
        previous = current.token if current else (self._issued or None)
        state = LeaseState(owner, next_token(previous), now + ttl)
        self._leases[key] = state
        return state

    async def renew_lease(self, key: str, owner: str, token: int, ttl: float) -> bool:
        current = self._leases.get(key)
        if current is None or current.token != token:
            return False
        self._leases[key] = LeaseState(owner, token, self._clock() + ttl)
        return True

    async def release_lease(self, key: str, owner: str, token: int) -> None:
        current = self._leases.get(key)
        if current is not None and current.token == token:
            self._leases[key] = LeaseState(current.owner, token, 0.0)

    def _latest(self, lease_key: str, token: int) -> bool:
        current = self._leases.get(lease_key)
        return current is not None and current.token == token

    async def save_batch_fenced(self, entries: Sequence[Entry], lease_key: str, token: int) -> bool:
        if not self._latest(lease_key, token):
            await checkpoint()
            return False
        await self.save_batch(entries)  # writes before it first yields: no takeover between
        return True

    async def read_lease(self, key: str) -> LeaseState | None:
        return self._leases.get(key)

    async def delete_batch_fenced(self, keys: Sequence[str], lease_key: str, token: int) -> bool:
        if not self._latest(lease_key, token):
            await checkpoint()
            return False
        await self.delete_batch(keys)  # deletes before it first yields: no takeover between
        return True

    async def delete_lease(self, key: str, token: int | None = None) -> bool:
        current = self._leases.get(key)
        if current is None or (token is not None and current.token != token):
            return False
        del self._leases[key]
        self._issued = max(self._issued, current.token)
        return True

    # -- the run index (blokrun.datasources.index) ------------------------------------------

    def _space(self, space: str) -> MemoryIndex:
        index = self._indexes.get(space)
        if index is None:
            index = self._indexes[space] = MemoryIndex()
            index.built = True  # a memory store starts empty: nothing to build from
        return index

    async def index_query(self, space: str, query: IndexQuery) -> list[IndexRow]:
        await checkpoint()
        return self._space(space).query(query)

    async def index_counts(self, space: str) -> dict[str, int]:
        return self._space(space).counts()

    async def index_fix(self, space: str, expected: IndexRow, actual: IndexRow | None) -> bool:
        return self._space(space).fix(expected, actual)

    async def index_fill(
        self, space: str, rows: Sequence[IndexRow], *, built: bool = False
    ) -> None:
        self._space(space).fill(rows, built)

    async def index_built(self, space: str) -> bool:
        return self._space(space).built

    async def index_remove(
        self, space: str, request_ids: Sequence[str], *, fence: tuple[str, int] | None = None
    ) -> bool:
        if fence is not None and not self._latest(*fence):
            return False
        self._space(space).remove(request_ids)
        return True


def create(settings: DatasourceSettings) -> MemoryStore:
    return MemoryStore()
