"""A PostgreSQL store of its own on the test cluster, for the kept-connection tests."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

from blokrun.datasources.postgresql import PostgresStore

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from tests.servers.postgresql import PostgresServer


def store_of(
    pg: PostgresServer, *, pool_size: int = 4, timeout: float = 2.0, url: str | None = None
) -> PostgresStore:
    settings = pg.settings(timeout=timeout)
    return PostgresStore(
        url or settings.url, table=settings.table or "", pool_size=pool_size, timeout=timeout
    )


async def disable_kept(store: PostgresStore) -> None:
    """The control: the kept connection (if any) back to the pool, and never taken again
    (``_hot_busy`` stays set, so every borrower acquires from the pool, as before)."""
    hot, store._hot = store._hot, None
    store._hot_busy = True
    if hot is not None:
        await store._pool.release(hot)


@contextlib.asynccontextmanager
async def opened(
    pg: PostgresServer, *, kept: bool = True, **kw: Any
) -> AsyncIterator[PostgresStore]:
    """:func:`store_of`, connected (``kept=False``: the control, see :func:`disable_kept`),
    closed afterwards."""
    store = store_of(pg, **kw)
    await store.connect()
    try:
        if not kept:
            await disable_kept(store)
        yield store
    finally:
        await store.close()
