"""Resolving a step's node to a callable, at load time.

``"type": "module"`` with ``"node": "package.module:function"`` imports a user function;
``"type": "builtin"`` (the default when the node has no ``:``) names a built-in. A node is
``async def f(ctx, inputs)`` or a plain ``def f(ctx, inputs)``, which runs in a worker
thread so it cannot block the event loop.
"""

from __future__ import annotations

import importlib
import inspect
import json
import re
import sys
from typing import TYPE_CHECKING, Any

from blokrun.errors import ArgumentError, WorkflowError
from blokrun.execution.builtins import BUILTINS
from blokrun.spec.nodes import NodeRef

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

__all__ = ["NodeRef", "NodeRegistry", "how_to_resolve", "resolve_node"]

_MODULE_RE = re.compile(
    r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$"
)
#: What a registered node name may look like: no ``:`` (that is a module node), no spaces.
_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,127}$")


def how_to_resolve(node: str) -> str:
    """How to make ``node`` resolve, for its error: register the name (when it can be one)
    -- ``Runner(nodes={"data-loader": data_loader})`` -- or name the function."""
    function = re.sub(r"\W", "_", node.rpartition(":")[2]) or "function"
    if function[0].isdigit():
        function = "_" + function
    named = f'name the function: "node": "your_package.your_module:{function}"'
    if not _NAME_RE.fullmatch(node) or node in BUILTINS:
        return named
    return (
        f"register it: Runner(nodes={{{json.dumps(node)}: {function}}}) in every process "
        f"that runs or resumes it (workers too); or, for the blokrun command, {named}"
    )


def _import(module_name: str, search_paths: Sequence[str]) -> Any:
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        top = module_name.split(".", 1)[0]
        if exc.name not in (top, module_name) or not search_paths:
            raise
    # Not importable from sys.path: try the workflow's own folder (and the given paths).
    added = [p for p in search_paths if p not in sys.path]
    sys.path[:0] = added
    try:
        return importlib.import_module(module_name)
    finally:
        for p in added:
            try:
                sys.path.remove(p)
            except ValueError:
                pass


def resolve_node(
    node: str,
    type_: str | None,
    *,
    source: str,
    path: str,
    search_paths: Sequence[str] = (),
) -> NodeRef:
    kind = type_ or ("module" if ":" in node else "builtin")
    if kind == "builtin":
        if node not in BUILTINS:
            raise WorkflowError(
                f"unknown built-in node {node!r}; expected one of: {', '.join(sorted(BUILTINS))} "
                f"(or your own, 'package.module:function' or registered -- "
                f"{how_to_resolve(node)})",
                source=source,
                path=f"{path}.node",
            )
        fn, allowed, required = BUILTINS[node]
        return NodeRef(node, fn, True, True, allowed, required)
    if not _MODULE_RE.fullmatch(node):
        raise WorkflowError(
            f"node {node!r}: expected 'package.module:function' or a registered name -- "
            f"{how_to_resolve(node)}",
            source=source,
            path=f"{path}.node",
        )
    module_name, _, attr = node.partition(":")
    try:
        module = _import(module_name, search_paths)
    except (Exception, SystemExit) as exc:  # whatever the user's module raises on import
        where = ""
        if isinstance(exc, ModuleNotFoundError):
            folders = ", ".join(dict.fromkeys(search_paths)) or "none"
            where = (
                f" (looked in the workflow's folders: {folders}; and on sys.path: set "
                "PYTHONPATH to the folder that holds it)"
            )
        raise WorkflowError(
            f"node {node!r}: cannot import module {module_name!r}: {type(exc).__name__}: "
            f"{exc}{where}",
            source=source,
            path=f"{path}.node",
        ) from exc
    found: Any = getattr(module, attr, None)
    if found is None or not callable(found):
        raise WorkflowError(
            f"node {node!r}: module {module_name!r} has no callable {attr!r}",
            source=source,
            path=f"{path}.node",
        )
    return NodeRef(node, found, inspect.iscoroutinefunction(found), False)


class NodeRegistry:
    """Nodes a program registers under names (``Runner(nodes={"charge": charge})``) that its
    workflow files name (``"node": "charge"``). Every process that loads such a workflow --
    a resume elsewhere, a worker -- registers the same names. Built-in names are taken."""

    __slots__ = ("_nodes",)

    def __init__(self, nodes: Mapping[str, Callable[..., Any]] | None = None) -> None:
        self._nodes: dict[str, Callable[..., Any]] = {}
        for name, fn in (nodes or {}).items():
            self.register(name, fn)

    def register(self, name: str, fn: Callable[..., Any]) -> None:
        if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
            raise ArgumentError(
                f"node name {name!r}: expected 1-128 characters from A-Z a-z 0-9 _ . - "
                "(no ':', which names a module node)",
                argument="nodes",
            )
        if name in BUILTINS:
            raise ArgumentError(f"node name {name!r} is a built-in node's", argument="nodes")
        if not callable(fn):
            raise ArgumentError(f"node {name!r}: {fn!r} is not callable", argument="nodes")
        self._nodes[name] = fn

    def __contains__(self, name: object) -> bool:
        return name in self._nodes

    def names(self) -> list[str]:
        return sorted(self._nodes)

    def resolver(self) -> Callable[..., NodeRef]:
        """A node resolver (``spec.nodes.NodeResolver``) that knows these names."""

        def resolve(
            node: str,
            type_: str | None,
            *,
            source: str,
            path: str,
            search_paths: Sequence[str] = (),
        ) -> NodeRef:
            if ":" not in node and type_ in (None, "registered", "module"):
                fn = self._nodes.get(node)
                if fn is not None:
                    return NodeRef(node, fn, inspect.iscoroutinefunction(fn), False)
                if node not in BUILTINS:
                    raise WorkflowError(
                        f"node {node!r} is neither a built-in nor registered in this process; "
                        f"registered: {', '.join(self.names()) or 'none'} -- "
                        f"{how_to_resolve(node)}",
                        source=source,
                        path=f"{path}.node",
                    )
            return resolve_node(node, type_, source=source, path=path, search_paths=search_paths)

        return resolve
