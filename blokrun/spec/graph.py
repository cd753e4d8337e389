"""The shape of a workflow: nested steps flattened into one list, and who waits for whom.

A workflow's ``steps`` may hold compound steps (a ``choice`` has branches, each a list of
steps). The executor sees one flat list: every step, with its JSON path, the branch it
belongs to (its *guard*) and the steps it waits for. The rules:

- In a list, a step waits by default for the one before it; the first step of a branch
  waits for its ``choice``; the first step of the workflow waits for nothing.
- A ``choice`` is done when it and the chosen branch are: what comes after it in its list
  (or names it in ``depends_on``) waits for the choice step *and* the last step of each of
  its branches (a branch not taken is skipped, and a skipped step counts as done).
- Names are unique across the whole workflow, branches included; the graph is acyclic.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from blokrun.errors import WorkflowError

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from blokrun.spec.model import StepSpec

__all__ = ["FlatStep", "check_acyclic", "dependencies", "flatten", "step_definitions"]


@dataclass(frozen=True, slots=True)
class FlatStep:
    """One step of the flattened workflow, before its node and expressions are checked."""

    spec: StepSpec
    #: its JSON path: ``$.steps[2]``, ``$.steps[2].choice[0].steps[1]``
    at: str
    #: the ``(choice step, branch index)`` it runs under, or None at top level
    guard: tuple[str, int] | None
    #: what it waits for when it names no ``depends_on``
    default_deps: tuple[str, ...]
    #: what a step after it waits for: itself, or for a choice, it and its branches' ends
    exits: tuple[str, ...]


def flatten(steps: Sequence[StepSpec]) -> list[FlatStep]:
    """Every step, depth first, in the order the file lists them."""
    out: list[FlatStep] = []
    _flatten(steps, "$.steps", None, (), out)
    return out


def _flatten(
    steps: Sequence[StepSpec],
    prefix: str,
    guard: tuple[str, int] | None,
    before: tuple[str, ...],
    out: list[FlatStep],
) -> tuple[str, ...]:
    for i, spec in enumerate(steps):
        at = f"{prefix}[{i}]"
        position = len(out)
        out.append(FlatStep(spec, at, guard, before, (spec.name,)))
        exits: tuple[str, ...] = (spec.name,)
        for b, branch in enumerate(spec.choice or ()):
            tail = _flatten(
                branch.steps, f"{at}.choice[{b}].steps", (spec.name, b), (spec.name,), out
            )
            exits += tuple(name for name in tail if name not in exits)
        if len(exits) > 1:
            out[position] = FlatStep(spec, at, guard, before, exits)
        before = exits
    return before


def dependencies(flat: Sequence[FlatStep], i: int, source: str) -> tuple[str, ...]:
    """What step ``i`` waits for: its ``depends_on`` (a choice named there stands for the
    choice with its branches), or by default the step before it."""
    step = flat[i]
    named = step.spec.depends_on
    if named is None:
        return step.default_deps
    exits = {f.spec.name: f.exits for f in flat}
    deps: list[str] = []
    for j, dep in enumerate(named):
        at = f"{step.at}.depends_on[{j}]"
        if dep == step.spec.name:
            raise WorkflowError(f"step {dep!r} cannot depend on itself", source=source, path=at)
        if dep not in exits:
            names = sorted(set(exits) - {step.spec.name})
            raise WorkflowError(
                f"unknown step {dep!r}; expected one of: {', '.join(names)}",
                source=source,
                path=at,
            )
        if named.index(dep) != j:
            raise WorkflowError(f"step {dep!r} listed twice", source=source, path=at)
        deps.extend(name for name in exits[dep] if name not in deps and name != step.spec.name)
    return tuple(deps)


def check_acyclic(
    deps: Mapping[str, tuple[str, ...]], paths: Mapping[str, str], source: str
) -> None:
    """Reject a dependency cycle, naming the steps on it."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def visit(name: str, path: list[str]) -> None:
        state[name] = 1
        for dep in deps[name]:
            if state.get(dep) == 1:
                cycle = [*path[path.index(dep) :], dep] if dep in path else [name, dep]
                raise WorkflowError(
                    f"dependency cycle: {' -> '.join(cycle)}",
                    source=source,
                    path=f"{paths[name]}.depends_on",
                )
            if state.get(dep) is None:
                visit(dep, [*path, dep])
        state[name] = 2

    for name in deps:
        if state.get(name) is None:
            visit(name, [name])


def step_definitions(document: Mapping[str, Any]) -> dict[str, bytes]:
    """Each step's own definition in a workflow document (canonical JSON), by name: what a
    resume compares to tell whether a step that already ran was changed. A choice's
    branches are listed by their steps' names (each of those is compared on its own)."""
    out: dict[str, bytes] = {}
    _definitions(document.get("steps"), out)
    return out


def _definitions(steps: Any, out: dict[str, bytes]) -> None:
    if not isinstance(steps, list):
        return
    for step in steps:
        if not isinstance(step, dict) or not isinstance(step.get("name"), str):
            continue
        own = dict(step)
        if isinstance(step.get("choice"), list):
            own["choice"] = [
                {**b, "steps": [s.get("name") for s in b.get("steps", []) if isinstance(s, dict)]}
                if isinstance(b, dict)
                else b
                for b in step["choice"]
            ]
            for branch in step["choice"]:
                if isinstance(branch, dict):
                    _definitions(branch.get("steps"), out)
        out[step["name"]] = orjson.dumps(own, option=orjson.OPT_SORT_KEYS)
