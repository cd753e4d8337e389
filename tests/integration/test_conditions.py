"""Conditions (``when``) and choices (first matching branch): what runs, what is recorded
as skipped, what a resume does after a failure inside a branch, and load-time mistakes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from blokrun import Runner, StepFailed, WorkflowError
from blokrun.config import DatasourceSettings
from blokrun.datasources import Datasource, build_datasource
from tests.integration import wfnodes

NODE = "tests.integration.wfnodes"


def mem() -> Datasource:
    return build_datasource(DatasourceSettings(name="default", type="memory"))


def fs(root: Path) -> Datasource:
    return build_datasource(DatasourceSettings(name="default", type="filesystem", path=str(root)))


def add(name: str, n: int = 1, **extra: Any) -> dict[str, Any]:
    return {"name": name, "node": f"{NODE}:add", "inputs": {"n": n}, **extra}


def calls(rid: str) -> list[str]:
    return [step for r, step in wfnodes.CALLS if r == rid]


ORDER = {
    "name": "order",
    "version": "1",
    "steps": [
        add("load", 0),
        add("audit", 1, when="${ctx.vars.amount > 100}"),
        {
            "name": "route",
            "choice": [
                {
                    "when": "${ctx.vars.amount >= 1000}",
                    "label": "huge",
                    "steps": [add("approve", 10), add("ship-freight", 100)],
                },
                {
                    "when": "${ctx.vars.country == 'NL'}",
                    "label": "domestic",
                    "steps": [add("ship-post", 1000)],
                },
                {"steps": [add("ship-courier", 10000)]},
            ],
        },
        add("invoice", 100000),
    ],
}


@pytest.mark.parametrize(
    ("payload", "ran", "total", "branch"),
    [
        ({"amount": 50, "country": "NL"}, ["load", "ship-post", "invoice"], 101000, 1),
        (
            {"amount": 5000, "country": "NL"},
            ["load", "audit", "approve", "ship-freight", "invoice"],
            100111,
            0,
        ),
        ({"amount": 200, "country": "BE"}, ["load", "audit", "ship-courier", "invoice"], 110001, 2),
    ],
)
async def test_the_first_matching_branch_runs_and_the_rest_is_skipped(
    payload: dict[str, Any], ran: list[str], total: int, branch: int
) -> None:
    rid = f"o-{payload['amount']}"
    async with Runner([mem()]) as runner:
        result = await runner.run(ORDER, payload, request_id=rid)
        info = await runner.inspect(rid)
    assert result.status == "completed"
    assert calls(rid) == ran
    assert result.vars["total"] == total
    assert result.vars["route"]["branch"] == branch
    all_steps = ["load", "audit", "route", "approve", "ship-freight", "ship-post"]
    all_steps += ["ship-courier", "invoice"]
    by_step = {c.step: c.status for c in info.checkpoints}
    assert set(by_step) == set(all_steps)  # every step recorded, skipped ones too
    for name in all_steps:
        expected = "completed" if name in ran or name == "route" else "skipped"
        assert by_step[name] == expected, name
        if expected == "skipped":
            assert name not in result.vars  # a skipped step has no output


async def test_a_resume_after_a_failure_in_a_branch_keeps_the_decision(tmp_path: Path) -> None:
    """The choice is recorded: a resume continues in the chosen branch even when the
    condition would now choose another (here the vars it read were edited)."""
    wf = {
        "name": "decide",
        "steps": [
            {"name": "init", "node": "set", "inputs": {"mode": "fast"}},
            {
                "name": "route",
                "choice": [
                    {"when": "${ctx.vars.mode == 'fast'}", "steps": [add("f1"), add("f2")]},
                    {"steps": [add("slow")]},
                ],
            },
            add("end"),
        ],
    }
    wfnodes.FAIL_AT.add("f2")
    async with Runner([fs(tmp_path)]) as runner:
        with pytest.raises(StepFailed, match="f2"):
            await runner.run(wf, request_id="d-1")
        wfnodes.FAIL_AT.clear()
        result = await runner.resume("d-1", set_vars={"mode": "slow"})
    assert result.status == "completed"
    assert calls("d-1") == ["f1", "f2", "f2", "end"]  # f1 not again; slow never
    assert result.vars["mode"] == "slow"
    assert result.vars["route"] == {"branch": 0, "label": None}


async def test_skipped_steps_are_not_evaluated_again_on_resume(tmp_path: Path) -> None:
    wf = {
        "name": "skips",
        "steps": [
            {"name": "init", "node": "set", "inputs": {"go": False}},
            add("maybe", when="${ctx.vars.go}"),
            add("boom"),
        ],
    }
    wfnodes.FAIL_AT.add("boom")
    async with Runner([fs(tmp_path)]) as runner:
        with pytest.raises(StepFailed):
            await runner.run(wf, request_id="s-1")
        wfnodes.FAIL_AT.clear()
        # "maybe" was skipped and recorded as skipped: setting go=true does not run it now
        result = await runner.resume("s-1", set_vars={"go": True})
        info = await runner.inspect("s-1")
    assert calls("s-1") == ["boom", "boom"]
    assert "maybe" not in result.vars
    # skipped, then the version of it holding the edited vars the resume started from
    assert [c.status for c in info.checkpoints if c.step == "maybe"] == ["skipped", "edited"]


async def test_a_when_reading_a_skipped_step_needs_a_default() -> None:
    wf: dict[str, Any] = {
        "name": "reads-skipped",
        "steps": [
            add("a", when=False),
            add("b", when="${ctx.vars.a.seen_total > 0}"),
        ],
    }
    async with Runner([mem()]) as runner:
        with pytest.raises(StepFailed, match=r"ctx\.vars\.a: no such key"):
            await runner.run(wf, request_id="rs-1")
        wf["steps"][1]["when"] = "${(ctx.vars.a.seen_total ?? 0) > 0}"
        wf["name"] = "reads-skipped-2"
        result = await runner.run(wf, request_id="rs-2")
    assert result.status == "completed"
    assert calls("rs-2") == []


@pytest.mark.parametrize(
    ("when", "message"),
    [
        ("${ctx.vars.n}", "expected a boolean, got 3"),
        ("n=${ctx.vars.n > 1}", "expected a boolean, got 'n=true'"),
    ],
)
async def test_a_when_that_is_not_a_boolean_fails_the_step_naming_its_path(
    when: str, message: str
) -> None:
    wf = {"name": "nb", "steps": [add("a"), add("b", when=when)]}
    async with Runner([mem()]) as runner:
        with pytest.raises(StepFailed) as info:
            await runner.run(wf, {"n": 3}, request_id="nb-1")
    assert message in str(info.value)
    assert "$.steps[1].when" in str(info.value)
    assert info.value.step == "b"


async def test_a_choice_without_match_or_default_fails() -> None:
    wf = {
        "name": "nomatch",
        "steps": [
            {"name": "route", "choice": [{"when": "${1 > 2}", "steps": [add("x")]}]},
            add("after"),
        ],
    }
    async with Runner([mem()]) as runner:
        with pytest.raises(StepFailed, match="no branch of the choice matched"):
            await runner.run(wf, request_id="nm-1")
    assert calls("nm-1") == []


async def test_nested_choices_and_a_join_by_depends_on() -> None:
    wf = {
        "name": "nested",
        "steps": [
            {
                "name": "outer",
                "choice": [
                    {
                        "when": "${ctx.vars.a}",
                        "steps": [
                            {
                                "name": "inner",
                                "choice": [
                                    {"when": "${ctx.vars.b}", "steps": [add("ab")]},
                                    {"steps": [add("a-only")]},
                                ],
                            },
                            add("a-tail"),
                        ],
                    },
                    {"steps": [add("not-a")]},
                ],
            },
            add("side", depends_on=[]),
            add("join", depends_on=["outer", "side"]),
        ],
    }
    cases = {
        (True, True): ["ab", "a-tail"],
        (True, False): ["a-only", "a-tail"],
        (False, True): ["not-a"],
        (False, False): ["not-a"],
    }
    async with Runner([mem()]) as runner:
        for (a, b), expected in cases.items():
            rid = f"n-{a}-{b}"
            result = await runner.run(wf, {"a": a, "b": b}, request_id=rid)
            assert result.status == "completed"
            ran = calls(rid)
            assert sorted(ran) == sorted([*expected, "side", "join"]), rid
            assert ran[-1] == "join"  # the join waits for the whole choice and "side"


# -- load-time mistakes, each with its JSON path ------------------------------------------


def load_error(tmp_path: Path, document: dict[str, Any]) -> WorkflowError:
    from blokrun.execution.workflows import load_workflow

    path = tmp_path / "wf.json"
    path.write_bytes(orjson.dumps(document))
    with pytest.raises(WorkflowError) as info:
        load_workflow(path)
    return info.value


@pytest.mark.parametrize(
    ("steps", "at", "message"),
    [
        ([{"name": "a"}], "$.steps[0]", "expected 'node' (the function to call), 'workflow'"),
        (
            [{"name": "a", "node": "echo", "choice": [{"steps": [add("b")]}]}],
            "$.steps[0].choice",
            "a step has one of 'node', 'workflow' or 'choice', not node and choice",
        ),
        ([{"name": "a", "choice": []}], "$.steps[0].choice", "expected at least one branch"),
        (
            [{"name": "a", "choice": [{"steps": []}]}],
            "$.steps[0].choice[0].steps",
            "expected at least one step",
        ),
        (
            [{"name": "a", "choice": [{"steps": [add("b")]}, {"steps": [add("c")]}]}],
            "$.steps[0].choice[0].when",
            "only the last branch may omit 'when'",
        ),
        (
            [{"name": "a", "inputs": {"x": 1}, "choice": [{"steps": [add("b")]}]}],
            "$.steps[0].inputs",
            "a choice takes no 'inputs'",
        ),
        (
            [add("a"), {"name": "r", "choice": [{"steps": [add("a")]}]}],
            "$.steps[1].choice[0].steps[0].name",
            "duplicate step name 'a' (also $.steps[0])",
        ),
        (
            [{"name": "r", "choice": [{"when": "${ctx.vars.x >}", "steps": [add("b")]}]}],
            "$.steps[0].choice[0].when",
            "expected an expression",
        ),
        ([add("a", when="yes")], "$.steps[0].when", "expected true, false or a ${...}"),
        ([add("a", when="${1 < 'a'}")], "$.steps[0].when", "cannot compare a number with a string"),
        (
            [add("a", when="${ctx.datasource('db', 'k')}")],
            "$.steps[0].when",
            "ctx.datasource('db', ...) but the workflow's datasources are: none",
        ),
        (
            [{"name": "r", "choice": [{"when": True, "steps": [add("b", colour=1)]}]}],
            "$.steps[0].choice[0].steps[0].colour",
            "unknown field 'colour'; expected one of: name, node",
        ),
        (
            [{"name": "r", "choice": [{"when": True, "then": [], "steps": [add("b")]}]}],
            "$.steps[0].choice[0].then",
            "unknown field 'then'; expected one of: steps, when, label",
        ),
        (
            [
                {
                    "name": "r",
                    "choice": [{"when": True, "steps": [add("b", depends_on=["after"])]}],
                },
                add("after"),
            ],
            "$.steps[0].choice[0].steps[0].depends_on",
            "dependency cycle",
        ),
    ],
)
def test_mistakes_are_caught_at_load_with_their_path(
    tmp_path: Path, steps: list[dict[str, Any]], at: str, message: str
) -> None:
    err = load_error(tmp_path, {"name": "bad", "steps": steps})
    if message == "dependency cycle":  # reported where the walk met it: either end
        assert err.path in (at, "$.steps[1].depends_on"), str(err)
    else:
        assert err.path == at, str(err)
    assert message in str(err), str(err)


def test_choices_nested_too_deeply_are_refused(tmp_path: Path) -> None:
    step: dict[str, Any] = add("leaf")
    for depth in range(20):
        step = {"name": f"c{depth}", "choice": [{"steps": [step]}]}
    err = load_error(tmp_path, {"name": "deep", "steps": [step]})
    assert "choices nested too deeply" in str(err)


# -- property: whatever the conditions, every step is recorded once, in a valid order ----


@settings(max_examples=40, deadline=None)
@given(
    conditions=st.lists(st.booleans(), min_size=3, max_size=3),
    pick=st.integers(0, 2),
)
async def test_property_each_step_runs_or_is_skipped_exactly_once(
    conditions: list[bool], pick: int
) -> None:
    wfnodes.reset()
    wf = {
        "name": "prop",
        "steps": [
            add("s0", when=conditions[0]),
            {
                "name": "route",
                "choice": [
                    {"when": f"${{ctx.vars.pick == {i}}}", "steps": [add(f"b{i}")]}
                    for i in range(2)
                ]
                + [{"steps": [add("b2", when=conditions[1])]}],
            },
            add("s1", when=conditions[2]),
        ],
    }
    async with Runner([mem()]) as runner:
        result = await runner.run(wf, {"pick": pick}, request_id="p")
        info = await runner.inspect("p")
    expected = [n for n, c in (("s0", conditions[0]),) if c]
    if pick < 2:
        expected.append(f"b{pick}")
    elif conditions[1]:
        expected.append("b2")
    expected += ["s1"] if conditions[2] else []
    assert calls("p") == expected
    steps = [c.step for c in info.checkpoints]
    assert sorted(steps) == sorted(["s0", "route", "b0", "b1", "b2", "s1"])
    assert steps.index("route") < steps.index("s1")
    assert result.vars["total"] == len(expected) if expected else "total" not in result.vars
