"""A PostgreSQL takeover that meets the old holder's fenced write in flight: shared by the
lease-read and lease-write contract tests."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, TypeVar

import asyncpg  # type: ignore[import-untyped,unused-ignore]

from blokrun.datasources.postgresql import lease_table

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from blokrun.config import DatasourceSettings
    from blokrun.datasources import Datasource

T = TypeVar("T")


async def takeover_during_stalled_write(
    ds: Datasource,
    settings: DatasourceSettings,
    lease: str,
    write: str,
    args: tuple[Any, ...],
    takeover: Callable[[], Awaitable[T]],
) -> tuple[int, T]:
    """``lease`` held by "old" and expired; a transaction holding its row FOR SHARE (as the
    old holder's fenced write does) runs ``write`` (``{table}``: the store's table) and
    stays open while ``takeover()`` starts, which must wait for it; then it commits. The
    old token, and what ``takeover()`` returned."""
    old = await ds.acquire_lease(lease, "old", 0.2)
    await asyncio.sleep(0.3)  # expired: anyone may take the run over
    con: Any = await asyncpg.connect(settings.url)
    try:
        tx = con.transaction()
        await tx.start()
        await con.execute(
            f'SELECT FROM "{lease_table(settings.table or "")}" '
            "WHERE key = $1 AND token = $2 FOR SHARE",
            lease,
            old.token,
        )
        await con.execute(write.format(table=f'"{settings.table}"'), *args)
        pending = asyncio.ensure_future(takeover())
        await asyncio.sleep(0.3)
        assert not pending.done()  # waits for the write
        await tx.commit()
        return old.token, await asyncio.wait_for(pending, 5)
    finally:
        await con.close()
