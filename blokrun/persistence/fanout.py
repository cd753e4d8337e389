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

from blokrun.datasources.protocol import RELEASE_ENTRY
from blokrun.errors import BlokrunError, CheckpointError, DatasourceUnavailable, LeaseLost

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
    save = _Save(entries, request_id, lease, step, what)
    if len(targets) == 1:  # the common case: no task group
        ds = targets[0]
        try:
            await save.write(ds)
        except LeaseLost:
            raise
        except BlokrunError as exc:
            raise save.failure(ds, exc) from exc
        return
    errors: list[tuple[Datasource, BlokrunError]] = []

    async def one(ds: Datasource) -> None:
        try:
            await save.write(ds)
        except BlokrunError as exc:
            errors.append((ds, exc))

    async with anyio.create_task_group() as tg:
        for ds in targets:
            tg.start_soon(one, ds)
    if errors:
        raise save.failures(errors) from errors[0][1]


class _Save:
    """One batch to save on several targets, and the error that names a failed one."""

    __slots__ = ("entries", "lease", "request_id", "step", "what")

    def __init__(
        self,
        entries: Sequence[Entry],
        request_id: str,
        lease: Lease | None,
        step: str | None,
        what: str,
    ) -> None:
        self.entries = entries
        self.request_id = request_id
        self.lease = lease
        self.step = step
        self.what = what

    async def write(self, ds: Datasource) -> None:
        lease = self.lease
        if lease is not None and ds is lease.datasource:
            # Fenced: stored only while this run's lease token is the latest.
            releases = bool(self.entries) and self.entries[-1] is RELEASE_ENTRY  # the last write
            if releases:
                lease.releasing()
            if lease.lost or not await ds.save_batch_fenced(self.entries, lease.key, lease.token):
                raise lease.lost_error(self.step)
            if releases and ds.capabilities.release_in_batch:
                lease.released_with_write()
        else:
            await ds.save_batch(self.entries)

    def failure(
        self, ds: Datasource, exc: BaseException, unreachable: tuple[str, ...] = ()
    ) -> CheckpointError:
        key = getattr(exc, "key", None) or self.entries[0][0]
        return CheckpointError(
            f"saving {self.what} to datasource {ds.name!r} failed (key {key!r}): {exc}",
            request_id=self.request_id,
            step=self.step,
            datasource=ds.name,
            key=key,
            unreachable=unreachable
            or ((ds.name,) if isinstance(exc, DatasourceUnavailable) else ()),
        )

    def failures(self, errors: Sequence[tuple[Datasource, BlokrunError]]) -> BlokrunError:
        """One error for several failed targets: a lost lease first, else the first
        failure, naming the others."""
        for _, err in errors:
            if isinstance(err, LeaseLost):
                return err
        down = tuple(ds.name for ds, err in errors if isinstance(err, DatasourceUnavailable))
        first = self.failure(*errors[0], down)
        if len(errors) == 1:
            return first
        others = ", ".join(repr(ds.name) for ds, _ in errors[1:])
        return CheckpointError(
            f"{first.detail}; also failed: {others}",
            request_id=self.request_id,
            step=self.step,
            datasource=first.datasource,
            key=first.key,
            unreachable=down,
        )
