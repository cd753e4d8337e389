"""``ctx.datasource(name, key)``: reading what a datasource holds, as a node sees it.

Values blokrun wrote are opened from their envelope and decoded; anything else is read as
JSON when it parses, else as UTF-8 text, else returned as bytes. The executor gets this as
its injected :data:`~blokrun.execution.context.DatasourceReader`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from blokrun.persistence.codec import decode_foreign

if TYPE_CHECKING:
    from collections.abc import Mapping

    from blokrun.datasources import Datasource
    from blokrun.persistence.envelope import Envelope

__all__ = ["DatasourceReads"]


class DatasourceReads:
    """Reads a key of a named datasource (read-only), decoding as described above."""

    __slots__ = ("_datasources", "_envelope")

    def __init__(self, datasources: Mapping[str, Datasource], envelope: Envelope) -> None:
        self._datasources = datasources
        self._envelope = envelope

    async def __call__(self, name: str, key: str) -> Any:
        raw = await self._datasources[name].load(key)
        if raw is None:
            return None
        return decode_foreign(raw, datasource=name, key=key, envelope=self._envelope)
