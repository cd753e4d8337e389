"""Hostile workflow files: any input gives a Workflow or a clean WorkflowError, quickly."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from blokrun.errors import WorkflowError
from blokrun.execution.workflows import load_workflow

json_leaf = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=30)
)
json_value = st.recursive(
    json_leaf,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=20,
)
fragments = st.sampled_from(
    ["${", "}", "ctx.vars.", "ctx.datasource('a','b')", "'", "[", "(", "??", "$${", "stepName"]
)
step = st.fixed_dictionaries(
    {
        "name": st.text(max_size=12),
        "node": st.sampled_from(["set", "echo", "log", "sleep", "nope", "a.b:c", "x:"]),
    },
    optional={
        "inputs": st.dictionaries(
            st.text(max_size=8),
            st.one_of(json_value, st.lists(fragments, max_size=6).map("".join)),
            max_size=3,
        ),
        "depends_on": st.lists(st.text(max_size=6), max_size=3),
        "persistence": st.dictionaries(
            st.sampled_from(["enabled", "target", "key", "ttl", "bogus"]), json_leaf, max_size=3
        ),
        "retry": st.dictionaries(
            st.sampled_from(["attempts", "delay", "jitter", "on"]), json_leaf, max_size=2
        ),
        "timeout": json_leaf,
        "type": st.sampled_from(["module", "builtin", "other"]),
    },
)
document = st.one_of(
    json_value,
    st.fixed_dictionaries(
        {"name": st.text(max_size=10), "steps": st.lists(step, max_size=4)},
        optional={
            "datasources": st.lists(st.text(max_size=6), max_size=2),
            "persistence": st.dictionaries(
                st.sampled_from(["enabled", "autoSave", "keyPattern", "targets", "ttl"]),
                json_value,
                max_size=3,
            ),
            "version": json_leaf,
        },
    ),
)


@settings(max_examples=400, deadline=2000, suppress_health_check=[HealthCheck.too_slow])
@given(document)
def test_any_document_loads_or_fails_cleanly(doc: Any) -> None:
    try:
        load_workflow(doc, available_datasources=["default", "a"]) if isinstance(
            doc, dict
        ) else None
    except WorkflowError:
        pass


@settings(max_examples=200, deadline=2000)
@given(st.binary(max_size=300))
def test_any_file_bytes_load_or_fail_cleanly(
    tmp_path_factory: pytest.TempPathFactory, raw: bytes
) -> None:
    path = tmp_path_factory.mktemp("wf") / "wf.json"
    path.write_bytes(raw)
    try:
        load_workflow(path)
    except WorkflowError:
        pass


@pytest.mark.parametrize("depth", [100, 10_000])
def test_deep_nesting_is_refused_quickly(tmp_path: Path, depth: int) -> None:
    path = tmp_path / "deep.json"
    inputs = "[" * depth + "]" * depth
    path.write_text(
        '{"name": "d", "steps": [{"name": "a", "node": "echo", "inputs": {"x": ' + inputs + "}}]}"
    )
    started = time.monotonic()
    try:
        load_workflow(path)
    except WorkflowError as exc:
        assert "deep" in str(exc).lower() or "nest" in str(exc).lower() or "JSON" in str(exc)
    assert time.monotonic() - started < 5


def test_a_huge_file_is_refused_before_parsing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from blokrun.spec import loader

    monkeypatch.setattr(loader, "MAX_WORKFLOW_BYTES", 1000)
    path = tmp_path / "big.json"
    path.write_text(
        json.dumps(
            {"name": "b", "steps": [{"name": "a", "node": "echo", "inputs": {"s": "x" * 5000}}]}
        )
    )
    with pytest.raises(WorkflowError, match="expected at most 1000"):
        load_workflow(path)


def test_long_strings_and_many_steps_load(tmp_path: Path) -> None:
    steps = [
        {"name": f"s{i}", "node": "echo", "inputs": {"t": "y" * 10_000 + "${ctx.request.id}"}}
        for i in range(500)
    ]
    wf = load_workflow({"name": "many", "steps": steps})
    assert len(wf.steps) == 500


@pytest.mark.parametrize(
    "expression",
    [
        "${__import__('os').system('echo pwned')}",
        "${ctx.__class__}",
        "${ctx.vars.__class__.__mro__}",
        "${ {}.__class__ }",
        "${ctx.request.id.__len__()}",
        "${open('/etc/passwd')}",
        "${ctx.datasource.__globals__}",
    ],
)
def test_expressions_cannot_reach_python(expression: str) -> None:
    with pytest.raises(WorkflowError):
        load_workflow(
            {"name": "x", "steps": [{"name": "a", "node": "echo", "inputs": {"v": expression}}]}
        )
