"""Comparisons and boolean operators of the ${...} language: semantics, precedence,
short-circuit, type errors at their column, folding at load, and a differential property
test against a reference evaluator written independently here."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from blokrun.errors import ExpressionError
from blokrun.expressions import compile_template
from tests.unit.test_expressions import FakeScope, compile_error, run_error, static


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("${ctx.vars.pos == 1}", True),
        ("${ctx.vars.pos == 1.0}", True),
        ("${ctx.vars.pos != 1}", False),
        ("${ctx.vars.no == false}", True),
        ("${ctx.vars.zero == false}", False),  # JSON: 0 is not false
        ("${ctx.vars.pos == true}", False),  # and 1 is not true
        ("${ctx.vars.limit == null}", True),
        ("${ctx.vars.zero == null}", False),
        ("${ctx.vars.text == 'hello'}", True),
        ("${ctx.vars.text == 1}", False),
        ("${ctx.vars.items == ctx.vars.items}", True),
        ("${ctx.vars.a == ctx.vars.a}", True),
        ("${ctx.vars.tuple == ctx.vars.items}", False),
        ("${ctx.vars.f > 2}", True),
        ("${ctx.vars.f >= 2.5}", True),
        ("${ctx.vars.f < 2.5}", False),
        ("${ctx.vars.f <= 2.5}", True),
        ("${ctx.vars.big > 1e29}", True),
        ("${ctx.vars.text < 'world'}", True),
        ("${ctx.vars.text >= 'help'}", False),
        ("${!ctx.vars.no}", True),
        ("${!!ctx.vars.no}", False),
        ("${ctx.vars.pos == 1 && ctx.vars.text == 'hello'}", True),
        ("${ctx.vars.pos == 2 || ctx.vars.text == 'hello'}", True),
        ("${ctx.vars.pos == 2 || ctx.vars.text == 'x' || ctx.vars.no}", False),
        # && binds tighter than ||; ! tighter than &&; ?? tighter than comparisons
        ("${true || false && false}", True),
        ("${(true || false) && false}", False),
        ("${!false && false}", False),
        ("${!ctx.vars.no == true}", True),  # ! binds tightest: (!no) == true
        ("${!(ctx.vars.pos == 2)}", True),
        ("${ctx.vars.missing ?? 5 > 4}", True),
        ("${ctx.vars.limit ?? 0 == 0}", True),
        ("${ctx.vars.nested.x.y ?? 1 < 2}", True),
        ("${ctx.vars.items[0] < ctx.vars.items[2]}", True),
    ],
)
def test_semantics(text: str, expected: bool) -> None:
    assert static(text) is expected


def test_interpolated_comparison_is_text() -> None:
    assert static("big=${ctx.vars.pos > 0}") == "big=true"


def test_short_circuit_skips_the_right_side() -> None:
    # The right side would be an error (no such key); it is never looked at.
    assert static("${false && ctx.vars.nope.deeper}") is False
    assert static("${true || ctx.vars.nope}") is True
    with pytest.raises(ExpressionError, match="no such key"):
        static("${true && ctx.vars.nope}")


async def test_datasource_reads_in_conditions_are_short_circuited() -> None:
    scope = FakeScope(store={("db", "k"): {"n": 5}})
    compiled = compile_template("${ctx.vars.pos == 2 && ctx.datasource('db', 'k').n > 1}")
    assert await compiled.evaluate(scope) is False
    assert scope.calls == []
    compiled = compile_template("${ctx.vars.pos == 1 && ctx.datasource('db', 'k').n > 1}")
    assert await compiled.evaluate(scope) is True
    assert scope.calls == [("db", "k")]


@pytest.mark.parametrize(
    ("text", "message", "column"),
    [
        ("${ctx.vars.text < 1}", "cannot compare a string with a number using '<'", 17),
        ("${ctx.vars.no > 0}", "cannot compare a boolean with a number using '>'", 15),
        ("${ctx.vars.limit >= 0}", "cannot compare null with a number using '>='", 18),
        ("${ctx.vars.items < ctx.vars.items}", "cannot compare a list with a list", 18),
        ("${ctx.vars.pos && true}", "&& needs a boolean, got a number", 3),
        ("${ctx.vars.no || ctx.vars.text}", "|| needs a boolean, got a string", 3),
        ("${!ctx.vars.empty}", "! needs a boolean, got a string", 3),
        ("${ctx.vars.nope == 1}", "ctx.vars.nope: no such key", 11),
    ],
)
def test_runtime_type_errors_name_the_operator_and_column(
    text: str, message: str, column: int
) -> None:
    err = run_error(text)
    assert message in err.detail, err.detail
    assert err.column == column


@pytest.mark.parametrize(
    ("text", "message", "column"),
    [
        ("${1 < 2 < 3}", "comparisons do not chain", 9),
        ("${ctx.vars.a = 1}", "unexpected character '=' (did you mean '==')", 14),
        ("${ctx.vars.a & true}", "unexpected character '&' (did you mean '&&')", 14),
        ("${ctx.vars.a | true}", "unexpected character '|' (did you mean '||')", 14),
        ("${ctx.vars.a ==}", "expected an expression but found '}'", 16),
        ("${!}", "expected an expression but found '}'", 4),
        ("${(1 < 2).x}", "a boolean expression has no members", 10),
        ("${(1 < 2)[0]}", "a boolean expression cannot be indexed", 10),
        # constants are folded at load, so their type errors are load-time errors
        ("${'a' < 1}", "cannot compare a string with a number", 7),
        ("${1 && true}", "&& needs a boolean, got a number", 3),
        ("${!null}", "! needs a boolean, got null", 3),
    ],
)
def test_load_time_errors(text: str, message: str, column: int) -> None:
    err = compile_error(text)
    assert err.detail.startswith(message), err.detail
    assert err.column == column


def test_constant_conditions_are_folded() -> None:
    compiled = compile_template("${1 < 2 && !(3 == 4)}")
    assert compiled.is_constant
    assert compiled.evaluate_static(FakeScope()) is True


def test_missing_under_coalesce_falls_through_a_comparison() -> None:
    assert static("${(ctx.vars.nope > 1) ?? 'unknown'}") == "unknown"
    assert static("${(ctx.vars.f > 1) ?? 'unknown'}") is True


# -- differential property test ------------------------------------------------------------
# Random trees of literals and operators, rendered as text, evaluated by blokrun and by the
# reference below (JSON semantics: true is not 1, ordering only within numbers or strings).


class TypeClash(Exception):
    pass


def ref_eq(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool) or a is None or b is None:
        return a is b
    if isinstance(a, str) != isinstance(b, str):
        return False
    return bool(a == b)


def ref_eval(tree: Any) -> Any:
    if not isinstance(tree, tuple):
        return tree
    op = tree[0]
    if op == "!":
        value = ref_eval(tree[1])
        if not isinstance(value, bool):
            raise TypeClash
        return not value
    if op in ("&&", "||"):
        for operand in tree[1:]:
            value = ref_eval(operand)
            if not isinstance(value, bool):
                raise TypeClash
            if value is (op == "||"):
                return value
        return op == "&&"
    return ref_compare(op, ref_eval(tree[1]), ref_eval(tree[2]))


def ref_compare(op: str, left: Any, right: Any) -> bool:
    if op == "==":
        return ref_eq(left, right)
    if op == "!=":
        return not ref_eq(left, right)
    numbers = all(isinstance(x, int | float) and not isinstance(x, bool) for x in (left, right))
    strings = all(isinstance(x, str) for x in (left, right))
    if not (numbers or strings):
        raise TypeClash
    result: bool = {"<": left < right, "<=": left <= right, ">": left > right, ">=": left >= right}[
        op
    ]
    return result


def render(tree: Any) -> str:
    if not isinstance(tree, tuple):
        if tree is None:
            return "null"
        if isinstance(tree, bool):
            return "true" if tree else "false"
        if isinstance(tree, str):
            return f"'{tree}'"
        return repr(tree)
    op = tree[0]
    if op == "!":
        return f"!({render(tree[1])})"
    return "(" + f" {op} ".join(render(t) for t in tree[1:]) + ")"


literals = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 3),
    st.sampled_from([0.5, -1.5, 2.0]),
    st.sampled_from(["", "a", "b", "ab"]),
)
trees = st.recursive(
    literals,
    lambda inner: st.one_of(
        st.tuples(st.just("!"), inner),
        st.tuples(st.sampled_from(["&&", "||"]), inner, inner),
        st.tuples(st.sampled_from(["==", "!=", "<", "<=", ">", ">="]), inner, inner),
    ),
    max_leaves=8,
)


@settings(max_examples=400, deadline=1000)
@given(trees)
def test_property_matches_reference(tree: Any) -> None:
    text = "${" + render(tree) + "}"
    try:
        expected = ref_eval(tree)
    except TypeClash:
        with pytest.raises(ExpressionError):
            compile_template(text).evaluate_static(FakeScope())
        return
    assert compile_template(text).evaluate_static(FakeScope()) == expected
    assert type(compile_template(text).evaluate_static(FakeScope())) is type(expected)


@settings(max_examples=200, deadline=1000)
@given(trees)
def test_property_same_result_through_the_scope(tree: Any) -> None:
    """The same tree with its literals read from ctx.vars (not folded) gives the same."""
    leaves: dict[str, Any] = {}

    def through_vars(node: Any) -> str:
        if not isinstance(node, tuple):
            name = f"v{len(leaves)}"
            leaves[name] = node
            return f"ctx.vars.{name}"
        op = node[0]
        if op == "!":
            return f"!({through_vars(node[1])})"
        return "(" + f" {op} ".join(through_vars(t) for t in node[1:]) + ")"

    text = "${" + through_vars(tree) + "}"
    scope = FakeScope({"vars": leaves})
    try:
        expected = ref_eval(tree)
    except TypeClash:
        with pytest.raises(ExpressionError):
            compile_template(text).evaluate_static(scope)
        return
    assert compile_template(text).evaluate_static(scope) == expected
