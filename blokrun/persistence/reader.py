"""``ctx.datasource(name, key)``: reading what a datasource holds, as a node sees it.

* A **checkpoint alias** (a key under a workflow's key pattern, ``<request id>-<step>``)
  reads as seed 000 stores a checkpoint: ``{"stepName", "timestamp" (ISO 8601, UTC),
  "vars" (the whole vars at that step), "metadata": {"workflowId", "requestId"}}`` -- the
  record it points to is verified and its delta chain and large values resolved.
* Any other value blokrun wrote is opened from its envelope (sealed for that key) and
  decoded; anything else is read as JSON when it parses, else as UTF-8 text, else as bytes.

The executor gets this as its injected :data:`~blokrun.execution.context.DatasourceReader`.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from blokrun.persistence.codec import decode_foreign
from blokrun.persistence.records import ALIAS_MAGIC, decode_alias
from blokrun.persistence.state import resolve_blobs

if TYPE_CHECKING:
    from collections.abc import Mapping

    from blokrun.datasources import Datasource
    from blokrun.persistence.envelope import Envelope
    from blokrun.persistence.locate import Locator

__all__ = ["DatasourceReads"]

log = logging.getLogger("blokrun.persistence")


class DatasourceReads:
    """Reads a key of a named datasource (read-only), decoding as described above."""

    __slots__ = ("_datasources", "_envelope", "_locator")

    def __init__(
        self, datasources: Mapping[str, Datasource], envelope: Envelope, locator: Locator
    ) -> None:
        self._datasources = datasources
        self._envelope = envelope
        self._locator = locator

    async def __call__(self, name: str, key: str) -> Any:
        ds = self._datasources[name]
        raw = await ds.load(key)
        if raw is None:
            return None
        if raw.startswith(ALIAS_MAGIC):
            return await self._checkpoint(ds, key, raw)
        return decode_foreign(raw, datasource=name, key=key, envelope=self._envelope)

    async def _checkpoint(self, ds: Datasource, key: str, raw: bytes) -> Any:
        alias = decode_alias(raw, datasource=ds.name, key=key, envelope=self._envelope)
        assert alias is not None
        warnings: list[str] = []
        rec = self._locator.checkpoint(await ds.load(alias.key), ds, alias.key, warnings)
        rebuilt = await self._locator.rebuild(ds, rec) if rec is not None else None
        if rec is None or rebuilt is None:
            log.warning(
                "%r on %r names checkpoint %r, which is gone or does not verify%s",
                key,
                ds.name,
                alias.key,
                f": {warnings[0]}" if warnings else "",
            )
            return None
        state, refs = rebuilt
        state = await resolve_blobs(
            state, refs, self._datasources, self._envelope, request_id=rec.request_id
        )
        return {
            "stepName": rec.step,
            "timestamp": datetime.fromtimestamp(rec.time, UTC).isoformat(),
            "vars": state,
            "metadata": {"workflowId": rec.workflow, "requestId": rec.request_id},
        }
