"""Lexer of ``${...}`` templates: text -> segments of literal text and token streams.

A template is literal text with embedded ``${expr}`` expressions (``$${`` is a literal
``${``). A string literal inside an expression is itself a template (with backslash
escapes), so it may hold nested ``${...}``: the lexer recurses into it and the token of a
string literal carries its own segments. Positions are 0-based offsets into the *whole*
template text; errors report them as 1-based columns.

Every input is bounded before it can cost memory or stack: the template length
(:data:`MAX_TEMPLATE_BYTES`), the number of tokens (:data:`MAX_TOKENS`) and the nesting of
``${`` inside string literals (:data:`MAX_DEPTH`, shared with the parser's bracket depth).
"""

from __future__ import annotations

import enum
import math
import re
from dataclasses import dataclass
from typing import TypeAlias

from blokrun.errors import ExpressionError

__all__ = [
    "MAX_DEPTH",
    "MAX_TEMPLATE_BYTES",
    "MAX_TOKENS",
    "Embedded",
    "Origin",
    "Segment",
    "Token",
    "TokenKind",
    "TokenValue",
    "lex_template",
]

#: Longest template (UTF-8 bytes) that may contain ``${``.
MAX_TEMPLATE_BYTES = 64 * 1024
#: Deepest nesting of expressions: brackets, parentheses, call arguments, ``${`` in strings.
MAX_DEPTH = 32
#: Most tokens in one template, nested string literals included.
MAX_TOKENS = 10_000


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a template comes from; every error, at load or at run time, carries it."""

    text: str
    source: str
    path: str

    def error(self, message: str, pos: int | None) -> ExpressionError:
        return ExpressionError(
            message,
            expression=self.text,
            column=None if pos is None else pos + 1,
            source=self.source,
            path=self.path,
        )


class TokenKind(enum.Enum):
    NAME = "a name"
    NUMBER = "a number"
    STRING = "a string"
    DOT = "'.'"
    LBRACKET = "'['"
    RBRACKET = "']'"
    LPAREN = "'('"
    RPAREN = "')'"
    COMMA = "','"
    COALESCE = "'??'"
    EQ = "'=='"
    NE = "'!='"
    LT = "'<'"
    LE = "'<='"
    GT = "'>'"
    GE = "'>='"
    AND = "'&&'"
    OR = "'||'"
    NOT = "'!'"
    END = "'}'"


@dataclass(frozen=True, slots=True)
class Token:
    kind: TokenKind
    pos: int
    #: NAME: the name; NUMBER: int or float; STRING: its segments; punctuation: None.
    value: TokenValue


@dataclass(frozen=True, slots=True)
class Embedded:
    """One ``${...}``: the offset of its ``$`` and its tokens (the last one is END)."""

    pos: int
    tokens: tuple[Token, ...]


Segment: TypeAlias = "str | Embedded"
TokenValue: TypeAlias = "str | int | float | tuple[Segment, ...] | None"

_PUNCT = {
    ".": TokenKind.DOT,
    "[": TokenKind.LBRACKET,
    "]": TokenKind.RBRACKET,
    "(": TokenKind.LPAREN,
    ")": TokenKind.RPAREN,
    ",": TokenKind.COMMA,
    "}": TokenKind.END,
}
#: Operators, longest first (so ``<=`` is not read as ``<``).
_OPERATORS = (
    ("==", TokenKind.EQ),
    ("!=", TokenKind.NE),
    ("<=", TokenKind.LE),
    (">=", TokenKind.GE),
    ("&&", TokenKind.AND),
    ("||", TokenKind.OR),
    ("<", TokenKind.LT),
    (">", TokenKind.GT),
    ("!", TokenKind.NOT),
)
#: A character that starts no operator on its own, and what was probably meant.
_LONE = {"=": "==", "&": "&&", "|": "||", "?": "??"}
_ESCAPES = {"\\": "\\", "'": "'", '"': '"', "n": "\n", "t": "\t", "$": "$"}

_SPACE = re.compile(r"[ \t\r\n]*")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*", re.ASCII)
_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?", re.ASCII)
_NUMBER_TAIL = re.compile(r"[A-Za-z0-9_.-]*", re.ASCII)
#: What ends a run of literal text: at top level, and inside '...' and "..." strings.
_TOP_SPECIAL = re.compile(r"\$\$?\{")
_STRING_SPECIAL = {
    "'": re.compile(r"\$\$?\{|\\|'"),
    '"': re.compile(r'\$\$?\{|\\|"'),
}


def lex_template(origin: Origin) -> tuple[Segment, ...]:
    """Split ``origin.text`` into literal text and embedded expressions."""
    size = len(origin.text)
    if size > MAX_TEMPLATE_BYTES // 4:
        size = len(origin.text.encode("utf-8", "surrogatepass"))
        if size > MAX_TEMPLATE_BYTES:
            raise origin.error(
                f"template too long ({size} bytes, at most {MAX_TEMPLATE_BYTES})", None
            )
    lexer = _Lexer(origin)
    segments, _ = lexer.template(0, None)
    return segments


class _Lexer:
    __slots__ = ("_depth", "_origin", "_text", "_tokens")

    def __init__(self, origin: Origin) -> None:
        self._origin = origin
        self._text = origin.text
        self._depth = 0
        self._tokens = 0

    def template(self, pos: int, quote: str | None) -> tuple[tuple[Segment, ...], int]:
        """Scan text from ``pos`` to the end (``quote`` None) or to the closing quote.

        Returns the segments and the offset just past the text (past the closing quote).
        """
        text = self._text
        start = pos - 1  # the opening quote, for "unterminated string"
        special = _TOP_SPECIAL if quote is None else _STRING_SPECIAL[quote]
        segments: list[Segment] = []
        buffer: list[str] = []
        while True:
            match = special.search(text, pos)
            if match is None:
                if quote is not None:
                    raise self._origin.error(
                        f"unterminated string: expected closing {quote}", start
                    )
                buffer.append(text[pos:])
                break
            buffer.append(text[pos : match.start()])
            found = match.group()
            if found == "$${":
                buffer.append("${")
                pos = match.end()
            elif found == "${":
                literal = "".join(buffer)
                if literal:
                    segments.append(literal)
                buffer.clear()
                embedded, pos = self._embedded(match.start())
                segments.append(embedded)
            elif found == "\\":
                buffer.append(self._escape(match, quote, start))
                pos = match.end() + 1
            else:  # the closing quote
                pos = match.end()
                break
        literal = "".join(buffer)
        if literal:
            segments.append(literal)
        return tuple(segments), pos

    def _escape(self, match: re.Match[str], quote: str | None, start: int) -> str:
        """The character a backslash escape at ``match`` stands for."""
        text = self._text
        if match.end() >= len(text):
            raise self._origin.error(f"unterminated string: expected closing {quote}", start)
        char = text[match.end()]
        if char not in _ESCAPES:
            raise self._origin.error(
                f"invalid escape '\\{char}' (use \\\\ \\' \\\" \\n \\t or \\$)",
                match.start(),
            )
        return _ESCAPES[char]

    def _embedded(self, start: int) -> tuple[Embedded, int]:
        """Lex the expression of the ``${`` at ``start`` up to its ``}``."""
        self._depth += 1
        if self._depth > MAX_DEPTH:
            raise self._origin.error(f"expression nested too deeply (at most {MAX_DEPTH})", start)
        tokens: list[Token] = []
        pos = start + 2
        while True:
            token, pos = self._token(pos, start)
            self._tokens += 1
            if self._tokens > MAX_TOKENS:
                raise self._origin.error(f"too many tokens (at most {MAX_TOKENS})", token.pos)
            tokens.append(token)
            if token.kind is TokenKind.END:
                break
        self._depth -= 1
        return Embedded(start, tuple(tokens)), pos

    def _token(self, pos: int, start: int) -> tuple[Token, int]:
        """The token at ``pos`` (after blanks) and the offset after it."""
        text = self._text
        space = _SPACE.match(text, pos)
        pos = space.end() if space else pos
        if pos >= len(text):
            raise self._origin.error("unterminated expression: expected '}'", start)
        char = text[pos]
        kind = _PUNCT.get(char)
        if kind is not None:
            return Token(kind, pos, None), pos + 1
        if char in "=!<>&|?":
            return self._operator(pos)
        if char in "'\"":
            segments, end = self.template(pos + 1, char)
            return Token(TokenKind.STRING, pos, segments), end
        name = _NAME.match(text, pos)
        if name is not None:
            if text.startswith("__", pos):
                raise self._origin.error("names starting with __ are not allowed", pos)
            return Token(TokenKind.NAME, pos, name.group()), name.end()
        number = _NUMBER.match(text, pos)
        if number is not None:
            return self._number(pos, number.group()), number.end()
        raise self._origin.error(f"unexpected character {_show(char)}", pos)

    def _operator(self, pos: int) -> tuple[Token, int]:
        text = self._text
        if text.startswith("??", pos):
            return Token(TokenKind.COALESCE, pos, None), pos + 2
        for symbol, kind in _OPERATORS:
            if text.startswith(symbol, pos):
                return Token(kind, pos, None), pos + len(symbol)
        char = text[pos]
        raise self._origin.error(
            f"unexpected character {_show(char)} (did you mean '{_LONE[char]}')", pos
        )

    def _number(self, pos: int, literal: str) -> Token:
        tail = _NUMBER_TAIL.match(self._text, pos + len(literal))
        if tail is not None and tail.group():
            whole = literal + tail.group()
            raise self._origin.error(f"invalid number {_show(whole[:40])}", pos)
        value: int | float
        if any(c in literal for c in ".eE"):
            value = float(literal)
            if not math.isfinite(value):
                raise self._origin.error(f"number out of range {_show(literal[:40])}", pos)
        else:
            try:
                value = int(literal)
            except ValueError:  # more digits than int() accepts
                raise self._origin.error(f"number too long {_show(literal[:40])}", pos) from None
        return Token(TokenKind.NUMBER, pos, value)


def _show(text: str) -> str:
    """Quote a piece of source for a message, showing control characters escaped."""
    return repr(text) if text.isprintable() else ascii(text)
