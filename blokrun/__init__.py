"""blokrun: async JSON workflows that checkpoint after every step and resume where they failed.

::

    from blokrun import Runner

    async with Runner.from_env() as runner:
        result = await runner.run("workflow.json", inputs={"user": 42})
        ...
        result = await runner.resume(request_id)
"""

from __future__ import annotations

from blokrun.config import DatasourceSettings
from blokrun.datasources import Datasource, Driver, Store, register_driver
from blokrun.errors import (
    ArgumentError,
    BlokrunError,
    CheckpointError,
    ConfigError,
    DatasourceAccessError,
    DatasourceError,
    DatasourceUnavailable,
    DefinitionChanged,
    ExpressionError,
    FormatVersionError,
    LeaseLost,
    MissingExtraError,
    RecordError,
    ResumeError,
    RunBusy,
    RunError,
    RunExists,
    RunNotFound,
    StepFailed,
    ValueNotStorable,
    WorkflowError,
)
from blokrun.execution.context import Context
from blokrun.execution.events import (
    ItemFinished,
    RunEnded,
    RunStarted,
    StepFinished,
    StepStarted,
    Suspension,
)
from blokrun.execution.hooks import Hook
from blokrun.execution.workflows import load_workflow
from blokrun.lifecycle import GcReport, ResumeOutcome, RunPage, RunSummary
from blokrun.persistence.history import CheckpointInfo, RunInfo
from blokrun.persistence.planner import ResumePlan
from blokrun.persistence.records import new_request_id
from blokrun.runner import Runner, RunResult
from blokrun.spec.loader import Workflow

__version__ = "0.1.0"

__all__ = [
    "ArgumentError",
    "BlokrunError",
    "CheckpointError",
    "CheckpointInfo",
    "ConfigError",
    "Context",
    "Datasource",
    "DatasourceAccessError",
    "DatasourceError",
    "DatasourceSettings",
    "DatasourceUnavailable",
    "Driver",
    "GcReport",
    "DefinitionChanged",
    "ExpressionError",
    "FormatVersionError",
    "Hook",
    "ItemFinished",
    "LeaseLost",
    "MissingExtraError",
    "RecordError",
    "ResumeError",
    "ResumeOutcome",
    "ResumePlan",
    "RunBusy",
    "RunError",
    "RunExists",
    "RunInfo",
    "RunNotFound",
    "RunPage",
    "RunResult",
    "RunEnded",
    "RunStarted",
    "RunSummary",
    "Runner",
    "StepFailed",
    "StepFinished",
    "StepStarted",
    "Store",
    "Suspension",
    "ValueNotStorable",
    "Workflow",
    "WorkflowError",
    "__version__",
    "load_workflow",
    "new_request_id",
    "register_driver",
]
