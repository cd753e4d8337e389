"""What the resume-hint tests share: runs failed on purpose, and what a look at a run found."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

from blokrun import StepFailed
from tests.integration import wfnodes

if TYPE_CHECKING:
    from blokrun import Runner


async def fail_at(runner: Runner, step: str, wf: dict[str, Any], rid: str, **kw: Any) -> None:
    """Run ``wf`` as ``rid``; it fails at ``step``."""
    wfnodes.FAIL_AT.add(step)
    try:
        with pytest.raises(StepFailed):
            await runner.run(wf, request_id=rid, **kw)
    finally:
        wfnodes.FAIL_AT.discard(step)


async def resume_failing_at(runner: Runner, step: str, rid: str, **kw: Any) -> None:
    """Resume ``rid``; it fails again at ``step``."""
    wfnodes.FAIL_AT.add(step)
    try:
        with pytest.raises(StepFailed):
            await runner.resume(rid, **kw)
    finally:
        wfnodes.FAIL_AT.discard(step)


def seen(found: Any, *, detail: bool = False) -> list[tuple[Any, ...]]:
    """What a look at a run found on each target, and what it warned about (``detail``:
    also the type of a target's error and the definition read with its records)."""
    if found is None:
        return []
    return [
        (v.datasource.name, v.head, v.run, v.checkpoint, [c.key for c in v.chain], v.warnings)
        + ((type(v.error), v.definition) if detail else ())
        for v in found.views
    ]
