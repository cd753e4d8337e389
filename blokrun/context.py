"""The run context handed to every node: request, vars, logger, workflow, datasource reads.

``ctx.datasource(name, key)`` is read-only and limited to the datasources the workflow
lists; values written by blokrun are decoded from their envelope, anything else is read as
JSON when it parses, else as UTF-8 text, else returned as bytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from blokrun.errors import DatasourceAccessError
from blokrun.persistence.codec import Opener, decode_foreign

if TYPE_CHECKING:
    import logging
    from collections.abc import Mapping

    from blokrun.datasources import Datasource

__all__ = ["Context", "RequestInfo", "WorkflowInfo"]


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


class Context:
    """What a node receives as ``ctx``.

    ``vars`` is the run's mutable state: a node may change it; what it returns is stored as
    ``vars[<step name>]`` (``None`` stores nothing). ``step`` is the running step's name and
    ``idempotency_key`` a key stable across retries and resumes of that step
    (``<request id>:<step>``), to pass to external systems.
    """

    __slots__ = (
        "_allowed",
        "_datasources",
        "_envelope",
        "logger",
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
        datasources: Mapping[str, Datasource],
        allowed: tuple[str, ...],
        logger: logging.Logger | logging.LoggerAdapter[logging.Logger],
        envelope: Opener,
    ) -> None:
        self.request = request
        self.workflow = workflow
        self.vars = vars
        self.logger = logger
        self.step = ""
        self._datasources = datasources
        self._allowed = allowed
        self._envelope = envelope

    @property
    def idempotency_key(self) -> str:
        return f"{self.request.id}:{self.step}"

    @property
    def timestamp(self) -> int:
        """The run's start time in Unix milliseconds (stable across resumes)."""
        return int(self.request.started_at * 1000)

    @property
    def date(self) -> str:
        """The run's start date, UTC, ``YYYY-MM-DD`` (stable across resumes)."""
        import time

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
        raw = await self._datasources[name].load(key)
        if raw is None:
            return None
        return decode_foreign(raw, datasource=name, key=key, envelope=self._envelope)

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
        }
