"""The public façade: every exported name exists, and the list is pinned."""

from __future__ import annotations

import blokrun

EXPECTED = {
    "ArgumentError", "BlokrunError", "CheckpointError", "CheckpointInfo", "ConfigError", "Context", "Datasource",
    "DatasourceAccessError", "DatasourceError", "DatasourceSettings", "DatasourceUnavailable",
    "DefinitionChanged", "ExpressionError", "FormatVersionError", "Hook", "ItemFinished", "LeaseLost",
    "MissingExtraError", "RunBusy",
    "RecordError", "ResumeError", "ResumePlan", "RunEnded", "RunError", "RunExists", "RunInfo", "RunNotFound",
    "RunResult", "RunStarted", "Runner", "StepFailed", "StepFinished", "StepStarted", "Store",
    "Suspension", "ValueNotStorable", "Workflow",
    "WorkflowError", "__version__", "load_workflow", "Driver", "register_driver",
    "GcReport", "ResumeOutcome", "RunPage", "RunSummary", "new_request_id",
}  # fmt: skip


def test_all_is_pinned_and_every_name_exists() -> None:
    assert set(blokrun.__all__) == EXPECTED
    for name in blokrun.__all__:
        assert hasattr(blokrun, name), name


def test_every_error_derives_from_the_one_root() -> None:
    errors = [
        getattr(blokrun, n)
        for n in blokrun.__all__
        if n.endswith(("Error", "Failed", "Found", "Changed", "Unavailable", "Storable"))
    ]
    assert errors and all(issubclass(e, blokrun.BlokrunError) for e in errors)
