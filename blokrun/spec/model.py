"""The workflow file format: frozen, strict msgspec structs, decoded once.

Unknown fields and wrong types are errors that carry the JSON path (``$.steps[2].inputs``);
semantic checks (duplicate names, datasources, expressions, nodes) are in ``loader``.
Field names follow the seed specification (``autoSave``, ``keyPattern``).
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from blokrun.types import DURABILITIES, Durability

__all__ = [
    "DEFAULT_KEY_PATTERN",
    "BranchSpec",
    "MapSpec",
    "DefaultsSpec",
    "RetrySpec",
    "ScheduleSpec",
    "PersistenceSpec",
    "StepPersistenceSpec",
    "DURABILITIES",
    "Durability",
    "StepSpec",
    "WorkflowSpec",
]

DEFAULT_KEY_PATTERN = "${ctx.request.id}-${stepName}"


class PersistenceSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True, rename="camel"):
    """Workflow-level persistence: checkpoints after every step, to ``targets``."""

    enabled: bool = True
    auto_save: bool = True
    key_pattern: str = DEFAULT_KEY_PATTERN
    targets: list[str] | None = None
    ttl: float | None = None
    #: "sync" (a step's checkpoint is stored before the next step starts), "async"
    #: (write-behind: it is stored while the next step runs, in order, all flushed before
    #: the run returns) or "exit" (stored once, when the run ends). None: the runner's.
    durability: Durability | None = None


class StepPersistenceSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Step-level control.

    ``enabled: false`` skips this step's checkpoint (``true`` checkpoints it even when the
    workflow has ``autoSave: false``). ``target`` + ``key`` also publish the step's output
    under ``key`` on ``target`` (another workflow can read it with ``ctx.datasource``).
    """

    enabled: bool | None = None
    target: str | None = None
    key: str | None = None
    ttl: float | None = None


class RetrySpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Retry a failing step: ``attempts`` in all, waiting ``delay`` seconds before the
    second, times ``backoff`` before each later one, at most ``max_delay``, randomised by
    +/- ``jitter`` (a fraction). ``on`` names the exception classes to retry (matched
    against the class and its bases, e.g. ``ConnectionError``); empty retries any error."""

    attempts: int = 3
    delay: float = 0.5
    backoff: float = 2.0
    max_delay: float = 30.0
    jitter: float = 0.1
    on: list[str] = msgspec.field(default_factory=list)


class DefaultsSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Workflow-level defaults for every step that does not set its own."""

    retry: RetrySpec | None = None
    timeout: float | None = None


class BranchSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One branch of a ``choice``: taken when ``when`` holds (the first that does); a last
    branch without ``when`` is the default."""

    steps: list[StepSpec]
    when: str | bool | None = None
    label: str | None = None


class MapSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Call the step's node once per element of ``items`` (a list, or a ${...} giving one),
    at most ``concurrency`` at a time; each item's result is checkpointed as it completes.
    ``tolerate``: how many items may fail for good (after their retries) before the step
    fails."""

    items: str | list[Any]
    concurrency: int = 10
    tolerate: int = 0


class StepSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A step: calls ``node``, runs ``workflow`` (a file) as a child run, or (``choice``)
    runs the first branch whose ``when`` holds. ``when``: the step runs only when it holds,
    and is recorded as skipped otherwise. ``map``: the node (or child workflow) once per
    item."""

    name: str
    node: str | None = None
    type: Literal["module", "builtin"] | None = None
    description: str = ""
    inputs: dict[str, Any] = msgspec.field(default_factory=dict)
    persistence: StepPersistenceSpec | None = None
    depends_on: list[str] | None = None
    retry: RetrySpec | None = None
    timeout: float | None = None
    when: str | bool | None = None
    choice: list[BranchSpec] | None = None
    map: MapSpec | None = None
    #: run this workflow file (relative to this one's folder) as a child run
    workflow: str | None = None


class ScheduleSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Run the workflow on a clock: ``cron`` (5 fields, in ``timezone``) or ``every`` N
    seconds, with ``inputs``; ticks missed while no worker ran are skipped or all run
    (``missed``: "skip" or "catch-up"). ``id`` (default: the workflow's name) names the
    tick runs: ``<id>:<UTC time>``."""

    cron: str | None = None
    every: float | None = None
    timezone: str = "UTC"
    missed: Literal["skip", "catch-up"] = "skip"
    inputs: dict[str, Any] = msgspec.field(default_factory=dict)
    id: str | None = None


class WorkflowSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    name: str
    steps: list[StepSpec]
    version: str = "0"
    description: str = ""
    datasources: list[str] = msgspec.field(default_factory=list)
    persistence: PersistenceSpec = msgspec.field(default_factory=PersistenceSpec)
    defaults: DefaultsSpec = msgspec.field(default_factory=DefaultsSpec)
    schedule: ScheduleSpec | None = None
