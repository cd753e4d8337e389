"""The run context handed to every node: request, vars, logger, workflow, datasource reads.

``ctx.datasource(name, key)`` is read-only and limited to the datasources the workflow
lists. The read itself is done by a :data:`DatasourceReader` the caller injects (the
persistence layer decodes values blokrun wrote from their envelope and reads anything else
as JSON, else text, else bytes): the executor knows nothing about storage.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeAlias

from blokrun.errors import DatasourceAccessError

if TYPE_CHECKING:
    import logging
    from collections.abc import Awaitable, Callable

__all__ = ["Context", "DatasourceReader", "PersistenceInfo", "RequestInfo", "WorkflowInfo"]

#: ``await reader(datasource_name, key)``: the value stored there, or ``None``.
DatasourceReader: TypeAlias = "Callable[[str, str], Awaitable[Any]]"


@dataclass(frozen=True, slots=True)
class RequestInfo:
    """``ctx.request``: the run's id and when it first started (stable across resumes)."""

    id: str
    started_at: float  # Unix seconds


@dataclass(frozen=True, slots=True)
class WorkflowInfo:
    """``ctx.workflow``: what is running."""

    name: str
    version: str
    definition_hash: str


@dataclass(frozen=True, slots=True)
class PersistenceInfo:
    """``ctx.persistence``: how the run is checkpointed (read-only). ``targets`` are the
    datasources every checkpoint goes to (``datasources``, as seed 000 calls them)."""

    enabled: bool
    auto_save: bool
    targets: tuple[str, ...]
    key_pattern: str

    @property
    def datasources(self) -> tuple[str, ...]:
        return self.targets


class Context:
    """What a node receives as ``ctx``.

    ``vars`` is the run's mutable state: a node may change it; what it returns is stored as
    ``vars[<step name>]`` (``None`` stores nothing). ``step`` is the running step's name and
    ``idempotency_key`` a key stable across retries and resumes of that step
    (``<request id>:<step>``), to pass to external systems. In a ``map`` step, ``item`` and
    ``index`` are the element the call is for (a map's items share ``vars``: return
    results rather than changing it).
    """

    __slots__ = (
        "_allowed",
        "_reader",
        "index",
        "item",
        "logger",
        "persistence",
        "request",
        "step",
        "vars",
        "workflow",
    )

    def __init__(
        self,
        *,
        request: RequestInfo,
        workflow: WorkflowInfo,
        vars: dict[str, Any],
        reader: DatasourceReader,
        allowed: tuple[str, ...],
        logger: logging.Logger | logging.LoggerAdapter[logging.Logger],
        persistence: PersistenceInfo | None = None,
    ) -> None:
        self.request = request
        self.persistence = persistence or PersistenceInfo(False, False, (), "")
        self.workflow = workflow
        self.vars = vars
        self.logger = logger
        self.step = ""
        #: in a map step: the item this call is for, and its position in the list
        self.item: Any = None
        self.index: int | None = None
        self._reader = reader
        self._allowed = allowed

    @property
    def id(self) -> str:
        """The run's request id (``ctx.request.id``)."""
        return self.request.id

    @property
    def idempotency_key(self) -> str:
        """Stable across retries and resumes: ``<id>:<step>`` (``<id>:<step>:<index>`` for
        an item of a map)."""
        if self.index is not None:
            return f"{self.request.id}:{self.step}:{self.index}"
        return f"{self.request.id}:{self.step}"

    @property
    def timestamp(self) -> int:
        """The run's start time in Unix milliseconds (stable across resumes)."""
        return int(self.request.started_at * 1000)

    @property
    def date(self) -> str:
        """The run's start date, UTC, ``YYYY-MM-DD`` (stable across resumes)."""
        return time.strftime("%Y-%m-%d", time.gmtime(self.request.started_at))

    async def datasource(self, name: str, key: str) -> Any:
        """Read ``key`` from datasource ``name`` (read-only). ``None`` if absent."""
        if name not in self._allowed:
            allowed = ", ".join(self._allowed) or "none (the workflow lists no datasources)"
            raise DatasourceAccessError(
                f"not available to workflow {self.workflow.name!r}; available: {allowed}",
                datasource=str(name),
                key=str(key),
            )
        if not isinstance(key, str):
            raise DatasourceAccessError(
                f"key must be a string, got {type(key).__name__}", datasource=name
            )
        return await self._reader(name, key)

    def as_mapping(self) -> dict[str, Any]:
        """The view expressions see as ``ctx`` (lookups only; no Python attributes)."""
        return {
            "request": {"id": self.request.id, "started_at": self.request.started_at},
            "vars": self.vars,
            "workflow": {
                "name": self.workflow.name,
                "version": self.workflow.version,
                "hash": self.workflow.definition_hash,
            },
            "timestamp": self.timestamp,
            "date": self.date,
            "step": self.step,
            "idempotency_key": self.idempotency_key,
            **({"item": self.item, "index": self.index} if self.index is not None else {}),
        }
