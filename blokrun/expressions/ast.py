"""The small syntax tree the parser builds and the evaluator compiles.

Positions (``pos``) are 0-based offsets into the whole template text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TypeAlias

import orjson

__all__ = [
    "Coalesce",
    "Compare",
    "DatasourceCall",
    "Index",
    "Interpolation",
    "Literal",
    "LiteralValue",
    "Logical",
    "Member",
    "Name",
    "Node",
    "Not",
    "Template",
    "quote",
    "render_key_step",
    "unparse",
]

LiteralValue: TypeAlias = "str | int | float | bool | None"


@dataclass(frozen=True, slots=True)
class Literal:
    """``'text'``, ``12``, ``-1.5``, ``true``, ``false``, ``null``."""

    value: LiteralValue
    pos: int


@dataclass(frozen=True, slots=True)
class Name:
    """A root name: ``ctx`` or ``stepName``."""

    name: str
    pos: int


@dataclass(frozen=True, slots=True)
class Member:
    """``target.name``; ``pos`` is the offset of the dot."""

    target: Node
    name: str
    pos: int


@dataclass(frozen=True, slots=True)
class Index:
    """``target[index]``; ``pos`` is the offset of the ``[``."""

    target: Node
    index: Node
    pos: int


@dataclass(frozen=True, slots=True)
class DatasourceCall:
    """``ctx.datasource(name, key)``; ``pos`` is the offset of the ``(``."""

    name: Node
    key: Node
    pos: int


@dataclass(frozen=True, slots=True)
class Coalesce:
    """``a ?? b ?? c``: the first operand that is present and not null (else the last)."""

    operands: tuple[Node, ...]
    pos: int


@dataclass(frozen=True, slots=True)
class Compare:
    """``left OP right`` with OP one of ``== != < <= > >=``; ``pos`` is the operator's."""

    op: str
    left: Node
    right: Node
    pos: int


@dataclass(frozen=True, slots=True)
class Logical:
    """``a && b && c`` (``op`` "&&") or ``a || b`` (``op`` "||"): booleans, short-circuit."""

    op: str
    operands: tuple[Node, ...]
    pos: int


@dataclass(frozen=True, slots=True)
class Not:
    """``!operand`` (a boolean)."""

    operand: Node
    pos: int


@dataclass(frozen=True, slots=True)
class Interpolation:
    """A string literal holding ``${...}``: text parts and expressions, joined as text."""

    parts: tuple[str | Node, ...]
    #: Offset of each part: the ``$`` of an expression (of the quote for text).
    positions: tuple[int, ...]
    pos: int


Node: TypeAlias = (
    "Literal | Name | Member | Index | DatasourceCall | Coalesce | Compare | Logical | Not"
    " | Interpolation"
)


@dataclass(frozen=True, slots=True)
class Template:
    """A whole template string: literal text and ``${...}`` expressions."""

    parts: tuple[str | Node, ...]
    #: Offset of each part: the ``$`` of an expression, 0 for text.
    positions: tuple[int, ...]


_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*", re.ASCII)


def quote(text: str) -> str:
    """``text`` as a single-quoted string literal of the expression language."""
    escaped = (
        text.replace("\\", "\\\\")
        .replace("'", "\\'")
        .replace("\n", "\\n")
        .replace("\t", "\\t")
        .replace("${", "\\${")
    )
    return f"'{escaped}'"


def render_key_step(key: object) -> str:
    """One step of a path as written: ``.name``, ``['b c']``, ``[0]``."""
    if isinstance(key, str):
        if _IDENT.fullmatch(key) and not key.startswith("__"):
            return f".{key}"
        return f"[{quote(key)}]"
    if isinstance(key, int) and not isinstance(key, bool):
        return f"[{key}]"
    return f"[{_literal_text(key)}]"


def _literal_text(value: object) -> str:
    if isinstance(value, str):
        return quote(value)
    if value is None or isinstance(value, bool | int | float):
        return orjson.dumps(value).decode()
    return f"<{type(value).__name__}>"


def unparse(node: Node) -> str:
    """The expression ``node`` as canonical source text (for messages)."""
    if isinstance(node, Literal):
        return _literal_text(node.value)
    if isinstance(node, Name):
        return node.name
    if isinstance(node, Member):
        return _unparse_target(node.target) + f".{node.name}"
    if isinstance(node, Index):
        return _unparse_target(node.target) + f"[{unparse(node.index)}]"
    if isinstance(node, DatasourceCall):
        return f"ctx.datasource({unparse(node.name)}, {unparse(node.key)})"
    if isinstance(node, Coalesce | Compare | Logical | Not):
        return _unparse_operator(node)
    pieces = []
    for part in node.parts:
        if isinstance(part, str):
            pieces.append(quote(part)[1:-1])
        else:
            pieces.append("${" + unparse(part) + "}")
    return "'" + "".join(pieces) + "'"


def _unparse_operator(node: Coalesce | Compare | Logical | Not) -> str:
    if isinstance(node, Coalesce):
        return " ?? ".join(unparse(operand) for operand in node.operands)
    if isinstance(node, Compare):
        return f"{_unparse_operand(node.left)} {node.op} {_unparse_operand(node.right)}"
    if isinstance(node, Logical):
        return f" {node.op} ".join(_unparse_operand(operand) for operand in node.operands)
    return "!" + _unparse_operand(node.operand)


def _unparse_target(node: Node) -> str:
    text = unparse(node)
    return f"({text})" if isinstance(node, Coalesce | Compare | Logical | Not) else text


def _unparse_operand(node: Node) -> str:
    text = unparse(node)
    return f"({text})" if isinstance(node, Compare | Logical) else text
