"""The ${...} expression language: grammar, semantics, errors, limits, security."""

from __future__ import annotations

import contextlib
import copy
import time
from types import MappingProxyType
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from blokrun.errors import DatasourceAccessError, ExpressionError, WorkflowError
from blokrun.expressions import Compiled, Scope, compile_template, compile_value, render_key


def make_ctx() -> dict[str, Any]:
    return {
        "request": {"id": "r-42", "payload": {"n": 3}},
        "vars": {
            "a": {"b": 1, "b c": [10, 20, 30]},
            "load-data": {"rows": [{"id": 7}, {"id": 8}]},
            "limit": None,
            "zero": 0,
            "empty": "",
            "no": False,
            "f": 2.5,
            "big": 10**30,
            "text": "hello",
            "items": [1, 2, 3],
            "keys": {"k1": "v1"},
            "which": "k1",
            "pos": 1,
            "nested": {"x": None},
            "tuple": (4, 5),
        },
        "workflow": {"name": "daily", "version": 2},
        "timestamp": 1700000000.5,
        "date": "2024-01-31",
        "idempotency_key": "idem-1",
        "step": {"name": "load", "attempt": 1},
    }


class FakeScope:
    """A Scope that records datasource calls."""

    def __init__(
        self,
        ctx: dict[str, Any] | None = None,
        *,
        step_name: str = "load",
        store: dict[tuple[Any, Any], Any] | None = None,
    ) -> None:
        self.ctx = make_ctx() if ctx is None else ctx
        self.step_name = step_name
        self.store = store or {}
        self.calls: list[tuple[Any, Any]] = []
        self.roots: list[str] = []

    def lookup_root(self, name: str) -> Any:
        self.roots.append(name)
        if name == "ctx":
            return self.ctx
        if name == "stepName":
            return self.step_name
        raise AssertionError(f"unexpected root {name!r}")

    async def call_datasource(self, name: Any, key: Any) -> Any:
        self.calls.append((name, key))
        return self.store.get((name, key))


def static(text: str, scope: FakeScope | None = None) -> Any:
    return compile_template(text).evaluate_static(scope or FakeScope())


def compile_error(text: str) -> ExpressionError:
    with pytest.raises(ExpressionError) as info:
        compile_template(text, source="wf.json", path="$.steps[0].inputs.x")
    err = info.value
    assert err.expression == text
    assert err.source == "wf.json"
    assert err.path == "$.steps[0].inputs.x"
    return err


def run_error(text: str, scope: FakeScope | None = None) -> ExpressionError:
    compiled = compile_template(text, source="wf.json", path="$.steps[1].inputs.y")
    with pytest.raises(ExpressionError) as info:
        compiled.evaluate_static(scope or FakeScope())
    err = info.value
    assert err.expression == text
    assert err.source == "wf.json"
    assert err.path == "$.steps[1].inputs.y"
    return err


# -- constants ---------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["", "plain", "{0.__class__}", "$", "a $ { b }", "{}"])
async def test_string_without_template_is_constant(text: str) -> None:
    compiled = compile_template(text)
    assert compiled.is_constant
    assert not compiled.uses_datasource
    assert compiled.datasources == frozenset()
    scope = FakeScope()
    assert await compiled.evaluate(scope) == text
    assert compiled.evaluate_static(scope) == text
    assert scope.roots == []


async def test_constant_value_is_returned_itself() -> None:
    value = {"a": [1, 2, {"b": "text"}], "c": None, "d": 1.5, "e": True}
    compiled = compile_value(value)
    assert compiled.is_constant
    assert await compiled.evaluate(FakeScope()) is value
    assert compiled.evaluate_static(FakeScope()) is value


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("${'abc'}", "abc"),
        ("${12}", 12),
        ("${-1.5e2}", -150.0),
        ("${true}", True),
        ("${false}", False),
        ("${null}", None),
        ("a${'b'}c${1}", "abc1"),
        ("$${x}", "${x}"),
        ("${null ?? 'd'}", "d"),
        ("${'a' ?? 'd'}", "a"),
        ("${'x-${1}-${true}'}", "x-1-true"),
    ],
)
def test_literal_only_templates_are_folded(text: str, expected: Any) -> None:
    compiled = compile_template(text)
    assert compiled.is_constant
    assert compiled.evaluate_static(FakeScope()) == expected


# -- values and lookups ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("${ctx.request.id}", "r-42"),
        ("${ctx.request.payload}", {"n": 3}),
        ("${ctx.vars.a.b}", 1),
        ("${ctx.vars['load-data'].rows[0]}", {"id": 7}),
        ("${ctx.vars.load-data.rows[1].id}", 8),
        ('${ctx.vars["a"]["b c"][-1]}', 30),
        ("${ctx.vars.a['b c'][0]}", 10),
        ("${ctx.vars.items}", [1, 2, 3]),
        ("${ctx.vars.limit}", None),
        ("${ctx.vars.no}", False),
        ("${ctx.vars.tuple[1]}", 5),
        ("${ctx.workflow.name}", "daily"),
        ("${ctx.timestamp}", 1700000000.5),
        ("${ctx.date}", "2024-01-31"),
        ("${ctx.idempotency_key}", "idem-1"),
        ("${ctx.step.attempt}", 1),
        ("${stepName}", "load"),
        ("${ ctx . vars [ 'a' ] . b }", 1),
        ("${\n\tctx.vars.a.b\r\n}", 1),
        ("${(ctx.vars.a).b}", 1),
        ("${((ctx.vars)).a.b}", 1),
        ("${ctx.vars.keys[ctx.vars.which]}", "v1"),
        ("${ctx.vars.items[ctx.vars.pos]}", 2),
        ("${ctx.vars.keys['k${ctx.vars.pos}']}", "v1"),
        ("${ctx.vars.a['b' ?? 'x']}", 1),
    ],
)
async def test_single_expression_evaluates_to_the_value(text: str, expected: Any) -> None:
    compiled = compile_template(text)
    assert not compiled.is_constant
    assert compiled.evaluate_static(FakeScope()) == expected
    assert await compiled.evaluate(FakeScope()) == expected


def test_single_expression_returns_the_object_from_scope() -> None:
    scope = FakeScope()
    assert static("${ctx.vars.items}", scope) is scope.ctx["vars"]["items"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("report-${ctx.date}.csv", "report-2024-01-31.csv"),
        ("${ctx.request.id}-${stepName}", "r-42-load"),
        (" ${ctx.vars.a.b}", " 1"),
        ("${ctx.vars.f}x", "2.5x"),
        ("n=${ctx.vars.big}", "n=" + "1" + "0" * 30),
        ("${ctx.vars.limit}|${ctx.vars.no}|${true}", "null|false|true"),
        ("${ctx.vars.empty}${ctx.vars.zero}", "0"),
        ("d=${ctx.request.payload}", 'd={"n":3}'),
        ("l=${ctx.vars.items}", "l=[1,2,3]"),
        ("l=${ctx.vars['load-data']}", 'l={"rows":[{"id":7},{"id":8}]}'),
        ("{0.__class__}-${stepName}-{stepName}", "{0.__class__}-load-{stepName}"),
        ("%s%(x)s${stepName}", "%s%(x)sload"),
        ("$${ctx.date}=${ctx.date}", "${ctx.date}=2024-01-31"),
        ("$$${ctx.date}", "$${ctx.date}"),
        ("$ {x} $x $", "$ {x} $x $"),
        ("${'${stepName}'}", "load"),
    ],
)
def test_interpolation_renders_text(text: str, expected: str) -> None:
    assert static(text) == expected


def test_evaluate_builds_a_new_structure() -> None:
    source = {
        "url": "https://x/${ctx.request.id}",
        "list": ["${ctx.vars.a.b}", "const", {"deep": "${stepName}"}],
        "const": {"k": [1, 2]},
        "n": 5,
    }
    before = copy.deepcopy(source)
    compiled = compile_value(source)
    assert not compiled.is_constant
    result = compiled.evaluate_static(FakeScope())
    assert result == {
        "url": "https://x/r-42",
        "list": [1, "const", {"deep": "load"}],
        "const": {"k": [1, 2]},
        "n": 5,
    }
    assert source == before
    assert result is not source
    assert result["list"] is not source["list"]


def test_dict_keys_are_not_templates() -> None:
    compiled = compile_value({"${ctx.request.id}": "${stepName}", "${x": 1})
    assert compiled.evaluate_static(FakeScope()) == {"${ctx.request.id}": "load", "${x": 1}


def test_tuples_are_walked_like_lists() -> None:
    compiled = compile_value(("${stepName}", 1))
    assert compiled.evaluate_static(FakeScope()) == ["load", 1]


# -- string literals and escapes ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (r"${'a\\b'}", "a\\b"),
        (r"${'it\'s'}", "it's"),
        (r'${"say \"hi\""}', 'say "hi"'),
        (r"${'a\nb\tc'}", "a\nb\tc"),
        (r"${'cost: \$5'}", "cost: $5"),
        (r"${'\${stepName}'}", "${stepName}"),
        ("${'$${stepName}'}", "${stepName}"),
        ('${"it\'s"}', "it's"),
        ("${'say \"hi\"'}", 'say "hi"'),
        ("${'}'}", "}"),
        ("${'a ?? b'}", "a ?? b"),
        ("${''}", ""),
    ],
)
def test_string_escapes(text: str, expected: str) -> None:
    assert static(text) == expected


def test_nested_templates_in_string_literals() -> None:
    text = "${'a-${'b-${stepName}-' ?? 'x'}-c'}"
    assert static(text) == "a-b-load--c"
    assert static("""${"x${ctx.vars['which']}"}""") == "xk1"


# -- datasource calls ------------------------------------------------------------------------


async def test_datasource_call_with_nested_template() -> None:
    compiled = compile_template("${ctx.datasource('cache', 'key-${ctx.request.id}')}")
    assert compiled.uses_datasource
    assert compiled.datasources == frozenset({"cache"})
    scope = FakeScope(store={("cache", "key-r-42"): {"rows": [1]}})
    assert await compiled.evaluate(scope) == {"rows": [1]}
    assert scope.calls == [("cache", "key-r-42")]


async def test_datasource_result_can_be_walked_and_interpolated() -> None:
    scope = FakeScope(store={("db", "r-42"): {"user": {"name": "ann"}}, ("db", 3): 9})
    compiled = compile_value(
        {
            "name": "${ctx.datasource('db', ctx.request.id).user.name}",
            "text": 'n=${ctx.datasource("db", ctx.request.payload.n)}!',
            "list": ["${ctx.datasource('other', 'k') ?? 'default'}"],
        }
    )
    assert compiled.datasources == frozenset({"db", "other"})
    assert await compiled.evaluate(scope) == {"name": "ann", "text": "n=9!", "list": ["default"]}
    assert scope.calls == [("db", "r-42"), ("db", 3), ("other", "k")]


async def test_datasource_name_that_is_not_literal_adds_nothing() -> None:
    compiled = compile_template("${ctx.datasource(ctx.vars.which, 'k')}")
    assert compiled.uses_datasource
    assert compiled.datasources == frozenset()
    compiled = compile_template("${ctx.datasource('c-${stepName}', 'k')}")
    assert compiled.datasources == frozenset()
    scope = FakeScope()
    await compiled.evaluate(scope)
    assert scope.calls == [("c-load", "k")]


async def test_datasource_arguments_missing_under_coalesce_skip_the_call() -> None:
    scope = FakeScope()
    compiled = compile_template("${ctx.datasource('c', ctx.vars.nope) ?? 'fallback'}")
    assert await compiled.evaluate(scope) == "fallback"
    assert scope.calls == []


async def test_datasource_call_in_coalesce_right_side_only_when_needed() -> None:
    scope = FakeScope(store={("c", "k"): "from-cache"})
    assert (
        await compile_template("${ctx.vars.text ?? ctx.datasource('c', 'k')}").evaluate(scope)
        == "hello"
    )
    assert scope.calls == []
    assert (
        await compile_template("${ctx.vars.nope ?? ctx.datasource('c', 'k')}").evaluate(scope)
        == "from-cache"
    )
    assert scope.calls == [("c", "k")]


async def test_datasource_results_as_dynamic_keys() -> None:
    scope = FakeScope(store={("c", "which"): "k1", ("c", "pos"): 2, ("c", "bad"): [1]})
    assert (
        await compile_template("${ctx.vars.keys[ctx.datasource('c', 'which')]}").evaluate(scope)
        == "v1"
    )
    assert (
        await compile_template(
            "${ctx.vars.items[ctx.datasource('c', 'pos')]}-${ctx.vars.items[0]}"
        ).evaluate(scope)
        == "3-1"
    )
    text = (
        "${ctx.vars.keys[ctx.datasource('c', 'none')]"
        " ?? ctx.vars.items[ctx.datasource('c', 'x')] ?? 'd'}"
    )
    assert await compile_template(text).evaluate(scope) == "d"
    with pytest.raises(ExpressionError, match=r"ctx.vars.keys\[2\]: a mapping needs a string key"):
        await compile_template("${ctx.vars.keys[ctx.datasource('c', 'pos')] ?? 'd'}").evaluate(
            scope
        )
    with pytest.raises(ExpressionError, match=r"ctx.vars.keys\[<list>\]: a mapping needs"):
        await compile_template("${ctx.vars.keys[ctx.datasource('c', 'bad')]}").evaluate(scope)


async def test_datasource_errors_propagate_unchanged() -> None:
    class Failing(FakeScope):
        async def call_datasource(self, name: Any, key: Any) -> Any:
            raise DatasourceAccessError("not listed", datasource=str(name), key=str(key))

    with pytest.raises(DatasourceAccessError):
        await compile_template("${ctx.datasource('nope', 'k') ?? 1}").evaluate(Failing())


def test_non_dict_mappings_are_walked() -> None:
    ctx = make_ctx()
    ctx["vars"] = MappingProxyType({"m": MappingProxyType({"x": [0, {"y": 5}]})})
    scope = FakeScope(ctx)
    assert static("${ctx.vars.m.x[1].y}", scope) == 5
    assert static("${ctx.vars.m.nope ?? 'd'}", scope) == "d"
    assert (
        "ctx.vars.m.nope: no such key (available: x)"
        in run_error("${ctx.vars.m.nope}", scope).detail
    )


def test_datasource_needs_async_evaluation() -> None:
    compiled = compile_template("x-${ctx.datasource('c', 'k')}", path="$.key")
    with pytest.raises(ExpressionError, match="needs asynchronous evaluation") as info:
        compiled.evaluate_static(FakeScope())
    assert info.value.column == 19
    assert info.value.path == "$.key"
    with pytest.raises(ExpressionError, match="needs asynchronous evaluation"):
        render_key(compiled, FakeScope())


def test_evaluate_static_works_when_the_datasource_call_is_not_reached() -> None:
    compiled = compile_template("${ctx.vars.text ?? ctx.datasource('c', 'k')}")
    assert compiled.uses_datasource
    assert compiled.evaluate_static(FakeScope()) == "hello"


# -- null coalescing ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("${ctx.vars.limit ?? 10}", 10),
        ("${ctx.vars.missing ?? 10}", 10),
        ("${ctx.vars.zero ?? 10}", 0),
        ("${ctx.vars.empty ?? 10}", ""),
        ("${ctx.vars.no ?? 10}", False),
        ("${ctx.vars.a.b ?? 10}", 1),
        ("${ctx.vars.a.missing.deeper ?? 'd'}", "d"),
        ("${ctx.vars.limit.deeper ?? 'd'}", "d"),
        ("${ctx.vars.nested.x.y ?? 'd'}", "d"),
        ("${ctx.vars.items[9] ?? 'd'}", "d"),
        ("${ctx.vars.items[ctx.vars.nope] ?? 'd'}", "d"),
        ("${ctx.vars.items[ctx.vars.limit] ?? 'd'}", "d"),
        ("${ctx.vars.keys[null ?? ctx.vars.limit] ?? 'd'}", "d"),
        ("${ctx.vars.x ?? ctx.vars.y ?? ctx.vars.a.b}", 1),
        ("${ctx.vars.x ?? ctx.vars.limit ?? null}", None),
        ("${(ctx.vars.x ?? ctx.vars.a).b}", 1),
        ("${(ctx.vars.x ?? ctx.vars.y) ?? 3}", 3),
        ("${'${ctx.vars.x}' ?? 'd'}", "d"),
        ("${ctx.vars[ctx.vars.x ?? 'text']}", "hello"),
        ("${ctx.vars.limit??'tight'}", "tight"),
        ("n-${ctx.vars.limit ?? 10}", "n-10"),
    ],
)
def test_coalesce(text: str, expected: Any) -> None:
    assert static(text) == expected


def test_coalesce_does_not_hide_type_errors() -> None:
    err = run_error("${ctx.vars.text.x ?? 1}")
    assert "ctx.vars.text.x: ctx.vars.text is a string, not a mapping" in err.detail


def test_coalesce_right_side_missing_is_an_error() -> None:
    err = run_error("${ctx.vars.x ?? ctx.vars.y}")
    assert err.detail.startswith("ctx.vars.y: no such key")
    assert err.column == 25


# -- run-time errors ---------------------------------------------------------------------------


def test_missing_key_lists_available_keys() -> None:
    err = run_error("${ctx.request.missing}")
    assert err.detail == (
        "ctx.request.missing: no such key (available: id, payload) (column 14)"
        " in '${ctx.request.missing}'"
    )
    assert err.column == 14
    assert str(err) == f"wf.json: $.steps[1].inputs.y: {err.detail}"
    assert isinstance(err, WorkflowError)


def test_missing_key_lists_at_most_ten_keys() -> None:
    ctx = make_ctx()
    ctx["vars"] = {f"k{i:02}": i for i in range(15)}
    err = run_error("${ctx.vars.nope}", FakeScope(ctx))
    listed = ", ".join(f"k{i:02}" for i in range(10))
    assert f"ctx.vars.nope: no such key (available: {listed}, ... (5 more))" in err.detail


def test_missing_key_in_empty_mapping() -> None:
    ctx = make_ctx()
    ctx["vars"] = {}
    err = run_error("${ctx.vars.nope}", FakeScope(ctx))
    assert "ctx.vars.nope: no such key (the mapping is empty)" in err.detail


def test_missing_ctx_member() -> None:
    ctx = make_ctx()
    del ctx["step"]
    err = run_error("x${ctx.step}", FakeScope(ctx))
    assert "ctx.step: no such key" in err.detail
    assert err.column == 7


@pytest.mark.parametrize(
    ("text", "message", "column"),
    [
        ("${ctx.vars.a['b c'][3]}", "ctx.vars.a['b c'][3]: index out of range (length 3)", 20),
        ("${ctx.vars.items[-4]}", "ctx.vars.items[-4]: index out of range (length 3)", 17),
        (
            "${ctx.vars.a['b c'].x}",
            "ctx.vars.a['b c'].x: ctx.vars.a['b c'] is a list, not a mapping",
            20,
        ),
        ("${ctx.vars.items['x']}", "ctx.vars.items.x: ctx.vars.items is a list, not a mapping", 17),
        ("${ctx.vars.a[0]}", "ctx.vars.a[0]: a mapping needs a string key, got a number", 13),
        (
            "${ctx.vars.a[ctx.vars.items]}",
            "ctx.vars.a[<list>]: a mapping needs a string key, got a list",
            13,
        ),
        (
            "${ctx.vars.items[ctx.vars.which]}",
            "ctx.vars.items.k1: ctx.vars.items is a list, not a mapping",
            17,
        ),
        (
            "${ctx.vars.items[ctx.vars.no]}",
            "ctx.vars.items[false]: a list needs an integer index, got a boolean",
            17,
        ),
        (
            "${ctx.vars.keys[ctx.vars.limit]}",
            "ctx.vars.keys[null]: a mapping needs a string key, got null",
            16,
        ),
        (
            "${ctx.vars.text[0]}",
            "ctx.vars.text[0]: ctx.vars.text is a string, not a list or mapping",
            16,
        ),
        ("${ctx.vars.zero.x}", "ctx.vars.zero.x: ctx.vars.zero is a number, not a mapping", 16),
        ("${ctx.vars.limit.x}", "ctx.vars.limit.x: ctx.vars.limit is null", 17),
        ("${ctx.vars.nested.x[0]}", "ctx.vars.nested.x[0]: ctx.vars.nested.x is null", 20),
        (
            "${ctx.vars.a['__class__']}",
            "ctx.vars.a['__class__']: no such key (available: b, b c)",
            13,
        ),
        ("${(ctx.vars.x ?? ctx.vars.a).zz}", "(ctx.vars.x ?? ctx.vars.a).zz: no such key", 29),
    ],
)
def test_runtime_errors(text: str, message: str, column: int) -> None:
    err = run_error(text)
    assert message in err.detail
    assert err.column == column


async def test_runtime_error_on_datasource_result() -> None:
    compiled = compile_template("${ctx.datasource('c', 'k').x}", source="s", path="$.p")
    with pytest.raises(ExpressionError) as info:
        await compiled.evaluate(FakeScope(store={("c", "k"): {"y": 1}}))
    assert "ctx.datasource('c', 'k').x: no such key (available: y)" in info.value.detail
    assert (info.value.source, info.value.path, info.value.column) == ("s", "$.p", 27)


async def test_runtime_errors_in_compile_value_carry_the_json_path() -> None:
    compiled = compile_value(
        {"steps": [{"inputs": {"a": 1}}, {"inputs": {"url": "x/${ctx.vars.nope}"}}]},
        source="flow.json",
    )
    with pytest.raises(ExpressionError) as info:
        await compiled.evaluate(FakeScope())
    assert info.value.source == "flow.json"
    assert info.value.path == "$.steps[1].inputs.url"
    assert info.value.expression == "x/${ctx.vars.nope}"


def test_value_that_cannot_be_text() -> None:
    ctx = make_ctx()
    ctx["vars"]["obj"] = {1, 2}
    err = run_error("x=${ctx.vars.obj}", FakeScope(ctx))
    assert "cannot insert a set into text" in err.detail
    assert err.column == 3


# -- compile errors ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message", "column"),
    [
        ("${ctx.vars[0}", "expected ']' but found '}'", 13),
        ("${(ctx.vars}", "expected ')' but found '}'", 12),
        ("${ctx.vars.a b}", "expected '}' or an operator but found name 'b'", 14),
        ("${ctx.vars.}", "expected a name after '.' but found '}'", 12),
        ("${ctx.vars.0}", "expected a name after '.' but found number 0", 12),
        ("${}", "empty expression", 1),
        ("x ${  }", "empty expression", 3),
        ("${ctx.vars.a ?? }", "expected an expression but found '}'", 17),
        ("${ctx.vars[]}", "expected an expression but found ']'", 12),
        ("${ctx.vars.a", "unterminated expression: expected '}'", 1),
        ("ab${ctx.vars['x", "unterminated string: expected closing '", 14),
        ('${"abc}', 'unterminated string: expected closing "', 3),
        ("${'abc\\", "unterminated string: expected closing '", 3),
        ("${'a\\qb'}", "invalid escape '\\q'", 5),
        ("${foo}", "unknown name 'foo': expected ctx or stepName", 3),
        ("${ Ctx.vars }", "unknown name 'Ctx': expected ctx or stepName", 4),
        (
            "${ctx.foo}",
            "unknown member ctx.foo: expected one of request, vars, workflow, timestamp, "
            "date, datasource, idempotency_key, step, item, index",
            7,
        ),
        ("${ctx}", "ctx must be followed by a member: ctx.request, ctx.vars", 3),
        ("${ctx['vars']}", "write the members of ctx as ctx.name, not ctx[...]", 6),
        ("${stepName.x}", "stepName is a string and has no members", 11),
        ("${stepName[0]}", "stepName is a string and cannot be indexed", 11),
        ("${__import__}", "names starting with __ are not allowed", 3),
        ("${ctx.vars.__dict__}", "names starting with __ are not allowed", 12),
        ("${ctx.datasource}", "ctx.datasource must be called: ctx.datasource(name, key)", 7),
        ("${ctx.datasource.x}", "ctx.datasource must be called", 7),
        ("${ctx.datasource['c']}", "ctx.datasource must be called", 7),
        ("${ctx.vars.x('a', 'b')}", "only ctx.datasource(name, key) can be called", 13),
        ("${stepName()}", "only ctx.datasource(name, key) can be called", 11),
        ("${ctx.datasource('a','b')('c','d')}", "only ctx.datasource(name, key) can be called", 26),
        ("${(ctx.datasource)('a', 'b')}", "ctx.datasource must be called", 8),
        ("${ctx.datasource('a')}", "ctx.datasource takes 2 arguments (name, key), got 1", 17),
        ("${ctx.datasource()}", "ctx.datasource takes 2 arguments (name, key), got 0", 17),
        (
            "${ctx.datasource('a', 'b', 'c')}",
            "ctx.datasource takes 2 arguments (name, key), got 3",
            17,
        ),
        ("${ctx.datasource('a' 'b')}", "expected ',' or ')' but found a string", 22),
        ("${ctx.datasource(1, 'b')}", "the datasource name must be a non-empty string", 17),
        ("${ctx.datasource('', 'b')}", "the datasource name must be a non-empty string", 17),
        ("${'abc'.x}", "a literal has no members", 8),
        ("${1[0]}", "a literal cannot be indexed", 4),
        ("${true(1, 2)}", "only ctx.datasource(name, key) can be called", 7),
        ("${ctx.vars[true]}", "an index must be a string or an integer", 11),
        ("${ctx.vars[1.5]}", "an index must be a string or an integer", 11),
        ("${ctx.vars[null]}", "an index must be a string or an integer", 11),
        ("${ctx.vars.a ? 1}", "unexpected character '?' (did you mean '??')", 14),
        ("${ {}.__class__ }", "unexpected character '{'", 4),
        ("${ctx.vars.a + 1}", "unexpected character '+'", 14),
        ("${ctx.vars[-x]}", "unexpected character '-'", 12),
        ("${ctx.vars@}", "unexpected character '@'", 11),
        ("${ctx.vars.é}", "unexpected character 'é'", 12),
        ("${01}", "invalid number '01'", 3),
        ("${1abc}", "invalid number '1abc'", 3),
        ("${1.}", "invalid number '1.'", 3),
        ("${1e999}", "number out of range '1e999'", 3),
        ("${" + "9" * 5000 + "}", "number too long", 3),
        ("${ ${x} }", "unexpected character '$'", 4),
    ],
)
def test_compile_errors(text: str, message: str, column: int) -> None:
    err = compile_error(text)
    assert err.detail.startswith(message), err.detail
    assert err.column == column
    assert f"(column {column})" in str(err)


def test_compile_error_in_compile_value_names_the_json_path() -> None:
    value = {"steps": [{"inputs": {"a b": [0, 1, 2, "${ctx.nope}"]}}]}
    with pytest.raises(ExpressionError) as info:
        compile_value(value, source="flow.json")
    assert info.value.path == '$.steps[0].inputs["a b"][3]'
    assert info.value.source == "flow.json"
    assert info.value.column == 7
    assert str(info.value).startswith('flow.json: $.steps[0].inputs["a b"][3]: unknown member')

    with pytest.raises(ExpressionError) as info:
        compile_value({"steps": [{}, {}, {"inputs": {"url": "${nope}"}}]})
    assert info.value.path == "$.steps[2].inputs.url"
    assert info.value.source == "<workflow>"


# -- limits ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("${" + "(" * 10_000 + "ctx.vars" + ")" * 10_000 + "}", "too many tokens"),
        ("${" + "(" * 100 + "ctx.vars" + ")" * 100 + "}", "nested too deeply (at most 32)"),
        ("${" + "(" * 20_000, "too many tokens"),
        ("${" + "(" * 1000, "unterminated expression: expected '}'"),
        ("${" + "(" * 1000 + "}", "nested too deeply"),
        ("${ctx.vars" + "[" * 10_000, "too many tokens"),
        ("${ctx.vars" + "[ctx.vars" * 100 + "}", "nested too deeply"),
        ("${ctx.vars" + "[ctx.vars" * 40 + "]" * 40 + "}", "nested too deeply"),
        ("${" + "'${" * 10_000, "nested too deeply"),
        ("${" + "'${" * 40 + "1" + "}'" * 40 + "}", "nested too deeply"),
        ("${" + "ctx.datasource('a', " * 40 + "1" + ")" * 40 + "}", "nested too deeply"),
        ("${ctx.vars" + ".a" * 6000 + "}", "too many tokens (at most 10000)"),
        ("${ctx.vars.a}" * 4000, "too many tokens"),
        ("${ctx.vars.a}" + "x" * 70_000, "template too long (70013 bytes, at most 65536)"),
        ("${ctx.vars.a}" + "é" * 33_000, "template too long"),
    ],
)
def test_limits(text: str, message: str) -> None:
    started = time.perf_counter()
    err = compile_error(text)
    assert message in err.detail
    assert time.perf_counter() - started < 1.0


def test_limits_allow_reasonable_templates() -> None:
    assert static("${" + "(" * 30 + "ctx.vars.a.b" + ")" * 30 + "}") == 1
    assert static("${ctx.vars.a}" * 100) == '{"b":1,"b c":[10,20,30]}' * 100
    long_constant = "x" * 100_000
    assert compile_template(long_constant).evaluate_static(FakeScope()) == long_constant
    assert static("${ctx.vars.a.b}" + "x" * 60_000) == "1" + "x" * 60_000


def test_deeply_nested_value_is_an_error() -> None:
    value: Any = "${stepName}"
    for _ in range(500):
        value = [value]
    with pytest.raises(ExpressionError, match="value nested too deeply"):
        compile_value(value)
    cyclic: list[Any] = []
    cyclic.append(cyclic)
    with pytest.raises(ExpressionError, match="value nested too deeply"):
        compile_value(cyclic)


# -- security --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("${__import__('os').system('x')}", "names starting with __ are not allowed"),
        ("${ctx.__class__}", "names starting with __ are not allowed"),
        ("${ctx.vars.__class__.__mro__}", "names starting with __ are not allowed"),
        ("${ {}.__class__ }", "unexpected character '{'"),
        ("${ctx.request.id.__len__()}", "names starting with __ are not allowed"),
        ("${ctx.request.id.upper()}", "only ctx.datasource(name, key) can be called"),
        ("${ctx.vars.keys()}", "only ctx.datasource(name, key) can be called"),
        ("${''.join}", "a literal has no members"),
        ("${ctx.request.__getitem__('id')}", "names starting with __ are not allowed"),
        ("${os.system('x')}", "unknown name 'os'"),
        ("${eval('1')}", "unknown name 'eval'"),
        ("${lambda: 1}", "unexpected character ':'"),
        ("${lambda}", "unknown name 'lambda'"),
    ],
)
def test_security_compile_time(text: str, message: str) -> None:
    assert message in compile_error(text).detail


def test_security_dunder_string_key_is_a_plain_lookup() -> None:
    err = run_error("${ctx.vars['__class__']}")
    assert "ctx.vars['__class__']: no such key" in err.detail
    assert static("${ctx.vars['__class__'] ?? 'safe'}") == "safe"


@pytest.mark.parametrize(
    "text",
    ["${ctx.request.id.upper}", "${ctx.vars.text.real}", "${ctx.vars.items.append}"],
)
def test_security_members_never_reach_python_attributes(text: str) -> None:
    err = run_error(text)
    assert "not a mapping" in err.detail


def test_security_format_strings_stay_literal() -> None:
    for text in ["{0.__class__}", "{ctx.__class__}", "%(ctx)s", "{0.__init__.__globals__}"]:
        assert compile_template(text).evaluate_static(FakeScope()) == text
        assert static("${stepName}" + text) == "load" + text
        assert static("${'" + text + "'}") == text


def test_security_objects_with_attributes_are_not_walked() -> None:
    class Secret:
        token = "s3cr3t"

        def __getitem__(self, key: str) -> str:
            raise AssertionError("must not be indexed")

    ctx = make_ctx()
    ctx["vars"]["obj"] = Secret()
    err = run_error("${ctx.vars.obj.token}", FakeScope(ctx))
    assert "ctx.vars.obj is a Secret, not a mapping" in err.detail
    err = run_error("${ctx.vars.obj['token']}", FakeScope(ctx))
    assert "not a mapping" in err.detail
    err = run_error("${ctx.vars.obj[0]}", FakeScope(ctx))
    assert "not a list or mapping" in err.detail


def test_security_string_is_not_indexed() -> None:
    assert "not a list or mapping" in run_error("${ctx.vars.text[0]}").detail


# -- render_key --------------------------------------------------------------------------------


def test_render_key() -> None:
    scope = FakeScope()
    assert render_key(compile_template("${ctx.request.id}-${stepName}"), scope) == "r-42-load"
    assert render_key(compile_template("static"), scope) == "static"
    assert render_key(compile_template("${ctx.vars.a.b}"), scope) == "1"
    assert render_key(compile_template("${ctx.vars.limit}"), scope) == "null"
    assert render_key(compile_template("${ctx.vars.no}"), scope) == "false"
    assert render_key(compile_template("${ctx.vars.f}"), scope) == "2.5"
    assert render_key(compile_template("${ctx.vars.items}"), scope) == "[1,2,3]"
    assert render_key(compile_value({"k": "${stepName}"}), scope) == '{"k":"load"}'


def test_render_key_value_that_cannot_be_text() -> None:
    ctx = make_ctx()
    ctx["vars"]["obj"] = {1, 2}
    compiled = compile_template("${ctx.vars.obj}", source="s", path="$.key")
    with pytest.raises(ExpressionError, match="cannot use a set as a key") as info:
        render_key(compiled, FakeScope(ctx))
    assert (info.value.source, info.value.path) == ("s", "$.key")


# -- API shape -------------------------------------------------------------------------------


def test_public_api() -> None:
    import blokrun.expressions as expressions

    assert sorted(expressions.__all__) == [
        "Compiled",
        "Scope",
        "compile_template",
        "compile_value",
        "render_key",
    ]
    scope: Scope = FakeScope()
    compiled = compile_template("${stepName}")
    assert isinstance(compiled, Compiled)
    assert compiled.evaluate_static(scope) == "load"
    assert "Compiled" in repr(compiled)
    assert "constant" in repr(compile_template("x"))


# -- properties --------------------------------------------------------------------------------

FRAGMENTS = [
    "${",
    "$${",
    "}",
    "{",
    ".",
    "[",
    "]",
    "(",
    ")",
    ",",
    "'",
    '"',
    "\\",
    "ctx",
    "stepName",
    "vars",
    "a",
    "datasource",
    "request",
    "??",
    "?",
    "==",
    "!=",
    "<",
    ">=",
    "&&",
    "||",
    "!",
    "=",
    "0",
    "-1",
    "1.5",
    "1e9",
    "true",
    "null",
    " ",
    "__",
    "$",
    "-",
    "é",
    "\n",
]

fragment_text = st.lists(st.sampled_from(FRAGMENTS), max_size=40).map("".join)


def _compile_or_expression_error(text: str) -> Compiled | None:
    started = time.perf_counter()
    try:
        compiled = compile_template(text)
    except ExpressionError as err:
        assert err.expression == text
        assert err.column is None or 1 <= err.column <= len(text)
        compiled = None
    assert time.perf_counter() - started < 0.5
    if compiled is not None:
        with contextlib.suppress(ExpressionError):
            compiled.evaluate_static(FakeScope())
    return compiled


@settings(max_examples=300, deadline=500)
@given(st.text(max_size=200))
def test_property_arbitrary_text(text: str) -> None:
    _compile_or_expression_error(text)


@settings(max_examples=300, deadline=500)
@given(fragment_text)
def test_property_grammar_fragments(text: str) -> None:
    _compile_or_expression_error(text)


@settings(max_examples=300, deadline=500)
@given(st.lists(st.sampled_from(FRAGMENTS), max_size=30).map(lambda parts: "${" + "".join(parts)))
def test_property_expression_fragments(text: str) -> None:
    _compile_or_expression_error(text)


@settings(max_examples=200, deadline=500)
@given(st.text(alphabet=st.sampled_from(["$", "{", "}", "a", "\\", "'"]), max_size=30))
def test_property_escaped_text_round_trips(text: str) -> None:
    compiled = compile_template(text.replace("${", "$${"))
    assert compiled.is_constant
    assert compiled.evaluate_static(FakeScope()) == text


@settings(max_examples=200, deadline=500)
@given(st.text(max_size=50))
def test_property_string_literal_round_trips(text: str) -> None:
    escaped = (
        text.replace("\\", "\\\\").replace("'", "\\'").replace("$", "\\$").replace("\n", "\\n")
    )
    assert static("${'" + escaped + "'}") == text
