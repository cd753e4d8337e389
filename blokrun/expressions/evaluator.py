"""Compile templates (and JSON values holding them) into small evaluation objects.

Compilation does all the work that does not depend on the run: parsing, the static
checks, folding constants, turning member chains into tuples of keys and rendering the
paths used in messages. Evaluation then only walks those objects.

Security: evaluation never looks at Python attributes. The only operations on run-time
data are ``mapping[str_key]`` on a :class:`~collections.abc.Mapping` and ``seq[int]`` on a
``list``/``tuple``, :meth:`Scope.lookup_root` for ``ctx``/``stepName`` and
:meth:`Scope.call_datasource`. Nothing calls ``eval``, ``exec``, ``compile``, ``getattr``
or ``str.format`` on anything that came from a workflow.
"""

from __future__ import annotations

import abc
import re
from collections.abc import Mapping
from typing import Any, Final, Protocol

import orjson

from blokrun.errors import ExpressionError
from blokrun.expressions.ast import (
    Coalesce,
    Compare,
    DatasourceCall,
    Index,
    Literal,
    Logical,
    Member,
    Name,
    Node,
    Not,
    render_key_step,
    unparse,
)
from blokrun.expressions.lexer import Origin
from blokrun.expressions.parser import parse_template

__all__ = [
    "MAX_VALUE_DEPTH",
    "Compiled",
    "Scope",
    "compile_template",
    "compile_value",
    "json_equal",
    "render_key",
    "to_text",
]

#: Deepest nesting of dicts/lists that :func:`compile_value` accepts.
MAX_VALUE_DEPTH = 200
#: How many keys a "no such key" message lists.
_MAX_LISTED_KEYS = 10


class Scope(Protocol):
    """What evaluation needs at run time; built by the runner per step."""

    def lookup_root(self, name: str) -> Any:
        """``"ctx"`` -> a Mapping, ``"stepName"`` -> str."""

    async def call_datasource(self, name: Any, key: Any) -> Any:
        """Evaluate ``ctx.datasource(name, key)``."""


class _Missing:
    """Result of a lookup that found nothing, inside the left operand of ``??``."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "MISSING"


_MISSING: Final = _Missing()


def to_text(value: Any) -> str:
    """``value`` as interpolated text: str as is, numbers/true/false/null/dict/list as JSON.

    Raises :class:`TypeError` for a value JSON cannot represent.
    """
    if isinstance(value, str):
        return value
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int):
        return str(int(value))
    data = orjson.dumps(value)
    if data[:1] == b'"':  # e.g. a datetime: its text, not a quoted JSON string
        text: str = orjson.loads(data)
        return text
    return data.decode()


# -- operations ---------------------------------------------------------------------------


class _Op(abc.ABC):
    """One compiled expression. ``get`` evaluates synchronously, ``aget`` may await."""

    __slots__ = ("is_async",)

    def __init__(self, is_async: bool) -> None:
        self.is_async = is_async

    @abc.abstractmethod
    def get(self, scope: Scope) -> Any:
        """The value of this expression in ``scope``."""

    async def aget(self, scope: Scope) -> Any:
        return self.get(scope)


class _Const(_Op):
    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        super().__init__(False)
        self.value = value

    def get(self, scope: Scope) -> Any:
        return self.value


class _Root(_Op):
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        super().__init__(False)
        self.name = name

    def get(self, scope: Scope) -> Any:
        return scope.lookup_root(self.name)


class _Path(_Op):
    """``base.key[0][expr]...``: a base and a chain of keys (static, or ops to evaluate)."""

    __slots__ = ("base", "base_text", "dynamic", "keys", "origin", "plain", "positions", "soft")

    def __init__(
        self,
        base: _Op,
        base_text: str,
        keys: tuple[str | int | _Op, ...],
        positions: tuple[int, ...],
        *,
        soft: bool,
        origin: Origin,
    ) -> None:
        dynamic = any(isinstance(key, _Op) for key in keys)
        super().__init__(base.is_async or any(isinstance(k, _Op) and k.is_async for k in keys))
        self.base = base
        self.base_text = base_text
        self.keys = keys
        self.positions = positions
        self.dynamic = dynamic
        #: The root name when the path is a root and member names only (fast path).
        self.plain: str | None = None
        if isinstance(base, _Root) and all(type(key) is str for key in keys):
            self.plain = base.name
        self.soft = soft
        self.origin = origin

    def get(self, scope: Scope) -> Any:
        if self.plain is not None:  # the common case: ctx.a.b over dicts
            return self._plain(scope)
        value = self.base.get(scope)
        if value is _MISSING:
            return value
        if not self.dynamic:
            return self._walk(value, self.keys, 0, len(self.keys))
        return self._dynamic(scope, value)

    def _plain(self, scope: Scope) -> Any:
        value = scope.lookup_root(self.plain)  # type: ignore[arg-type]  # set when called
        static = self.keys
        for i, key in enumerate(static):
            if type(value) is not dict:
                return self._walk(value, static, i, len(static))
            try:
                value = value[key]
            except KeyError:
                return self._missing_key(value, static, i)
        return value

    def _dynamic(self, scope: Scope, value: Any) -> Any:
        keys: list[Any] = list(self.keys)
        for i, key in enumerate(self.keys):
            if isinstance(key, _Op):
                keys[i] = key.get(scope)
                if keys[i] is _MISSING:
                    return _MISSING
            value = self._walk(value, keys, i, i + 1)
            if value is _MISSING:
                return value
        return value

    async def aget(self, scope: Scope) -> Any:
        base = self.base
        value = await base.aget(scope) if base.is_async else base.get(scope)
        if value is _MISSING:
            return value
        keys: list[Any] = list(self.keys)
        for i, key in enumerate(self.keys):
            if isinstance(key, _Op):
                keys[i] = await key.aget(scope) if key.is_async else key.get(scope)
                if keys[i] is _MISSING:
                    return _MISSING
            value = self._walk(value, keys, i, i + 1)
            if value is _MISSING:
                return value
        return value

    def _walk(self, value: Any, keys: Any, start: int, stop: int) -> Any:
        """Apply ``keys[start:stop]`` to ``value``: Mapping lookups and list indexing only."""
        for i in range(start, stop):
            key = keys[i]
            if type(key) is str or isinstance(key, str):
                if type(value) is dict or isinstance(value, Mapping):
                    try:
                        value = value[key]
                    except KeyError:
                        return self._missing_key(value, keys, i)
                    continue
            elif (type(key) is int or (isinstance(key, int) and not isinstance(key, bool))) and (
                isinstance(value, list | tuple)
            ):
                try:
                    value = value[key]
                except IndexError:
                    return self._missing_index(value, keys, i)
                continue
            return self._bad_step(value, keys, i)
        return value

    def _where(self, keys: Any, i: int) -> str:
        return self.base_text + "".join(render_key_step(keys[j]) for j in range(i + 1))

    def _fail(self, message: str, keys: Any, i: int) -> ExpressionError:
        return self.origin.error(f"{self._where(keys, i)}: {message}", self.positions[i])

    def _missing_key(self, mapping: Mapping[Any, Any], keys: Any, i: int) -> Any:
        if self.soft:
            return _MISSING
        names = sorted(str(name) for name in mapping)
        if not names:
            listed = "the mapping is empty"
        else:
            listed = "available: " + ", ".join(names[:_MAX_LISTED_KEYS])
            if len(names) > _MAX_LISTED_KEYS:
                listed += f", ... ({len(names) - _MAX_LISTED_KEYS} more)"
        raise self._fail(f"no such key ({listed})", keys, i)

    def _missing_index(self, items: list[Any] | tuple[Any, ...], keys: Any, i: int) -> Any:
        if self.soft:
            return _MISSING
        raise self._fail(f"index out of range (length {len(items)})", keys, i)

    def _bad_step(self, value: Any, keys: Any, i: int) -> Any:
        key = keys[i]
        parent = self._where(keys, i - 1)  # i == 0: the base alone
        if self.soft and (value is None or key is None):  # through null: missing, for ??
            return _MISSING
        if value is None:
            raise self._fail(f"{parent} is null", keys, i)
        if isinstance(value, Mapping):
            raise self._fail(f"a mapping needs a string key, got {_kind(key)}", keys, i)
        if isinstance(value, list | tuple) and not isinstance(key, str):
            raise self._fail(f"a list needs an integer index, got {_kind(key)}", keys, i)
        wanted = "a mapping" if isinstance(key, str) else "a list or mapping"
        raise self._fail(f"{parent} is {_kind(value)}, not {wanted}", keys, i)


class _Call(_Op):
    """``ctx.datasource(name, key)``: needs :meth:`Compiled.evaluate`."""

    __slots__ = ("key", "name", "origin", "pos")

    def __init__(self, name: _Op, key: _Op, pos: int, origin: Origin) -> None:
        super().__init__(True)
        self.name = name
        self.key = key
        self.pos = pos
        self.origin = origin

    def get(self, scope: Scope) -> Any:
        raise self.origin.error(
            "ctx.datasource(...) needs asynchronous evaluation (evaluate(), "
            "not evaluate_static() or render_key())",
            self.pos,
        )

    async def aget(self, scope: Scope) -> Any:
        name = await self.name.aget(scope) if self.name.is_async else self.name.get(scope)
        if name is _MISSING:
            return name
        key = await self.key.aget(scope) if self.key.is_async else self.key.get(scope)
        if key is _MISSING:
            return key
        return await scope.call_datasource(name, key)


class _Coalesce(_Op):
    """``a ?? b ?? c``: the first operand that is neither missing nor null, else the last."""

    __slots__ = ("last", "left")

    def __init__(self, left: tuple[_Op, ...], last: _Op) -> None:
        super().__init__(last.is_async or any(op.is_async for op in left))
        self.left = left
        self.last = last

    def get(self, scope: Scope) -> Any:
        for op in self.left:
            value = op.get(scope)
            if value is not None and value is not _MISSING:
                return value
        return self.last.get(scope)

    async def aget(self, scope: Scope) -> Any:
        for op in self.left:
            value = await op.aget(scope) if op.is_async else op.get(scope)
            if value is not None and value is not _MISSING:
                return value
        return await self.last.aget(scope) if self.last.is_async else self.last.get(scope)


def json_equal(a: Any, b: Any) -> bool:
    """``==`` of the expression language: JSON values by value; ``true`` is not ``1``."""
    if isinstance(a, bool) or isinstance(b, bool) or a is None or b is None:
        return a is b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b
    if isinstance(a, str) or isinstance(b, str):
        return isinstance(a, str) and isinstance(b, str) and a == b
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return a.keys() == b.keys() and all(json_equal(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(json_equal(x, y) for x, y in zip(a, b, strict=True))
    return False


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


class _Binary(_Op):
    """Shared by the operators: evaluating operands, and their errors at their position."""

    __slots__ = ("origin", "pos")

    def __init__(self, is_async: bool, pos: int, origin: Origin) -> None:
        super().__init__(is_async)
        self.pos = pos
        self.origin = origin

    def boolean(self, value: Any, what: str) -> bool:
        if value is True or value is False:
            return value
        raise self.origin.error(f"{what} needs a boolean, got {_kind(value)}", self.pos)


class _Compare(_Binary):
    """``left OP right``: ``==``/``!=`` on any JSON values; ordering on two numbers or two
    strings only (anything else is an error, never a guess)."""

    __slots__ = ("left", "op", "right")

    def __init__(self, op: str, left: _Op, right: _Op, pos: int, origin: Origin) -> None:
        super().__init__(left.is_async or right.is_async, pos, origin)
        self.op = op
        self.left = left
        self.right = right

    def get(self, scope: Scope) -> Any:
        return self.apply(self.left.get(scope), self.right.get(scope))

    async def aget(self, scope: Scope) -> Any:
        left = await self.left.aget(scope) if self.left.is_async else self.left.get(scope)
        right = await self.right.aget(scope) if self.right.is_async else self.right.get(scope)
        return self.apply(left, right)

    def apply(self, left: Any, right: Any) -> Any:
        if left is _MISSING or right is _MISSING:
            return _MISSING
        op = self.op
        if op == "==":
            return json_equal(left, right)
        if op == "!=":
            return not json_equal(left, right)
        if not (
            (_number(left) and _number(right)) or (isinstance(left, str) and isinstance(right, str))
        ):
            raise self.origin.error(
                f"cannot compare {_kind(left)} with {_kind(right)} using {op!r} "
                "(two numbers or two strings)",
                self.pos,
            )
        if op == "<":
            return left < right
        if op == "<=":
            return left <= right
        if op == ">":
            return left > right
        return left >= right


class _Logical(_Binary):
    """``a && b`` / ``a || b``: booleans only, evaluated left to right, short-circuit."""

    __slots__ = ("is_and", "operands")

    def __init__(self, op: str, operands: tuple[_Op, ...], pos: int, origin: Origin) -> None:
        super().__init__(any(o.is_async for o in operands), pos, origin)
        self.is_and = op == "&&"
        self.operands = operands

    def get(self, scope: Scope) -> Any:
        for op in self.operands:
            value = op.get(scope)
            if value is _MISSING:
                return value
            if self.boolean(value, "&&" if self.is_and else "||") is not self.is_and:
                return not self.is_and
        return self.is_and

    async def aget(self, scope: Scope) -> Any:
        for op in self.operands:
            value = await op.aget(scope) if op.is_async else op.get(scope)
            if value is _MISSING:
                return value
            if self.boolean(value, "&&" if self.is_and else "||") is not self.is_and:
                return not self.is_and
        return self.is_and


class _Not(_Binary):
    __slots__ = ("operand",)

    def __init__(self, operand: _Op, pos: int, origin: Origin) -> None:
        super().__init__(operand.is_async, pos, origin)
        self.operand = operand

    def get(self, scope: Scope) -> Any:
        return self.apply(self.operand.get(scope))

    async def aget(self, scope: Scope) -> Any:
        op = self.operand
        return self.apply(await op.aget(scope) if op.is_async else op.get(scope))

    def apply(self, value: Any) -> Any:
        if value is _MISSING:
            return value
        return not self.boolean(value, "!")


class _Interpolate(_Op):
    """Text and expressions joined as text."""

    __slots__ = ("origin", "parts", "positions")

    def __init__(
        self, parts: tuple[str | _Op, ...], positions: tuple[int, ...], origin: Origin
    ) -> None:
        super().__init__(any(isinstance(part, _Op) and part.is_async for part in parts))
        self.parts = parts
        self.positions = positions
        self.origin = origin

    def get(self, scope: Scope) -> Any:
        pieces: list[str] = []
        for i, part in enumerate(self.parts):
            if type(part) is str:
                pieces.append(part)
                continue
            assert isinstance(part, _Op)
            value = part.get(scope)
            if value is _MISSING:
                return value
            pieces.append(value if type(value) is str else self._text(value, i))
        return "".join(pieces)

    async def aget(self, scope: Scope) -> Any:
        pieces: list[str] = []
        for i, part in enumerate(self.parts):
            if isinstance(part, str):
                pieces.append(part)
                continue
            value = await part.aget(scope) if part.is_async else part.get(scope)
            if value is _MISSING:
                return value
            pieces.append(self._text(value, i))
        return "".join(pieces)

    def _text(self, value: Any, i: int) -> str:
        try:
            return to_text(value)
        except (TypeError, orjson.JSONEncodeError) as exc:
            raise self.origin.error(
                f"cannot insert {_kind(value)} into text: {exc}", self.positions[i]
            ) from None


class _Dict(_Op):
    __slots__ = ("items",)

    def __init__(self, items: tuple[tuple[Any, _Op], ...]) -> None:
        super().__init__(any(op.is_async for _, op in items))
        self.items = items

    def get(self, scope: Scope) -> Any:
        return {key: op.get(scope) for key, op in self.items}

    async def aget(self, scope: Scope) -> Any:
        result = {}
        for key, op in self.items:
            result[key] = await op.aget(scope) if op.is_async else op.get(scope)
        return result


class _List(_Op):
    __slots__ = ("items",)

    def __init__(self, items: tuple[_Op, ...]) -> None:
        super().__init__(any(op.is_async for op in items))
        self.items = items

    def get(self, scope: Scope) -> Any:
        return [op.get(scope) for op in self.items]

    async def aget(self, scope: Scope) -> Any:
        return [await op.aget(scope) if op.is_async else op.get(scope) for op in self.items]


def _kind(value: object) -> str:
    """A value's type for messages, in JSON words where there are some."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    return f"a {type(value).__name__}"


# -- AST -> operations ----------------------------------------------------------------------


class _Compiler:
    __slots__ = ("datasources", "failed_fold", "origin")

    def __init__(self, origin: Origin) -> None:
        self.origin = origin
        self.datasources: set[str] = set()
        self.failed_fold = False

    def node(self, node: Node, soft: bool) -> _Op:
        """Compile ``node``; ``soft``: it is inside the left operand of ``??``."""
        if isinstance(node, Literal):
            return _Const(node.value)
        if isinstance(node, Name):
            return _Root(node.name)
        if isinstance(node, Member | Index):
            return self._path(node, soft)
        if isinstance(node, DatasourceCall):
            if isinstance(node.name, Literal) and isinstance(node.name.value, str):
                self.datasources.add(node.name.value)
            return _Call(
                self.node(node.name, soft), self.node(node.key, soft), node.pos, self.origin
            )
        if isinstance(node, Coalesce):
            return self._coalesce(node, soft)
        if isinstance(node, Compare | Logical | Not):
            return self._operator(node, soft)
        return self.parts(node.parts, node.positions, soft)

    def _coalesce(self, node: Coalesce, soft: bool) -> _Op:
        left = tuple(self.node(operand, True) for operand in node.operands[:-1])
        last = self.node(node.operands[-1], soft)
        if all(isinstance(op, _Const) for op in (*left, last)):
            for op in left:
                assert isinstance(op, _Const)
                if op.value is not None:
                    return op
            return last
        return _Coalesce(left, last)

    def _operator(self, node: Compare | Logical | Not, soft: bool) -> _Op:
        op: _Op
        if isinstance(node, Compare):
            left, right = self.node(node.left, soft), self.node(node.right, soft)
            op = _Compare(node.op, left, right, node.pos, self.origin)
        elif isinstance(node, Logical):
            operands = tuple(self.node(operand, soft) for operand in node.operands)
            op = _Logical(node.op, operands, node.pos, self.origin)
        else:
            op = _Not(self.node(node.operand, soft), node.pos, self.origin)
        if _all_constant(op):
            try:
                return _Const(op.get(_NO_SCOPE))
            except ExpressionError:
                # Kept: it may sit where it is never evaluated (``false && !null``); a
                # constant expression that does reach it fails at load (compile_string).
                self.failed_fold = True
        return op

    def parts(self, parts: tuple[str | Node, ...], positions: tuple[int, ...], soft: bool) -> _Op:
        ops = tuple(part if isinstance(part, str) else self.node(part, soft) for part in parts)
        interpolate = _Interpolate(ops, positions, self.origin)
        if all(isinstance(op, str | _Const) for op in ops):
            return _Const(interpolate.get(_NO_SCOPE))  # constant text: join it now
        return interpolate

    def _path(self, node: Member | Index, soft: bool) -> _Op:
        steps: list[Member | Index] = []
        base: Node = node
        while isinstance(base, Member | Index):
            steps.append(base)
            base = base.target
        steps.reverse()
        keys: list[str | int | _Op] = []
        for step in steps:
            if isinstance(step, Member):
                keys.append(step.name)
            elif isinstance(step.index, Literal) and isinstance(step.index.value, str | int):
                keys.append(step.index.value)  # the parser rejected bool, float and null
            else:
                keys.append(self.node(step.index, soft))
        base_text = unparse(base)
        if isinstance(base, Coalesce):
            base_text = f"({base_text})"
        return _Path(
            self.node(base, soft),
            base_text,
            tuple(keys),
            tuple(step.pos for step in steps),
            soft=soft,
            origin=self.origin,
        )


def _reads_scope(op: _Op | str) -> bool:
    """Whether evaluating ``op`` may look at the run (a root, a path, a datasource)."""
    if isinstance(op, str | _Const):
        return False
    if isinstance(op, _Compare):
        return _reads_scope(op.left) or _reads_scope(op.right)
    if isinstance(op, _Logical):
        return any(_reads_scope(o) for o in op.operands)
    if isinstance(op, _Not):
        return _reads_scope(op.operand)
    if isinstance(op, _Interpolate):
        return any(_reads_scope(part) for part in op.parts)
    return True


def _all_constant(op: _Op) -> bool:
    if isinstance(op, _Compare):
        return isinstance(op.left, _Const) and isinstance(op.right, _Const)
    if isinstance(op, _Logical):
        return all(isinstance(o, _Const) for o in op.operands)
    return isinstance(op, _Not) and isinstance(op.operand, _Const)


class _NoScope:
    """The scope used to fold constants: any lookup would be a bug."""

    def lookup_root(self, name: str) -> Any:
        raise AssertionError(name)  # pragma: no cover

    async def call_datasource(self, name: Any, key: Any) -> Any:
        raise AssertionError(name)  # pragma: no cover


_NO_SCOPE: Final = _NoScope()


# -- public API -----------------------------------------------------------------------------


class Compiled:
    """The compiled form of a JSON value (dict/list/str/number/bool/None) holding templates.

    ``is_constant``
        Nothing needs evaluation; :meth:`evaluate` returns the original value itself.
    ``datasources``
        The literal names of ``ctx.datasource('name', ...)`` calls (a computed name adds
        nothing), for load-time checks.
    ``uses_datasource``
        Any ``ctx.datasource`` call at all.

    :meth:`evaluate` builds a new structure and never mutates the source; constant parts
    of it (and values read from the scope) are shared, not copied, so callers must not
    mutate the result in place.
    """

    __slots__ = (
        "_op",
        "_path",
        "_source",
        "_value",
        "datasources",
        "is_constant",
        "uses_datasource",
    )

    is_constant: bool
    datasources: frozenset[str]
    uses_datasource: bool

    def __init__(self, op: _Op, datasources: frozenset[str], *, source: str, path: str) -> None:
        self._op = op
        self._source = source
        self._path = path
        self.is_constant = isinstance(op, _Const)
        self._value: Any = op.value if isinstance(op, _Const) else None
        self.datasources = datasources
        self.uses_datasource = op.is_async

    def __repr__(self) -> str:
        if self.is_constant:
            return f"<Compiled constant at {self._path}>"
        return f"<Compiled at {self._path}, datasources={sorted(self.datasources)}>"

    async def evaluate(self, scope: Scope) -> Any:
        """Evaluate against ``scope``; may call ``scope.call_datasource``."""
        if self.is_constant:
            return self._value
        if self.uses_datasource:
            return await self._op.aget(scope)
        return self._op.get(scope)

    def evaluate_static(self, scope: Scope) -> Any:
        """Evaluate synchronously; :class:`ExpressionError` if a datasource call is reached."""
        if self.is_constant:
            return self._value
        return self._op.get(scope)


def compile_template(text: str, *, source: str = "<workflow>", path: str = "$") -> Compiled:
    """Compile one string; a string without ``${`` is a constant."""
    if "${" not in text:
        return Compiled(_Const(text), frozenset(), source=source, path=path)
    op, datasources = _compile_string(text, source, path)
    return Compiled(op, frozenset(datasources), source=source, path=path)


def compile_value(value: Any, *, source: str = "<workflow>", path: str = "$") -> Compiled:
    """Compile a JSON value: every string in it (not dict keys) is a template.

    Errors carry the JSON path of the offending string, e.g. ``$.steps[2].inputs.url``.
    """
    datasources: set[str] = set()
    op = _compile_value(value, source, path, datasources, 0)
    return Compiled(op, frozenset(datasources), source=source, path=path)


def render_key(compiled: Compiled, scope: Scope) -> str:
    """Evaluate synchronously to text (a non-str result is rendered as in interpolation)."""
    value = compiled.evaluate_static(scope)
    if isinstance(value, str):
        return value
    try:
        return to_text(value)
    except (TypeError, orjson.JSONEncodeError) as exc:
        raise ExpressionError(
            f"cannot use {_kind(value)} as a key: {exc}",
            source=compiled._source,
            path=compiled._path,
        ) from None


def _compile_string(text: str, source: str, path: str) -> tuple[_Op, set[str]]:
    origin = Origin(text, source, path)
    template = parse_template(origin)
    compiler = _Compiler(origin)
    parts = template.parts
    if len(parts) == 1 and not isinstance(parts[0], str):
        op = compiler.node(parts[0], False)  # exactly one ${expr}: its value, not text
    else:
        op = compiler.parts(parts, template.positions, False)
    if compiler.failed_fold and not _reads_scope(op):
        op = _Const(op.get(_NO_SCOPE))  # the error is reached: a load-time error
    return op, compiler.datasources


_JSON_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*", re.ASCII)


def _json_path_step(key: Any) -> str:
    if isinstance(key, str) and _JSON_NAME.fullmatch(key):
        return f".{key}"
    return "[" + orjson.dumps(str(key)).decode() + "]"


def _compile_value(value: Any, source: str, path: str, datasources: set[str], depth: int) -> _Op:
    if isinstance(value, str):
        if "${" not in value:
            return _Const(value)
        op, names = _compile_string(value, source, path)
        datasources.update(names)
        return op
    if isinstance(value, dict | list | tuple):
        if depth >= MAX_VALUE_DEPTH:
            raise ExpressionError(
                f"value nested too deeply (at most {MAX_VALUE_DEPTH} levels)",
                source=source,
                path=path,
            )
        if isinstance(value, dict):
            items = tuple(
                (
                    key,
                    _compile_value(
                        item, source, path + _json_path_step(key), datasources, depth + 1
                    ),
                )
                for key, item in value.items()
            )
            if all(isinstance(op, _Const) for _, op in items):
                return _Const(value)
            return _Dict(items)
        elements = tuple(
            _compile_value(item, source, f"{path}[{i}]", datasources, depth + 1)
            for i, item in enumerate(value)
        )
        if all(isinstance(op, _Const) for op in elements):
            return _Const(value)
        return _List(elements)
    return _Const(value)
