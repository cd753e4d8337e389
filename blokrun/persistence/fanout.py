"""Writing the same entries to every target of a run at once, failing with one error.

A run's records go to all its checkpoint targets concurrently (a task group), so a save
costs about the slowest target, not the sum. A failure on any target fails the save with
one :class:`~blokrun.errors.CheckpointError` naming the datasource and key (and the other
targets that failed). The write to the datasource holding the run's lease is fenced: it is
stored only while the run's token is the latest, else :class:`~blokrun.errors.LeaseLost`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import anyio

from blokrun.errors import BlokrunError, CheckpointError, LeaseLost

if TYPE_CHECKING:
    from collections.abc import Sequence

    from blokrun.datasources import Datasource, Entry
    from blokrun.persistence.leases import Lease

__all__ = ["save_everywhere"]


async def save_everywhere(
    targets: Sequence[Datasource],
    entries: Sequence[Entry],
    *,
    request_id: str,
    lease: Lease | None,
    step: str | None,
    what: str,
) -> None:
    """``save_batch(entries)`` on every target at once; raise one CheckpointError on failure."""

    def failure(ds: Datasource, exc: BaseException) -> CheckpointError:
        key = getattr(exc, "key", None) or entries[0][0]
        return CheckpointError(
            f"saving {what} to datasource {ds.name!r} failed (key {key!r}): {exc}",
            request_id=request_id,
            step=step,
            datasource=ds.name,
            key=key,
        )

    async def write(ds: Datasource) -> None:
        if lease is not None and ds is lease.datasource:
            # Fenced: stored only while this run's lease token is the latest.
            if lease.lost or not await ds.save_batch_fenced(entries, lease.key, lease.token):
                raise lease.lost_error(step)
        else:
            await ds.save_batch(entries)

    if len(targets) == 1:
        ds = targets[0]
        try:
            await write(ds)
        except LeaseLost:
            raise
        except BlokrunError as exc:
            raise failure(ds, exc) from exc
        return
    errors: list[tuple[Datasource, BaseException]] = []

    async def one(ds: Datasource) -> None:
        try:
            await write(ds)
        except BlokrunError as exc:
            errors.append((ds, exc))

    async with anyio.create_task_group() as tg:
        for ds in targets:
            tg.start_soon(one, ds)
    if errors:
        for _, err in errors:
            if isinstance(err, LeaseLost):
                raise err
        first = failure(*errors[0])
        if len(errors) > 1:
            others = ", ".join(repr(ds.name) for ds, _ in errors[1:])
            first = CheckpointError(
                f"{first.detail}; also failed: {others}",
                request_id=request_id,
                step=step,
                datasource=first.datasource,
                key=first.key,
            )
        raise first from errors[0][1]
