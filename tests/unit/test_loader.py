"""Loading workflow files: every bad file is a WorkflowError naming the file, the JSON path
and what was expected -- never a traceback."""

from __future__ import annotations

import dataclasses
import json
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import blokrun.spec.loader as loader_module
from blokrun.errors import BlokrunError, ExpressionError, WorkflowError
from blokrun.execution.builtins import BUILTINS
from blokrun.execution.workflows import load_workflow
from blokrun.spec.loader import Workflow, definition_hash
from tests.unit import nodes_for_loader

WORKFLOW_FIELDS = ["name", "steps", "version", "description", "datasources", "persistence"]
STEP_FIELDS = ["name", "node", "type", "description", "inputs", "persistence"]
PERSISTENCE_FIELDS = ["enabled", "autoSave", "keyPattern", "targets", "ttl"]
STEP_PERSISTENCE_FIELDS = ["enabled", "target", "key", "ttl"]


def step(name: str = "a", node: str = "echo", **extra: Any) -> dict[str, Any]:
    return {"name": name, "node": node, **extra}


def doc(*steps: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"name": "wf", "steps": list(steps) or [step()], **extra}


Write = Callable[..., Path]
MakeModule = Callable[..., str]


@pytest.fixture
def write(tmp_path: Path) -> Write:
    def _write(document: Any, filename: str = "flow.json") -> Path:
        path = tmp_path / filename
        if isinstance(document, bytes):
            path.write_bytes(document)
        elif isinstance(document, str):
            path.write_text(document, encoding="utf-8")
        else:
            path.write_text(json.dumps(document, indent=2), encoding="utf-8")
        return path

    return _write


def load_error(path: Path | dict[str, Any], **kwargs: Any) -> WorkflowError:
    with pytest.raises(WorkflowError) as info:
        load_workflow(path, **kwargs)
    err = info.value
    if isinstance(path, Path):
        assert err.source == str(path)
        assert str(err).startswith(f"{path}: ")
    return err


def assert_file_error(err: WorkflowError, *expected: str) -> None:
    """An error about the file as a whole: no JSON path (older versions said ``$``)."""
    assert err.path in (None, "$")
    message = str(err)
    assert message.startswith(f"{err.source}: ")
    for part in expected:
        assert part in message, f"{part!r} not in {message!r}"


def assert_error(err: WorkflowError, at: str, *expected: str) -> None:
    assert err.path == at
    message = str(err)
    assert f": {at}: " in message
    for part in expected:
        assert part in message, f"{part!r} not in {message!r}"


@pytest.fixture
def unique_module(tmp_path: Path) -> Iterator[MakeModule]:
    """Write a uniquely named module into a folder; forget it afterwards."""
    names: list[str] = []

    def make(code: str, folder: Path | None = None) -> str:
        name = f"mynodes_{uuid.uuid4().hex}"
        (folder or tmp_path).mkdir(parents=True, exist_ok=True)
        (folder or tmp_path).joinpath(f"{name}.py").write_text(code, encoding="utf-8")
        names.append(name)
        return name

    saved_path = list(sys.path)
    yield make
    for name in names:
        sys.modules.pop(name, None)
    assert sys.path == saved_path, "load_workflow left its search paths on sys.path"


NODE_CODE = "async def run(ctx, inputs):\n    return inputs\n"


# --------------------------------------------------------------------------- happy path


def test_minimal_workflow_defaults(write: Write) -> None:
    path = write(doc(step("load", "echo", inputs={"x": 1}), step("save", "set")))
    wf = load_workflow(path)
    assert isinstance(wf, Workflow)
    assert wf.name == "wf"
    assert wf.version == "0"
    assert wf.source == str(path)
    assert wf.step_names == ("load", "save")
    assert wf.targets == ("default",)
    assert wf.persistence_enabled is True
    assert wf.datasources == ()
    assert wf.ttl is None
    assert wf.key_pattern == "${ctx.request.id}-${stepName}"
    assert [s.index for s in wf.steps] == [0, 1]
    assert all(s.checkpoint for s in wf.steps)
    assert all(s.publish is None for s in wf.steps)
    assert wf.step("save").node.builtin is True
    with pytest.raises(KeyError):
        wf.step("missing")


def test_mapping_source_is_named_dict() -> None:
    wf = load_workflow(doc())
    assert wf.source == "<dict>"
    err = load_error({"name": "wf", "steps": []})
    assert str(err) == "<dict>: $.steps: expected at least one step"


def test_mapping_source_with_name() -> None:
    err = load_error({"name": "wf", "steps": []}, name="<api request 7>")
    assert str(err).startswith("<api request 7>: $.steps:")


def test_workflow_error_is_a_blokrun_error() -> None:
    assert issubclass(WorkflowError, BlokrunError)
    assert issubclass(ExpressionError, WorkflowError)


# --------------------------------------------------------------------------- reading the file


def test_invalid_json_names_line_and_column(write: Write) -> None:
    path = write('{\n  "name": "wf",\n  "steps": [,]\n}\n')
    err = load_error(path)
    assert_file_error(err, "invalid JSON", "line 3", "column 13")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"", "empty"),
        (b"\xef\xbb\xbf{}", "BOM"),
        (b'{"name": "\xff"}', "UTF-8"),
        (b'{"name": "wf",}', "invalid JSON at line 1"),
    ],
)
def test_undecodable_files(write: Write, raw: bytes, expected: str) -> None:
    err = load_error(write(raw))
    assert_file_error(err, "invalid JSON", expected)


@pytest.mark.parametrize(("top", "found"), [("[1]", "list"), ('"x"', "str"), ("3", "int")])
def test_top_level_must_be_an_object(write: Write, top: str, found: str) -> None:
    err = load_error(write(top))
    assert_file_error(err, "expected a JSON object at the top level", f"found {found}")


def test_file_not_found(tmp_path: Path) -> None:
    missing = tmp_path / "nope.json"
    err = load_error(missing)
    assert_file_error(err, "file not found")


def test_directory(tmp_path: Path) -> None:
    err = load_error(tmp_path)
    assert_file_error(err, "is a directory", "expected a workflow JSON file")


def test_file_too_large(write: Write, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(doc())
    monkeypatch.setattr(loader_module, "MAX_WORKFLOW_BYTES", 10)
    err = load_error(path)
    size = path.stat().st_size
    assert_file_error(err, f"file is {size} bytes", "expected at most 10")


def test_str_source_is_a_path(write: Write) -> None:
    path = write(doc())
    assert load_workflow(str(path)).source == str(path)


# --------------------------------------------------------------------------- schema


@pytest.mark.parametrize(
    ("document", "at", "allowed"),
    [
        (doc(colour="red"), "$.colour", WORKFLOW_FIELDS),
        (doc(step("a"), step("b", colour="red")), "$.steps[1].colour", STEP_FIELDS),
        (doc(persistence={"colour": 1}), "$.persistence.colour", PERSISTENCE_FIELDS),
        (
            doc(step("a"), step("b", persistence={"colour": 1})),
            "$.steps[1].persistence.colour",
            STEP_PERSISTENCE_FIELDS,
        ),
        (doc(persistence={"auto_save": False}), "$.persistence.auto_save", PERSISTENCE_FIELDS),
    ],
)
def test_unknown_field_lists_allowed_fields(
    write: Write, document: dict[str, Any], at: str, allowed: list[str]
) -> None:
    err = load_error(write(document))
    field = at.rsplit(".", 1)[1]
    assert_error(err, at, f"unknown field {field!r}", "expected one of: " + ", ".join(allowed))


@pytest.mark.parametrize(
    ("document", "at", "expected"),
    [
        (doc(step(name=1)), "$.steps[0].name", "expected 'str', got 'int'"),  # type: ignore[arg-type]
        (doc(step(node=5)), "$.steps[0].node", "expected 'str | null', got 'int'"),  # type: ignore[arg-type]
        ({"name": ["wf"], "steps": [step()]}, "$.name", "expected 'str', got 'array'"),
        ({"name": "wf", "steps": "load"}, "$.steps", "expected 'array', got 'str'"),
        ({"name": "wf", "steps": ["load"]}, "$.steps[0]", "expected 'object', got 'str'"),
        (doc(step(inputs=[1])), "$.steps[0].inputs", "expected 'object', got 'array'"),
        (doc(step(type="python")), "$.steps[0].type", "invalid enum value 'python'"),
        (doc(persistence={"ttl": "1h"}), "$.persistence.ttl", "expected 'float | null'"),
        (doc(persistence={"enabled": "yes"}), "$.persistence.enabled", "expected 'bool'"),
        (doc(persistence={"targets": "x"}), "$.persistence.targets", "expected 'array | null'"),
        (doc(datasources="cache"), "$.datasources", "expected 'array', got 'str'"),
        (doc(step(persistence=True)), "$.steps[0].persistence", "expected 'object | null'"),
    ],
)
def test_wrong_type_names_path_and_expected_type(
    write: Write, document: dict[str, Any], at: str, expected: str
) -> None:
    err = load_error(write(document))
    assert_error(err, at, expected)
    assert "`" not in str(err)


@pytest.mark.parametrize(
    ("document", "at", "missing"),
    [
        ({"steps": [step()]}, "$", "name"),
        ({"name": "wf"}, "$", "steps"),
        (doc(step(), {"node": "echo"}), "$.steps[1]", "name"),
    ],
)
def test_missing_required_field(
    write: Write, document: dict[str, Any], at: str, missing: str
) -> None:
    err = load_error(write(document))
    assert_error(err, at, f"missing required field {missing!r}")


def test_empty_steps(write: Write) -> None:
    err = load_error(write({"name": "wf", "steps": []}))
    assert_error(err, "$.steps", "expected at least one step")


@pytest.mark.parametrize("name", ["", "   "])
def test_empty_name(write: Write, name: str) -> None:
    err = load_error(write({"name": name, "steps": [step()]}))
    assert_error(err, "$.name", "expected a non-empty workflow name")


# --------------------------------------------------------------------------- step names


def test_duplicate_step_name_mentions_both_indexes(write: Write) -> None:
    err = load_error(write(doc(step("load"), step("save"), step("load"))))
    assert_error(err, "$.steps[2].name", "duplicate step name 'load'", "$.steps[0]")


@pytest.mark.parametrize("name", ["a b", "", "-a", ".a", "a/b", "a${x}", "é", "a" * 129])
def test_invalid_step_name(write: Write, name: str) -> None:
    err = load_error(write(doc(step("ok"), step(name))))
    assert_error(err, "$.steps[1].name", "expected 1-128 characters from A-Z a-z 0-9 _ . -")


@pytest.mark.parametrize("name", ["a", "load-data", "v1.2_x", "_private", "9", "a" * 128])
def test_valid_step_names(name: str) -> None:
    assert load_workflow(doc(step(name))).step_names == (name,)


def test_step_name_with_trailing_newline_is_rejected(write: Write) -> None:
    err = load_error(write(doc(step("load\n"))))
    assert_error(err, "$.steps[0].name", "expected 1-128 characters")


# --------------------------------------------------------------------------- nodes


def test_unknown_builtin_lists_builtins(write: Write) -> None:
    err = load_error(write(doc(step(node="sned_email"))))
    assert_error(
        err,
        "$.steps[0].node",
        "unknown built-in node 'sned_email'",
        "expected one of: " + ", ".join(sorted(BUILTINS)),
        "package.module:function",
    )


def test_explicit_builtin_type_with_module_syntax(write: Write) -> None:
    err = load_error(write(doc(step(node="json:dumps", type="builtin"))))
    assert_error(err, "$.steps[0].node", "unknown built-in node 'json:dumps'")


def test_builtin_with_unknown_input(write: Write) -> None:
    path = write(doc(step(node="log", inputs={"message": "hi", "levle": "info"})))
    err = load_error(path)
    assert_error(
        err,
        "$.steps[0].inputs.levle",
        "built-in 'log' takes no input 'levle'",
        "expected: level, message",
    )


@pytest.mark.parametrize(("node", "required"), [("log", "message"), ("sleep", "seconds")])
def test_builtin_missing_required_input(write: Write, node: str, required: str) -> None:
    err = load_error(write(doc(step(node=node))))
    assert_error(err, "$.steps[0].inputs", f"built-in {node!r} needs input {required!r}")


def test_builtins_accepting_any_input() -> None:
    wf = load_workflow(doc(step("a", "set", inputs={"x": 1}), step("b", "echo", inputs={"y": 2})))
    assert [s.node.allowed_inputs for s in wf.steps] == [None, None]


@pytest.mark.parametrize("type_", [None, "module"])
def test_module_node_resolves(type_: str | None) -> None:
    extra = {"type": type_} if type_ else {}
    wf = load_workflow(
        doc(
            step("a", "tests.unit.nodes_for_loader:async_node", **extra),
            step("b", "tests.unit.nodes_for_loader:sync_node", **extra),
        )
    )
    a, b = wf.steps
    assert a.node.fn is nodes_for_loader.async_node
    assert a.node.is_async is True
    assert a.node.builtin is False
    assert b.node.fn is nodes_for_loader.sync_node
    assert b.node.is_async is False


def test_module_node_module_missing(write: Write) -> None:
    err = load_error(write(doc(step(node="nopkg_qq_zz.mod:fn"))))
    assert_error(
        err,
        "$.steps[0].node",
        "node 'nopkg_qq_zz.mod:fn'",
        "cannot import module 'nopkg_qq_zz.mod'",
        "ModuleNotFoundError",
        "nopkg_qq_zz",
    )


def test_module_node_submodule_missing(write: Write) -> None:
    err = load_error(write(doc(step(node="tests.unit.no_such_module_zz:fn"))))
    assert_error(err, "$.steps[0].node", "cannot import module 'tests.unit.no_such_module_zz'")


def test_module_node_without_attribute(write: Write) -> None:
    err = load_error(write(doc(step(node="tests.unit.nodes_for_loader:missing"))))
    assert_error(
        err,
        "$.steps[0].node",
        "node 'tests.unit.nodes_for_loader:missing'",
        "has no callable 'missing'",
    )


def test_module_node_attribute_not_callable(write: Write) -> None:
    err = load_error(write(doc(step(node="tests.unit.nodes_for_loader:NOT_CALLABLE"))))
    assert_error(err, "$.steps[0].node", "has no callable 'NOT_CALLABLE'")


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("raise RuntimeError('boom at import')\n", "RuntimeError: boom at import"),
        ("import missing_dependency_qq_zz\n", "No module named 'missing_dependency_qq_zz'"),
        ("def run(:\n", "SyntaxError"),
        ("1 / 0\n", "ZeroDivisionError"),
    ],
)
def test_module_node_raising_on_import(
    write: Write, unique_module: MakeModule, code: str, expected: str
) -> None:
    module = unique_module(code)
    err = load_error(write(doc(step(node=f"{module}:run"))))
    assert_error(
        err, "$.steps[0].node", f"node '{module}:run'", f"cannot import module {module!r}", expected
    )
    assert isinstance(err.__cause__, Exception)


def test_module_node_exiting_on_import(write: Write, unique_module: MakeModule) -> None:
    module = unique_module("import sys\nsys.exit(3)\n")
    path = write(doc(step(node=f"{module}:run")))
    try:
        err = load_error(path)
    except SystemExit:
        pytest.fail("SystemExit escaped load_workflow")
    assert_error(err, "$.steps[0].node", "SystemExit")


@pytest.mark.parametrize(
    "node", ["a.b", "a.b:", ":fn", "a..b:fn", "a.b:fn:x", "a-b:fn", "a.b:f n", "1a:fn"]
)
def test_module_node_syntax(write: Write, node: str) -> None:
    err = load_error(write(doc(step(node=node, type="module"))))
    assert_error(err, "$.steps[0].node", f"node {node!r}", "expected 'package.module:function'")


def test_module_found_beside_workflow_file(
    write: Write, unique_module: MakeModule, tmp_path: Path
) -> None:
    module = unique_module(NODE_CODE)
    wf = load_workflow(write(doc(step(node=f"{module}:run"))))
    assert wf.steps[0].node.fn is sys.modules[module].run
    assert wf.steps[0].node.is_async is True
    assert str(tmp_path) not in sys.path


def test_module_beside_file_named_for_mapping(unique_module: MakeModule, tmp_path: Path) -> None:
    module = unique_module(NODE_CODE)
    wf = load_workflow(doc(step(node=f"{module}:run")), name=str(tmp_path / "flow.json"))
    assert wf.source == str(tmp_path / "flow.json")
    assert wf.steps[0].node.fn is sys.modules[module].run


def test_module_found_on_search_paths(
    write: Write, unique_module: MakeModule, tmp_path: Path
) -> None:
    module = unique_module(NODE_CODE, folder=tmp_path / "lib")
    (tmp_path / "wf").mkdir()
    path = write(doc(step(node=f"{module}:run")), filename="wf/flow.json")
    err = load_error(path)
    assert_error(err, "$.steps[0].node", "ModuleNotFoundError")
    wf = load_workflow(path, search_paths=[str(tmp_path / "lib")])
    assert wf.steps[0].node.fn is sys.modules[module].run


def test_module_not_found_for_plain_mapping(unique_module: MakeModule) -> None:
    module = unique_module(NODE_CODE)
    err = load_error(doc(step(node=f"{module}:run")))
    assert_error(err, "$.steps[0].node", f"cannot import module {module!r}")


# --------------------------------------------------------------------------- datasources


def test_datasource_not_configured_lists_configured(write: Write) -> None:
    path = write(doc(datasources=["cache"]))
    err = load_error(path, available_datasources={"default", "archive"})
    assert_error(
        err,
        "$.datasources[0]",
        "datasource 'cache' is not configured",
        "configured: archive, default",
        "DATASOURCE_<NAME>_TYPE",
    )


def test_no_datasource_configured_at_all(write: Write) -> None:
    path = write(doc(datasources=["cache"], persistence={"enabled": False}))
    err = load_error(path, available_datasources=[])
    assert_error(err, "$.datasources[0]", "configured: none")


def test_datasources_unchecked_without_available_list() -> None:
    wf = load_workflow(doc(datasources=["cache"], persistence={"targets": ["archive"]}))
    assert wf.datasources == ("cache",)
    assert wf.targets == ("archive",)


def test_datasource_listed_twice(write: Write) -> None:
    err = load_error(write(doc(datasources=["cache", "db", "cache"])))
    assert_error(err, "$.datasources[2]", "datasource 'cache' listed twice")


def test_persistence_target_not_configured(write: Write) -> None:
    path = write(doc(persistence={"targets": ["default", "archive"]}))
    err = load_error(path, available_datasources=["default"])
    assert_error(
        err, "$.persistence.targets[1]", "datasource 'archive' is not configured", "default"
    )


def test_default_target_not_configured(write: Write) -> None:
    err = load_error(write(doc()), available_datasources=["cache"])
    assert_error(err, "$.persistence.targets", "datasource 'default' is not configured")


def test_publish_target_not_configured(write: Write) -> None:
    document = doc(step("a"), step("b", persistence={"target": "cache", "key": "k"}))
    err = load_error(write(document), available_datasources=["default"])
    assert_error(err, "$.steps[1].persistence.target", "datasource 'cache' is not configured")


def test_publish_needs_a_key(write: Write) -> None:
    err = load_error(write(doc(step(persistence={"target": "cache"}))))
    assert_error(err, "$.steps[0].persistence.key", "needs the key to store it under")


def test_publish_without_a_target_uses_the_workflows_targets() -> None:
    """Seed pattern 2: a step's persistence key alone publishes to the checkpoint targets."""
    wf = load_workflow(
        {
            "name": "wf",
            "persistence": {"targets": ["default", "cache"]},
            "steps": [step(persistence={"key": "out-${ctx.request.id}"})],
        },
        available_datasources=["default", "cache"],
    )
    publish = wf.steps[0].publish
    assert publish is not None and publish.targets == ("default", "cache")


def test_publish_without_a_target_needs_persistence(write: Write) -> None:
    document = {
        "name": "wf",
        "persistence": {"enabled": False},
        "steps": [step(persistence={"key": "out"})],
    }
    err = load_error(write(document))
    assert_error(err, "$.steps[0].persistence.target", "$.persistence.enabled is false")


def test_publish_is_compiled() -> None:
    wf = load_workflow(
        doc(step(persistence={"target": "cache", "key": "out-${ctx.request.id}", "ttl": 60})),
        available_datasources=["default", "cache"],
    )
    publish = wf.steps[0].publish
    assert publish is not None
    assert publish.targets == ("cache",)
    assert publish.ttl == 60


def test_publish_key_cannot_read_a_datasource(write: Write) -> None:
    key = "k-${ctx.datasource('cache', 'x')}"
    document = doc(step(persistence={"target": "cache", "key": key}), datasources=["cache"])
    err = load_error(write(document))
    assert_error(err, "$.steps[0].persistence.key", "cannot call ctx.datasource")


def test_ctx_datasource_not_in_workflow_datasources(write: Write) -> None:
    document = doc(
        step(inputs={"user": "${ctx.datasource('other', 'u-1')}"}), datasources=["cache"]
    )
    err = load_error(write(document), available_datasources=["default", "cache", "other"])
    assert_error(
        err,
        "$.steps[0].inputs",
        "ctx.datasource('other', ...)",
        "the workflow's datasources are: cache",
        "add it to $.datasources",
    )


def test_ctx_datasource_with_no_workflow_datasources(write: Write) -> None:
    err = load_error(write(doc(step(inputs={"u": "${ctx.datasource('other', 'k')}"}))))
    assert_error(err, "$.steps[0].inputs", "datasources are: none")


def test_ctx_datasource_listed_is_fine() -> None:
    wf = load_workflow(
        doc(step(inputs={"u": "${ctx.datasource('cache', 'k')}"}), datasources=["cache"])
    )
    assert wf.steps[0].inputs.datasources == frozenset({"cache"})


# --------------------------------------------------------------------------- expressions


def test_unparseable_expression_names_input_and_column(write: Write) -> None:
    path = write(doc(step("a"), step("b", inputs={"ok": 1, "rows": "${ctx.vars.}"})))
    with pytest.raises(ExpressionError) as info:
        load_workflow(path)
    err = info.value
    assert err.source == str(path)
    assert err.column == 12
    assert_error(err, "$.steps[1].inputs.rows", "(column 12)", "'${ctx.vars.}'")


def test_unparseable_key_pattern(write: Write) -> None:
    path = write(doc(persistence={"keyPattern": "${ctx.request.id}-${stepName"}))
    with pytest.raises(ExpressionError) as info:
        load_workflow(path)
    assert info.value.path == "$.persistence.keyPattern"
    assert str(info.value).startswith(f"{path}: $.persistence.keyPattern: ")


@pytest.mark.parametrize(
    "pattern", ["${ctx.request.id}", "${stepName}", "fixed-key", "${ctx.request.id}-stepName"]
)
def test_key_pattern_needs_request_id_and_step_name(write: Write, pattern: str) -> None:
    err = load_error(write(doc(persistence={"keyPattern": pattern})))
    assert_error(err, "$.persistence.keyPattern", "${ctx.request.id}", "${stepName}")


@pytest.mark.parametrize(
    "pattern",
    ["runs/${ctx.request.id}/${stepName}", "${ ctx.request.id }:${ stepName }"],
)
def test_key_pattern_accepted(pattern: str) -> None:
    assert load_workflow(doc(persistence={"keyPattern": pattern})).key_pattern == pattern


def test_key_pattern_with_escaped_step_name_is_rejected(write: Write) -> None:
    err = load_error(write(doc(persistence={"keyPattern": "${ctx.request.id}-$${stepName}"})))
    assert_error(err, "$.persistence.keyPattern", "${stepName}")


def test_key_pattern_cannot_read_a_datasource(write: Write) -> None:
    pattern = "${ctx.request.id}-${stepName}-${ctx.datasource('cache', 'x')}"
    err = load_error(write(doc(persistence={"keyPattern": pattern}, datasources=["cache"])))
    assert_error(err, "$.persistence.keyPattern", "cannot call ctx.datasource")


# --------------------------------------------------------------------------- persistence


@pytest.mark.parametrize("ttl", [-1, 0, -0.5])
def test_bad_workflow_ttl(write: Write, ttl: float) -> None:
    err = load_error(write(doc(persistence={"ttl": ttl})))
    assert_error(err, "$.persistence.ttl", "expected a positive number of seconds")


@pytest.mark.parametrize("ttl", [-1, 0])
def test_bad_step_ttl(write: Write, ttl: float) -> None:
    err = load_error(write(doc(step("a"), step("b", persistence={"ttl": ttl}))))
    assert_error(err, "$.steps[1].persistence.ttl", "expected a positive number of seconds")


def test_bad_ttl_type(write: Write) -> None:
    err = load_error(write(doc(persistence={"ttl": True})))
    assert_error(err, "$.persistence.ttl", "expected 'float | null', got 'bool'")


def test_ttls_inherit() -> None:
    wf = load_workflow(doc(step("a"), step("b", persistence={"ttl": 5}), persistence={"ttl": 60}))
    assert wf.ttl == 60
    assert [s.ttl for s in wf.steps] == [60, 5]


def test_persistence_disabled() -> None:
    wf = load_workflow(
        doc(step("a"), step("b", persistence={"enabled": False}), persistence={"enabled": False}),
        default_targets=(),
    )
    assert wf.persistence_enabled is False
    assert wf.targets == ()
    assert [s.checkpoint for s in wf.steps] == [False, False]


def test_persistence_disabled_ignores_configured_targets() -> None:
    wf = load_workflow(doc(persistence={"enabled": False, "targets": ["default"]}))
    assert wf.targets == ()
    assert wf.steps[0].checkpoint is False


def test_step_checkpoint_when_persistence_disabled(write: Write) -> None:
    path = write(doc(step("a", persistence={"enabled": True}), persistence={"enabled": False}))
    err = load_error(path)
    assert_error(err, "$.steps[0].persistence.enabled", "$.persistence.enabled is false")


def test_auto_save_off_checkpoints_only_opted_in_steps() -> None:
    wf = load_workflow(
        doc(
            step("a"),
            step("b", persistence={"enabled": True}),
            step("c", persistence={"ttl": 5}),
            persistence={"autoSave": False},
        )
    )
    assert [s.checkpoint for s in wf.steps] == [False, True, False]
    assert wf.targets == ("default",)


def test_step_can_opt_out_of_auto_save() -> None:
    wf = load_workflow(doc(step("a"), step("b", persistence={"enabled": False})))
    assert [s.checkpoint for s in wf.steps] == [True, False]


def test_default_targets_used_when_none_given() -> None:
    wf = load_workflow(doc(), default_targets=("fast", "slow"))
    assert wf.targets == ("fast", "slow")


def test_explicit_targets_win_over_defaults() -> None:
    wf = load_workflow(doc(persistence={"targets": ["b", "a"]}), default_targets=("x",))
    assert wf.targets == ("b", "a")


def test_enabled_without_targets_or_default(write: Write) -> None:
    err = load_error(write(doc()), default_targets=())
    assert_error(err, "$.persistence.targets", "expected at least one checkpoint target")


def test_enabled_with_empty_target_list(write: Write) -> None:
    err = load_error(write(doc(persistence={"targets": []})))
    assert_error(err, "$.persistence.targets", "expected at least one checkpoint target")


# --------------------------------------------------------------------------- hash, immutability


def test_definition_hash_ignores_key_order(write: Write) -> None:
    one = {
        "name": "wf",
        "steps": [{"name": "a", "node": "echo", "inputs": {"x": 1, "y": {"p": 1, "q": 2}}}],
        "persistence": {"ttl": 5, "autoSave": True},
    }
    two = {
        "persistence": {"autoSave": True, "ttl": 5},
        "steps": [{"inputs": {"y": {"q": 2, "p": 1}, "x": 1}, "node": "echo", "name": "a"}],
        "name": "wf",
    }
    h1 = load_workflow(write(one, "one.json")).definition_hash
    h2 = load_workflow(write(two, "two.json")).definition_hash
    assert h1 == h2 == load_workflow(one).definition_hash == definition_hash(two)
    assert len(h1) == 64


@pytest.mark.parametrize(
    "change",
    [
        lambda d: d["steps"][0]["inputs"].__setitem__("x", 2),
        lambda d: d["steps"][0].__setitem__("node", "set"),
        lambda d: d["steps"].append({"name": "b", "node": "echo"}),
        lambda d: d.__setitem__("version", "2"),
    ],
)
def test_definition_hash_changes_with_the_definition(change: Callable[[Any], None]) -> None:
    base = {"name": "wf", "steps": [{"name": "a", "node": "echo", "inputs": {"x": 1}}]}
    changed = json.loads(json.dumps(base))
    change(changed)
    assert load_workflow(base).definition_hash != load_workflow(changed).definition_hash


def test_workflow_is_immutable() -> None:
    wf = load_workflow(doc(step("a"), step("b")))
    with pytest.raises(dataclasses.FrozenInstanceError):
        wf.name = "other"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        wf.steps[0].checkpoint = False  # type: ignore[misc]
    with pytest.raises(AttributeError):
        wf.steps[0].spec.name = "x"  # type: ignore[misc]
    assert isinstance(wf.steps, tuple)
    assert isinstance(wf.targets, tuple)
    assert isinstance(wf.datasources, tuple)


def test_workflow_document_is_independent_of_the_callers_mapping() -> None:
    source = doc(step("a", inputs={"x": 1}))
    wf = load_workflow(source)
    source["steps"][0]["inputs"]["x"] = 2
    source["steps"].append(step("b"))
    assert wf.document["steps"] == [step("a", inputs={"x": 1})]
    assert definition_hash(wf.document) == wf.definition_hash


def test_mapping_with_non_json_value() -> None:
    err = load_error(doc(step(inputs={"tags": {"a", "b"}})))
    assert "set" in str(err)


def test_mapping_with_non_string_key() -> None:
    err = load_error(doc(step(inputs={1: "x"})))
    assert_error(err, "$", "not plain JSON")
    assert "key must be str" in str(err)
