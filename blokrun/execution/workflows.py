"""Loading a workflow with this package's node resolver (built-ins and module nodes)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from blokrun.execution.nodes import NodeRegistry, resolve_node
from blokrun.spec.loader import Workflow
from blokrun.spec.loader import load_workflow as _load

if TYPE_CHECKING:
    from collections.abc import Collection, Mapping, Sequence
    from pathlib import Path

__all__ = ["load_workflow"]


def load_workflow(
    source: str | Path | Mapping[str, Any],
    *,
    available_datasources: Collection[str] | None = None,
    default_targets: Sequence[str] = ("default",),
    search_paths: Sequence[str] = (),
    name: str | None = None,
    nodes: NodeRegistry | None = None,
) -> Workflow:
    """Load and validate a workflow file (or a parsed document), resolving its nodes.

    See :func:`blokrun.spec.loader.load_workflow` for the arguments; every problem is a
    :class:`~blokrun.errors.WorkflowError` naming the file and the JSON path.
    """
    return _load(
        source,
        nodes=nodes.resolver() if nodes is not None else resolve_node,
        available_datasources=available_datasources,
        default_targets=default_targets,
        search_paths=search_paths,
        name=name,
    )
