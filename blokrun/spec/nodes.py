"""What the loader needs to know about a step's node, and who tells it.

The spec layer checks a workflow (its fields, expressions, graph) but does not import user
code: a :class:`NodeResolver`, given by the layer that runs workflows
(:mod:`blokrun.execution.nodes`), turns a step's ``node`` / ``type`` into a
:class:`NodeRef` or raises :class:`~blokrun.errors.WorkflowError` naming the JSON path.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

__all__ = ["TIMERS", "NodeRef", "NodeResolver"]

#: The built-in nodes whose wait is durable (the executor stores their wake-up time).
TIMERS = frozenset({"sleep", "wait-until"})


@dataclass(frozen=True, slots=True)
class NodeRef:
    """A resolved node: the callable and what the loader checks about its inputs.

    ``allowed_inputs`` is ``None`` when any input is accepted (user functions).
    """

    name: str
    fn: Callable[..., Any]
    is_async: bool
    builtin: bool
    allowed_inputs: frozenset[str] | None = None
    required_inputs: frozenset[str] = frozenset()

    @property
    def timer(self) -> bool:
        """A built-in whose wait is durable (:data:`TIMERS`)."""
        return self.builtin and self.name in TIMERS


class NodeResolver(Protocol):
    """Resolves ``node`` (of ``type_``) for the step at ``path`` of ``source``; module
    nodes not importable from ``sys.path`` are looked for in ``search_paths``."""

    def __call__(
        self,
        node: str,
        type_: str | None,
        *,
        source: str,
        path: str,
        search_paths: Sequence[str] = (),
    ) -> NodeRef: ...
