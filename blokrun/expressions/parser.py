"""Recursive-descent parser: lexer segments -> :class:`~blokrun.expressions.ast.Template`.

Grammar (inside ``${ ... }``), loosest first::

    expr     := and ( '||' and )*
    and      := compare ( '&&' compare )*
    compare  := coalesce [ ( '==' | '!=' | '<' | '<=' | '>' | '>=' ) coalesce ]
    coalesce := unary ( '??' unary )*
    unary    := '!' unary | postfix
    postfix  := primary ( '.' NAME | '[' expr ']' | '(' [expr (',' expr)*] ')' )*
    primary  := NAME | STRING | NUMBER | 'true' | 'false' | 'null' | '(' expr ')'

The static rules are checked here, so a template that parses can only read what a step
may read: the root is ``ctx`` or ``stepName``; the first member of ``ctx`` is one of
:data:`CTX_MEMBERS`; the only call is ``ctx.datasource(name, key)`` and
``ctx.datasource`` is never read as a value.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from blokrun.expressions.ast import (
    Coalesce,
    Compare,
    DatasourceCall,
    Index,
    Interpolation,
    Literal,
    Logical,
    Member,
    Name,
    Node,
    Not,
    Template,
)
from blokrun.expressions.lexer import MAX_DEPTH, Embedded, Segment, Token, TokenKind, lex_template

if TYPE_CHECKING:
    from blokrun.errors import ExpressionError
    from blokrun.expressions.lexer import Origin

__all__ = ["CTX_MEMBERS", "ROOTS", "parse_template"]

ROOTS = ("ctx", "stepName")
CTX_MEMBERS = (
    "request",
    "vars",
    "workflow",
    "timestamp",
    "date",
    "datasource",
    "idempotency_key",
    "step",
    "item",
    "index",
)
_KEYWORDS: dict[str, bool | None] = {"true": True, "false": False, "null": None}
_COMPARISONS = {
    TokenKind.EQ: "==",
    TokenKind.NE: "!=",
    TokenKind.LT: "<",
    TokenKind.LE: "<=",
    TokenKind.GT: ">",
    TokenKind.GE: ">=",
}


def parse_template(origin: Origin) -> Template:
    """Parse ``origin.text`` (which must contain ``${``)."""
    parser = _Parser(origin)
    return Template(*parser.segments(lex_template(origin), 0))


class _Parser:
    __slots__ = ("_depth", "_index", "_origin", "_tokens")

    def __init__(self, origin: Origin) -> None:
        self._origin = origin
        self._depth = 0
        self._tokens: tuple[Token, ...] = ()
        self._index = 0

    # -- token stream ------------------------------------------------------------------

    def _peek(self) -> Token:
        return self._tokens[self._index]

    def _next(self) -> Token:
        token = self._tokens[self._index]
        if token.kind is not TokenKind.END:
            self._index += 1
        return token

    def _expect(self, kind: TokenKind) -> Token:
        token = self._peek()
        if token.kind is not kind:
            raise self._error(f"expected {kind.value!s} but found {_describe(token)}", token)
        return self._next()

    def _error(self, message: str, token: Token | None = None, pos: int = 0) -> ExpressionError:
        return self._origin.error(message, token.pos if token is not None else pos)

    # -- templates ---------------------------------------------------------------------

    def segments(
        self, segments: tuple[Segment, ...], pos: int
    ) -> tuple[tuple[str | Node, ...], tuple[int, ...]]:
        """The parts of a template (or string literal at ``pos``) and their offsets."""
        parts = tuple(
            segment if isinstance(segment, str) else self._embedded(segment) for segment in segments
        )
        positions = tuple(pos if isinstance(segment, str) else segment.pos for segment in segments)
        return parts, positions

    def _embedded(self, embedded: Embedded) -> Node:
        saved = self._tokens, self._index
        self._tokens, self._index = embedded.tokens, 0
        if self._peek().kind is TokenKind.END:
            raise self._error("empty expression", pos=embedded.pos)
        node = self._expr()
        token = self._peek()
        if token.kind is not TokenKind.END:
            raise self._error(f"expected '}}' or an operator but found {_describe(token)}", token)
        self._tokens, self._index = saved
        return node

    # -- expressions -------------------------------------------------------------------

    def _expr(self) -> Node:
        self._depth += 1
        if self._depth > MAX_DEPTH:
            raise self._error(f"expression nested too deeply (at most {MAX_DEPTH})", self._peek())
        node = self._logical(TokenKind.OR)
        self._depth -= 1
        return node

    def _logical(self, kind: TokenKind) -> Node:
        """``a || b`` (kind OR, over ``&&`` chains) or ``a && b`` (kind AND, over unaries)."""
        first = self._peek()
        operands = [self._operand(kind)]
        while self._peek().kind is kind:
            self._next()
            operands.append(self._operand(kind))
        if len(operands) == 1:
            return operands[0]
        return Logical("||" if kind is TokenKind.OR else "&&", tuple(operands), first.pos)

    def _operand(self, kind: TokenKind) -> Node:
        return self._logical(TokenKind.AND) if kind is TokenKind.OR else self._compare()

    def _unary(self) -> Node:
        token = self._peek()
        if token.kind is not TokenKind.NOT:
            return self._postfix()
        self._next()
        self._depth += 1
        if self._depth > MAX_DEPTH:
            raise self._error(f"expression nested too deeply (at most {MAX_DEPTH})", token)
        node = Not(self._unary(), token.pos)
        self._depth -= 1
        return node

    def _compare(self) -> Node:
        left = self._coalesce()
        token = self._peek()
        op = _COMPARISONS.get(token.kind)
        if op is None:
            return left
        self._next()
        node = Compare(op, left, self._coalesce(), token.pos)
        after = self._peek()
        if after.kind in _COMPARISONS:
            raise self._error("comparisons do not chain: write (a < b) && (b < c)", after)
        return node

    def _coalesce(self) -> Node:
        first = self._peek()
        operands = [self._unary()]
        while self._peek().kind is TokenKind.COALESCE:
            self._next()
            operands.append(self._unary())
        if len(operands) == 1:
            return operands[0]
        return Coalesce(tuple(operands), first.pos)

    def _postfix(self) -> Node:
        node = self._primary()
        while True:
            token = self._peek()
            if token.kind is TokenKind.DOT:
                self._next()
                name = self._peek()
                if name.kind is not TokenKind.NAME:
                    raise self._error(
                        f"expected a name after '.' but found {_describe(name)}", name
                    )
                self._next()
                node = self._member(node, token, name)
            elif token.kind is TokenKind.LBRACKET:
                self._next()
                index = self._expr()
                self._expect(TokenKind.RBRACKET)
                node = self._index_of(node, index, token)
            elif token.kind is TokenKind.LPAREN:
                node = self._call(node, token)
            else:
                break
        if isinstance(node, Name) and node.name == "ctx":
            raise self._error(
                "ctx must be followed by a member: " + ", ".join(f"ctx.{m}" for m in CTX_MEMBERS),
                pos=node.pos,
            )
        return node

    def _member(self, target: Node, dot: Token, name: Token) -> Node:
        assert isinstance(name.value, str)
        if isinstance(target, Literal | Compare | Logical | Not):
            raise self._error(f"{_what(target)} has no members", dot)
        if isinstance(target, Name):
            if target.name == "stepName":
                raise self._error("stepName is a string and has no members", dot)
            if name.value not in CTX_MEMBERS:
                raise self._error(
                    f"unknown member ctx.{name.value}: expected one of {', '.join(CTX_MEMBERS)}",
                    name,
                )
            if name.value == "datasource" and self._peek().kind is not TokenKind.LPAREN:
                raise self._error("ctx.datasource must be called: ctx.datasource(name, key)", name)
        return Member(target, name.value, dot.pos)

    def _index_of(self, target: Node, index: Node, bracket: Token) -> Node:
        if isinstance(target, Literal | Compare | Logical | Not):
            raise self._error(f"{_what(target)} cannot be indexed", bracket)
        if isinstance(target, Name):
            if target.name == "stepName":
                raise self._error("stepName is a string and cannot be indexed", bracket)
            raise self._error("write the members of ctx as ctx.name, not ctx[...]", bracket)
        if isinstance(index, Literal) and (
            index.value is None or isinstance(index.value, bool | float)
        ):
            raise self._error("an index must be a string or an integer", bracket)
        return Index(target, index, bracket.pos)

    def _call(self, target: Node, paren: Token) -> Node:
        if not (
            isinstance(target, Member)
            and target.name == "datasource"
            and isinstance(target.target, Name)
            and target.target.name == "ctx"
        ):
            raise self._error("only ctx.datasource(name, key) can be called", paren)
        self._next()
        self._depth += 1
        args: list[Node] = []
        if self._peek().kind is not TokenKind.RPAREN:
            args.append(self._expr())
            while self._peek().kind is TokenKind.COMMA:
                self._next()
                args.append(self._expr())
        token = self._peek()
        if token.kind is not TokenKind.RPAREN:
            raise self._error(f"expected ',' or ')' but found {_describe(token)}", token)
        self._next()
        self._depth -= 1
        if len(args) != 2:
            raise self._error(
                f"ctx.datasource takes 2 arguments (name, key), got {len(args)}", paren
            )
        name = args[0]
        if isinstance(name, Literal) and not (isinstance(name.value, str) and name.value):
            raise self._error("the datasource name must be a non-empty string", paren)
        return DatasourceCall(name, args[1], paren.pos)

    def _primary(self) -> Node:
        token = self._peek()
        kind = token.kind
        if kind is TokenKind.NAME:
            self._next()
            assert isinstance(token.value, str)
            if token.value in _KEYWORDS:
                return Literal(_KEYWORDS[token.value], token.pos)
            if token.value not in ROOTS:
                raise self._error(f"unknown name {token.value!r}: expected ctx or stepName", token)
            return Name(token.value, token.pos)
        if kind is TokenKind.NUMBER:
            self._next()
            assert isinstance(token.value, int | float)
            return Literal(token.value, token.pos)
        if kind is TokenKind.STRING:
            self._next()
            assert isinstance(token.value, tuple)
            parts, positions = self.segments(token.value, token.pos)
            if all(isinstance(part, str) for part in parts):
                return Literal("".join(part for part in parts if isinstance(part, str)), token.pos)
            return Interpolation(parts, positions, token.pos)
        if kind is TokenKind.LPAREN:
            self._next()
            node = self._expr()
            self._expect(TokenKind.RPAREN)
            return node
        raise self._error(f"expected an expression but found {_describe(token)}", token)


def _describe(token: Token) -> str:
    if token.kind is TokenKind.NAME:
        return f"name {token.value!r}"
    if token.kind is TokenKind.NUMBER:
        return f"number {token.value!r}"
    return str(token.kind.value)


def _what(node: Node) -> str:
    return "a literal" if isinstance(node, Literal) else "a boolean expression"
