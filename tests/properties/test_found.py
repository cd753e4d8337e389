"""What the state machine in ``test_run_record_machine.py`` found, pinned as examples."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import pytest

from blokrun import CheckpointError, RunExists, Runner
from blokrun.config import DatasourceSettings
from blokrun.datasources import Datasource, Store, create_store
from tests.properties.test_run_record_machine import LOG, Crash, Mortal, workflow


def fs(tmp_path: Path, name: str) -> DatasourceSettings:
    return DatasourceSettings(name=name, type="filesystem", path=str(tmp_path / name))


async def test_a_completed_id_run_with_another_definition_is_refused(tmp_path: Path) -> None:
    """Same id, same inputs, but the workflow changed: not the stored result of another
    definition -- RunExists, running nothing (it returned the old result)."""
    LOG.clear()
    async with Runner([fs(tmp_path, "a"), fs(tmp_path, "b")]) as runner:
        await runner.run(workflow(["b", "b-c"]), {"seed": 0}, request_id="a")
        with pytest.raises(RunExists, match="another definition"):
            await runner.run(workflow(["b"]), {"seed": 0}, request_id="a")
        same = await runner.run(workflow(["b", "b-c"]), {"seed": 0}, request_id="a")
    assert same.existing and LOG == [("a", "b"), ("a", "b-c")]


async def test_a_run_whose_start_cannot_be_stored_raises_a_checkpoint_error(
    tmp_path: Path,
) -> None:
    """The run's start record fails on every target at once: ``run`` raises the
    CheckpointError itself, not an ExceptionGroup from the concurrent saves."""
    crash = Crash()
    crash.at, crash.keep = 3, 0  # the definitions, then the start records: dies there
    stores: list[Any] = []
    for name in ("a", "b"):
        settings = fs(tmp_path, name)
        stores.append(Datasource(settings, cast("Store", Mortal(create_store(settings), crash))))
    async with Runner(stores) as runner:
        with pytest.raises(CheckpointError) as info:
            await runner.run(workflow(["b"]), {"seed": 0}, request_id="s")
    assert not isinstance(info.value, BaseExceptionGroup)
    assert "run's start" in str(info.value)
