"""Loading a workflow: decode, validate, compile expressions, resolve nodes -- once.

Everything that can be wrong with a workflow file is reported here, before any step runs,
as a :class:`~blokrun.errors.WorkflowError` naming the file, the JSON path and what was
expected.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import msgspec
import orjson

from blokrun.errors import WorkflowError
from blokrun.expressions import Compiled, compile_template, compile_value
from blokrun.spec.graph import FlatStep, check_acyclic, dependencies, flatten
from blokrun.spec.model import BranchSpec, RetrySpec, StepSpec, WorkflowSpec
from blokrun.spec.nodes import NodeRef
from blokrun.spec.schedule import Schedule, compile_schedule
from blokrun.spec.schema import check_schema

if TYPE_CHECKING:
    from collections.abc import Callable, Collection, Sequence

    from blokrun.spec.nodes import NodeResolver
    from blokrun.types import Durability

__all__ = [
    "MAX_WORKFLOW_BYTES",
    "Branch",
    "MapPlan",
    "Publish",
    "Step",
    "Workflow",
    "load_workflow",
]

#: Most items of a map running at once.
MAX_MAP_CONCURRENCY = 10_000

#: How deep ``choice`` steps may nest inside each other's branches.
MAX_CHOICE_DEPTH = 16

MAX_WORKFLOW_BYTES = 16 * 1024 * 1024
_STEP_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_MSGSPEC_PATH_RE = re.compile(r" - at `(?:key` in `)?(\$[^`]*)`$")
_UNKNOWN_FIELD_RE = re.compile(r"^Object contains unknown field `([^`]*)`$")


@dataclass(frozen=True, slots=True)
class Publish:
    """A step's output also written under ``key`` on each of ``targets``."""

    targets: tuple[str, ...]
    key: Compiled
    ttl: float | None


@dataclass(frozen=True, slots=True)
class Branch:
    """A branch of a choice: taken when ``when`` (None: always, the default) holds."""

    when: Compiled | None
    label: str | None
    steps: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class MapPlan:
    """A map step's list (``items``, evaluated when the step starts) and its limits."""

    items: Compiled
    concurrency: int
    tolerate: int


@dataclass(frozen=True, slots=True)
class Step:
    """A step of the flattened workflow (``index``: its position in it; ``at``: its JSON
    path). A ``choice`` has ``branches`` (its ``node`` is :data:`CHOICE`, never called).
    ``guard``: the (choice, branch) it belongs to -- skipped unless that branch was chosen."""

    index: int
    name: str
    spec: StepSpec
    node: NodeRef
    inputs: Compiled
    checkpoint: bool
    publish: Publish | None
    ttl: float | None
    depends_on: tuple[str, ...] = ()
    retry: RetrySpec | None = None
    timeout: float | None = None
    at: str = ""
    when: Compiled | None = None
    guard: tuple[str, int] | None = None
    branches: tuple[Branch, ...] = ()
    map: MapPlan | None = None
    #: a sub-workflow step: the child workflow, run as a run of its own
    child: Workflow | None = None


@dataclass(frozen=True, slots=True, eq=False)
class Workflow:
    """A validated, compiled workflow. Immutable; safe to run many times at once."""

    name: str
    version: str
    description: str
    source: str
    document: dict[str, Any]
    definition_hash: str
    datasources: tuple[str, ...]
    persistence_enabled: bool
    targets: tuple[str, ...]
    key_pattern: str
    key_template: Compiled
    ttl: float | None
    steps: tuple[Step, ...]
    durability: Durability | None = None  # None: the runner's default
    auto_save: bool = True  # every step checkpointed unless it says otherwise
    #: when workers run it by themselves (``schedule``), if ever
    schedule: Schedule | None = None
    #: folders module nodes were looked for in (besides ``sys.path``), absolute
    search_paths: tuple[str, ...] = ()
    #: the steps' names in order (computed once: every run and resume asks)
    step_names: tuple[str, ...] = field(init=False, repr=False)
    #: whether every step waits exactly for the one before it (the default)
    linear: bool = field(init=False, repr=False)
    #: the steps whose progress is stored apart from checkpoints, in order: map steps
    #: (their items' results) and durable timers (their wake-up times)
    progress_steps: tuple[Step, ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        steps = self.steps
        object.__setattr__(self, "step_names", tuple(s.name for s in steps))
        linear = all(
            s.depends_on == ((steps[i - 1].name,) if i else ()) for i, s in enumerate(steps)
        )
        object.__setattr__(self, "linear", linear)
        progress = tuple(s for s in steps if s.map is not None or s.node.timer)
        object.__setattr__(self, "progress_steps", progress)

    def step(self, name: str) -> Step:
        for step in self.steps:
            if step.name == name:
                return step
        raise KeyError(name)


def definition_hash(document: Mapping[str, Any]) -> str:
    """sha256 of the canonical JSON of a workflow document (key order does not matter)."""
    return hashlib.sha256(orjson.dumps(document, option=orjson.OPT_SORT_KEYS)).hexdigest()


def _field_names(cls: type[msgspec.Struct]) -> list[str]:
    return list(cls.__struct_encode_fields__)


def _translate_validation(exc: msgspec.ValidationError, source: str) -> WorkflowError:
    message = str(exc)
    path = "$"
    if (m := _MSGSPEC_PATH_RE.search(message)) is not None:
        path = m.group(1)
        message = message[: m.start()]
    if (m := _UNKNOWN_FIELD_RE.match(message)) is not None:
        field_name = m.group(1)
        parent = path
        allowed: list[str] = []
        if re.search(r"\.steps\[\d+\]$", parent):
            allowed = _field_names(StepSpec)
        elif re.search(r"\.choice\[\d+\]$", parent):
            allowed = _field_names(BranchSpec)
        elif parent == "$":
            allowed = _field_names(WorkflowSpec)
        elif parent == "$.persistence":
            from blokrun.spec.model import PersistenceSpec

            allowed = _field_names(PersistenceSpec)
        elif parent.endswith(".persistence"):
            from blokrun.spec.model import StepPersistenceSpec

            allowed = _field_names(StepPersistenceSpec)
        hint = f"; expected one of: {', '.join(allowed)}" if allowed else ""
        return WorkflowError(
            f"unknown field {field_name!r}{hint}", source=source, path=f"{path}.{field_name}"
        )
    message = message[0].lower() + message[1:] if message else message
    message = message.replace("`", "'")
    if path == "$.persistence.durability" and message.startswith("invalid enum value"):
        from blokrun.spec.model import DURABILITIES

        message += f"; expected one of: {', '.join(DURABILITIES)}"
    return WorkflowError(message, source=source, path=path)


def _read(
    source: str | Path | Mapping[str, Any], name: str | None
) -> tuple[dict[str, Any], str, Path | None]:
    if isinstance(source, Mapping):
        return dict(source), name or "<dict>", None
    path = Path(source)
    name = str(path)
    try:
        size = path.stat().st_size
        if size > MAX_WORKFLOW_BYTES:
            raise WorkflowError(
                f"file is {size} bytes; expected at most {MAX_WORKFLOW_BYTES}",
                source=name,
                path=None,
            )
        raw = path.read_bytes()
    except FileNotFoundError:
        raise WorkflowError("file not found", source=name, path=None) from None
    except IsADirectoryError:
        raise WorkflowError(
            "is a directory, expected a workflow JSON file", source=name, path=None
        ) from None
    except OSError as exc:
        raise WorkflowError(f"cannot read: {exc.strerror or exc}", source=name, path=None) from None
    try:
        document = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise WorkflowError(
            f"invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}",
            source=name,
            path=None,
        ) from None
    if not isinstance(document, dict):
        raise WorkflowError(
            f"expected a JSON object at the top level, found {type(document).__name__}",
            source=name,
        )
    return document, name, path


def _positive(value: float | None, source: str, path: str) -> float | None:
    if value is not None and not (value > 0 and value != float("inf")):
        raise WorkflowError(
            f"expected a positive number of seconds, got {value!r}", source=source, path=path
        )
    return value


def _retry(spec: RetrySpec | None, source: str, at: str) -> RetrySpec | None:
    if spec is None:
        return None
    base = f"{at}.retry"
    if spec.attempts < 1 or spec.attempts > 1000:
        raise WorkflowError("attempts: expected 1 to 1000", source=source, path=f"{base}.attempts")
    for field_name in ("delay", "max_delay"):
        value = getattr(spec, field_name)
        if not (0 <= value < float("inf")):
            raise WorkflowError(
                f"{field_name}: expected a non-negative number of seconds",
                source=source,
                path=f"{base}.{field_name}",
            )
    if not 1 <= spec.backoff <= 100:
        raise WorkflowError(
            "backoff: expected a factor from 1 to 100", source=source, path=f"{base}.backoff"
        )
    if not 0 <= spec.jitter <= 1:
        raise WorkflowError(
            "jitter: expected a fraction from 0 to 1", source=source, path=f"{base}.jitter"
        )
    for j, name in enumerate(spec.on):
        if not name.isidentifier():
            raise WorkflowError(
                f"on: {name!r} is not an exception class name",
                source=source,
                path=f"{base}.on[{j}]",
            )
    return spec


def load_workflow(
    source: str | Path | Mapping[str, Any],
    *,
    nodes: NodeResolver,
    available_datasources: Collection[str] | None = None,
    default_targets: Sequence[str] = ("default",),
    search_paths: Sequence[str] = (),
    name: str | None = None,
    _stack: tuple[str, ...] = (),
) -> Workflow:
    """Load and validate a workflow file (or an already-parsed document).

    ``nodes`` resolves each step's node (see :mod:`blokrun.spec.nodes`).
    ``available_datasources``: the configured names; when given, every name the workflow
    uses must be among them. ``default_targets``: the checkpoint targets of a workflow that
    names none. ``search_paths``: folders to import ``module`` nodes from when they are not
    on ``sys.path`` (the workflow file's own folder is always tried). ``name``: what to call
    a document given as a mapping in messages (default ``<dict>``); when it is the path of
    a file, that file's folder is searched for modules too.
    """
    document, name, path = _read(source, name)
    try:
        canonical = orjson.dumps(document, option=orjson.OPT_SORT_KEYS)
    except orjson.JSONEncodeError as exc:
        raise WorkflowError(f"the workflow is not plain JSON: {exc}", source=name) from None
    document = orjson.loads(canonical)  # our own deep copy: the caller's dict can change
    if path is None and name and not name.startswith("<"):
        search_paths = [*search_paths, str(Path(name).resolve().parent)]
    try:
        spec = msgspec.convert(document, WorkflowSpec)
    except msgspec.ValidationError as exc:
        raise _translate_validation(exc, name) from None
    paths = [str(Path(p).resolve()) for p in search_paths]  # absolute: stored with the run
    if path is not None:
        paths.append(str(path.resolve().parent))
    configured = sorted(available_datasources) if available_datasources is not None else None
    check = _Checks(name, spec, configured, nodes, paths)
    check.children = _Children(
        nodes, available_datasources, default_targets, paths, (*_stack, _identity(path, name))
    )
    # Every independent problem is found in one pass (up to MAX_PROBLEMS): the head, the
    # targets, the key pattern and each step are checked even when an earlier one failed.
    check.attempt(check.head)
    targets = check.attempt(check.targets, default_targets)
    key_template = check.attempt(check.key_template)
    schedule = (
        check.attempt(compile_schedule, spec.schedule, spec.name, name)
        if spec.schedule is not None
        else None
    )
    flat = flatten(spec.steps)
    steps = [check.attempt(check.step, i, flat) for i in range(len(flat))]
    check.done()
    assert targets is not None and key_template is not None
    built = [s for s in steps if s is not None]
    check_acyclic({s.name: s.depends_on for s in built}, {s.name: s.at for s in built}, name)
    pers = spec.persistence
    return Workflow(
        name=spec.name,
        version=spec.version,
        description=spec.description,
        source=name,
        document=document,
        definition_hash=hashlib.sha256(canonical).hexdigest(),
        datasources=tuple(spec.datasources),
        persistence_enabled=pers.enabled,
        targets=targets if pers.enabled else (),
        key_pattern=pers.key_pattern,
        key_template=key_template,
        ttl=check.wf_ttl,
        steps=tuple(built),
        durability=pers.durability,
        auto_save=pers.auto_save,
        schedule=schedule,
        search_paths=tuple(paths),
    )


async def _decided_by_the_executor(ctx: Any, inputs: Any) -> Any:
    raise AssertionError("a choice is decided by the executor, not called")  # pragma: no cover


#: The node of a ``choice`` step (the executor evaluates its branches instead).
CHOICE = NodeRef("choice", _decided_by_the_executor, True, True, frozenset(), frozenset())


def _identity(path: Path | None, name: str) -> str:
    """What a workflow is, for finding cycles of sub-workflows: its file, or its name."""
    return str(path.resolve()) if path is not None else name


@dataclass(slots=True)
class _Children:
    """Loads a step's sub-workflow file: relative paths from the folders of the workflow
    that names it (its own first, then its search paths); a file that (indirectly) runs
    itself is refused."""

    nodes: NodeResolver
    available: Collection[str] | None
    default_targets: Sequence[str]
    paths: list[str]
    stack: tuple[str, ...]

    def load(self, file: str, at: str, source: str) -> Workflow:
        candidates = (
            [Path(file)] if Path(file).is_absolute() else [Path(base) / file for base in self.paths]
        )
        found = next((c for c in candidates if c.is_file()), None)
        if found is None:
            looked = ", ".join(str(c) for c in candidates) or file
            raise WorkflowError(f"sub-workflow {file!r} not found (looked at {looked})",
                                source=source, path=at)  # fmt: skip
        if str(found.resolve()) in self.stack:
            chain = " -> ".join([*self.stack, str(found.resolve())])
            raise WorkflowError(f"sub-workflows run each other in a cycle: {chain}",
                                source=source, path=at)  # fmt: skip
        try:
            return load_workflow(
                found,
                nodes=self.nodes,
                available_datasources=self.available,
                default_targets=self.default_targets,
                _stack=self.stack,
            )
        except WorkflowError as exc:
            raise WorkflowError(f"in sub-workflow {file!r}: {exc}", source=source, path=at) from exc


class _Constant:
    """The scope of a constant ``when`` (never looked at)."""

    def lookup_root(self, name: str) -> Any:
        raise AssertionError(name)  # pragma: no cover

    async def call_datasource(self, name: Any, key: Any) -> Any:
        raise AssertionError(name)  # pragma: no cover


_NO_SCOPE = _Constant()

#: At most this many problems are reported for one file.
MAX_PROBLEMS = 20

T = TypeVar("T")


class WorkflowProblems(WorkflowError):
    """Several independent problems in one workflow file; ``problems`` holds each (the first
    gives this error its source and path)."""

    def __init__(self, problems: Sequence[WorkflowError]) -> None:
        first = problems[0]
        more = "".join(f"\n  {p}" for p in problems[1:])
        super().__init__(
            f"{first.detail}\n{len(problems) - 1} more problem(s):{more}",
            source=first.source,
            path=first.path,
        )
        self.problems = tuple(problems)


class _Checks:
    """Every check of a parsed workflow, each raising the first problem with its JSON path."""

    def __init__(
        self,
        name: str,
        spec: WorkflowSpec,
        configured: list[str] | None,
        nodes: NodeResolver,
        paths: list[str],
    ) -> None:
        self.name = name
        self.spec = spec
        self.configured = configured
        self.nodes = nodes
        self.paths = paths
        self.seen: dict[str, str] = {}
        self.wf_ttl: float | None = None
        self.wf_targets: tuple[str, ...] = ()
        self.children: _Children
        self.problems: list[WorkflowError] = []

    def err(self, message: str, at: str) -> WorkflowError:
        return WorkflowError(message, source=self.name, path=at)

    def attempt(self, check: Callable[..., T], *args: Any) -> T | None:
        """``check(*args)``; a problem it raises is noted and ``None`` returned."""
        try:
            return check(*args)
        except WorkflowError as exc:
            self.problems.append(exc)
            if len(self.problems) >= MAX_PROBLEMS:
                raise WorkflowProblems(self.problems) from None
            return None

    def done(self) -> None:
        """Raise what was found: the one problem, or all of them together."""
        if len(self.problems) == 1:
            raise self.problems[0]
        if self.problems:
            raise WorkflowProblems(self.problems)

    def configured_ds(self, ds: str, at: str) -> None:
        if self.configured is not None and ds not in self.configured:
            raise self.err(
                f"datasource {ds!r} is not configured; configured: "
                f"{', '.join(self.configured) or 'none'}"
                " (set DATASOURCE_<NAME>_TYPE and friends)",
                at,
            )

    def head(self) -> None:
        spec = self.spec
        if not spec.name.strip():
            raise self.err("expected a non-empty workflow name", "$.name")
        if not spec.steps:
            raise self.err("expected at least one step", "$.steps")
        for i, ds in enumerate(spec.datasources):
            self.configured_ds(ds, f"$.datasources[{i}]")
            if spec.datasources.index(ds) != i:
                raise self.err(f"datasource {ds!r} listed twice", f"$.datasources[{i}]")

    def targets(self, default_targets: Sequence[str]) -> tuple[str, ...]:
        pers = self.spec.persistence
        targets = tuple(pers.targets) if pers.targets is not None else tuple(default_targets)
        if pers.enabled and not targets:
            raise self.err("expected at least one checkpoint target", "$.persistence.targets")
        for i, ds in enumerate(targets):
            named = pers.targets is not None
            self.configured_ds(
                ds, f"$.persistence.targets[{i}]" if named else "$.persistence.targets"
            )
        self.wf_targets = targets
        return targets

    def key_template(self) -> Compiled:
        pers = self.spec.persistence
        at = "$.persistence.keyPattern"
        key_template = compile_template(pers.key_pattern, source=self.name, path=at)
        pattern = pers.key_pattern.replace(" ", "").replace("$${", "")
        if "${stepName}" not in pattern or "${ctx.request.id}" not in pattern:
            raise self.err(
                "keyPattern must contain ${ctx.request.id} and ${stepName}, so every run and "
                "step gets its own key",
                at,
            )
        if key_template.uses_datasource:
            raise self.err("keyPattern cannot call ctx.datasource", at)
        self.wf_ttl = _positive(pers.ttl, self.name, "$.persistence.ttl")
        return key_template

    def step(self, i: int, flat: list[FlatStep]) -> Step:
        f = flat[i]
        s, at = f.spec, f.at
        self.step_name(s.name, at)
        self.shape(f)
        node = CHOICE
        if s.node is not None:
            node = self.nodes(s.node, s.type, source=self.name, path=at, search_paths=self.paths)
            self.builtin_inputs(node, s, at)
            self.await_schema(node, s, at)
        inputs = compile_value(s.inputs, source=self.name, path=f"{at}.inputs")
        self.uses_datasources(inputs, f"{at}.inputs")
        checkpoint = self.checkpoint(s, at)
        sp = s.persistence
        step_ttl = _positive(sp.ttl, self.name, f"{at}.persistence.ttl") if sp is not None else None
        ttl = step_ttl if step_ttl is not None else self.wf_ttl
        defaults = self.spec.defaults
        return Step(
            index=i,
            name=s.name,
            spec=s,
            node=node,
            inputs=inputs,
            checkpoint=checkpoint,
            publish=self.publish(s, at, ttl),
            ttl=ttl,
            depends_on=dependencies(flat, i, self.name),
            retry=_retry(s.retry or defaults.retry, self.name, at if s.retry else "$.defaults"),
            timeout=_positive(
                s.timeout if s.timeout is not None else defaults.timeout,
                self.name,
                f"{at}.timeout" if s.timeout is not None else "$.defaults.timeout",
            ),
            at=at,
            when=self.condition(s.when, f"{at}.when"),
            guard=f.guard,
            branches=tuple(
                self.branch(b, f"{at}.choice[{j}]", j == len(s.choice or ()) - 1)
                for j, b in enumerate(s.choice or ())
            ),
            map=self.map_plan(s, f"{at}.map"),
            child=self.children.load(s.workflow, f"{at}.workflow", self.name)
            if s.workflow is not None
            else None,
        )

    def map_plan(self, s: StepSpec, at: str) -> MapPlan | None:
        m = s.map
        if m is None:
            return None
        if s.node is None and s.workflow is None:
            raise self.err(
                "a map calls the step's 'node' (or runs its 'workflow') once per item", at
            )
        if not 1 <= m.concurrency <= MAX_MAP_CONCURRENCY:
            raise self.err(
                f"expected 1 to {MAX_MAP_CONCURRENCY} items at once", f"{at}.concurrency"
            )
        if m.tolerate < 0:
            raise self.err("expected a number of items, 0 or more", f"{at}.tolerate")
        items = compile_value(m.items, source=self.name, path=f"{at}.items")
        if isinstance(m.items, str) and items.is_constant:
            raise self.err("expected a list, or a ${...} expression giving one", f"{at}.items")
        self.uses_datasources(items, f"{at}.items")
        return MapPlan(items, m.concurrency, m.tolerate)

    def shape(self, f: FlatStep) -> None:
        """A step calls a node, runs a workflow or is a choice (one of them); a choice has no
        inputs."""
        s, at = f.spec, f.at
        kinds = [k for k in ("node", "workflow", "choice") if getattr(s, k) is not None]
        if not kinds:
            raise self.err(
                "expected 'node' (the function to call), 'workflow' (a file to run as a "
                "child run) or 'choice'",
                at,
            )
        if len(kinds) > 1:
            raise self.err(
                f"a step has one of 'node', 'workflow' or 'choice', not {' and '.join(kinds)}",
                f"{at}.{kinds[1]}",
            )
        if s.map is not None and s.choice is not None:
            raise self.err("a step has either 'map' or 'choice', not both", f"{at}.map")
        if s.choice is None:
            return
        for key in ("inputs", "retry", "timeout", "type"):
            if getattr(s, key):
                raise self.err(f"a choice takes no {key!r} (its branches' steps do)", f"{at}.{key}")
        if not s.choice:
            raise self.err("expected at least one branch", f"{at}.choice")
        if at.count(".choice[") >= MAX_CHOICE_DEPTH:
            raise self.err(f"choices nested too deeply (at most {MAX_CHOICE_DEPTH})", at)

    def branch(self, b: BranchSpec, at: str, last: bool) -> Branch:
        if b.when is None and not last:
            raise self.err("only the last branch may omit 'when' (it is the default)", f"{at}.when")
        if not b.steps:
            raise self.err("expected at least one step", f"{at}.steps")
        when = self.condition(b.when, f"{at}.when") if b.when is not None else None
        return Branch(when, b.label, tuple(x.name for x in b.steps))

    def condition(self, when: str | bool | None, at: str) -> Compiled | None:
        """A ``when``: true/false, or a ${...} expression (a boolean when evaluated)."""
        if when is None:
            return None
        compiled = compile_value(when, source=self.name, path=at)
        if compiled.is_constant:
            value = compiled.evaluate_static(_NO_SCOPE)
            if not isinstance(value, bool):
                raise self.err(f"expected true, false or a ${{...}} expression, got {value!r}", at)
        self.uses_datasources(compiled, at)
        return compiled

    def uses_datasources(self, compiled: Compiled, at: str) -> None:
        for ds in sorted(compiled.datasources):
            if ds not in self.spec.datasources:
                raise self.err(
                    f"ctx.datasource({ds!r}, ...) but the workflow's datasources are: "
                    f"{', '.join(self.spec.datasources) or 'none'} (add it to $.datasources)",
                    at,
                )

    def step_name(self, step: str, at: str) -> None:
        if not _STEP_NAME_RE.fullmatch(step):
            raise self.err(
                f"step name {step!r}: expected 1-128 characters from A-Z a-z 0-9 _ . -",
                f"{at}.name",
            )
        if step in self.seen:
            raise self.err(f"duplicate step name {step!r} (also {self.seen[step]})", f"{at}.name")
        self.seen[step] = at

    def builtin_inputs(self, node: NodeRef, s: StepSpec, at: str) -> None:
        if node.allowed_inputs is not None:
            for key in s.inputs:
                if key not in node.allowed_inputs:
                    raise self.err(
                        f"built-in {node.name!r} takes no input {key!r}; expected: "
                        f"{', '.join(sorted(node.allowed_inputs))}",
                        f"{at}.inputs.{key}",
                    )
        for key in sorted(node.required_inputs - set(s.inputs)):
            raise self.err(f"built-in {node.name!r} needs input {key!r}", f"{at}.inputs")

    def await_schema(self, node: NodeRef, s: StepSpec, at: str) -> None:
        if node.name != "await-input" or "schema" not in s.inputs:
            return
        if not isinstance(s.inputs["schema"], dict):
            raise self.err("expected a JSON schema object", f"{at}.inputs.schema")
        problems = check_schema(s.inputs["schema"], f"{at}.inputs.schema")
        if problems:
            where, _, what = problems[0].partition(": ")
            raise self.err(what, where)

    def checkpoint(self, s: StepSpec, at: str) -> bool:
        pers, sp = self.spec.persistence, s.persistence
        if sp is not None and sp.enabled and not pers.enabled:
            raise self.err(
                "checkpoint asked for this step but $.persistence.enabled is false",
                f"{at}.persistence.enabled",
            )
        return pers.enabled and (
            sp.enabled if sp is not None and sp.enabled is not None else pers.auto_save
        )

    def publish(self, s: StepSpec, at: str, ttl: float | None) -> Publish | None:
        """``persistence.key`` publishes the step's output under that key: on ``target``,
        or without one on the workflow's checkpoint targets (seed pattern 2)."""
        sp = s.persistence
        if sp is None or (sp.target is None and sp.key is None):
            return None
        if sp.key is None:
            raise self.err(
                "publishing a step's output on a target needs the key to store it under",
                f"{at}.persistence.key",
            )
        if sp.target is not None:
            self.configured_ds(sp.target, f"{at}.persistence.target")
            targets: tuple[str, ...] = (sp.target,)
        elif self.spec.persistence.enabled and self.wf_targets:
            targets = self.wf_targets
        else:
            raise self.err(
                "publishing without a target uses the workflow's checkpoint targets, and "
                "$.persistence.enabled is false: name a target",
                f"{at}.persistence.target",
            )
        key = compile_template(sp.key, source=self.name, path=f"{at}.persistence.key")
        if key.uses_datasource:
            raise self.err("a publish key cannot call ctx.datasource", f"{at}.persistence.key")
        return Publish(targets, key, ttl)
