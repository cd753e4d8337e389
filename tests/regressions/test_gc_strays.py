"""gc deletes a run from every datasource, including one that holds records of it but no
head: what a write or a repair cut short leaves on a target that lost the rest.

Found by the run-record property (``tests/properties/test_run_record_machine.py``): a run
completed on targets ``a`` and ``b``, ``b`` lost its data, a resume repairing ``b`` died
after writing the run record there, and gc then collected the run from ``a`` only -- the
listing names the datasources that hold a *head*. The stray run record stayed on ``b``,
and the next ``run`` under that id was refused as existing, or (a new workflow crashing
before its own start record) resumed as the old run's steps with the old inputs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from blokrun import Runner
from blokrun.config import DatasourceSettings
from blokrun.datasources import build_datasource
from tests.integration import wfnodes

NODE = "tests.integration.wfnodes"


def flow(steps: tuple[str, ...] = ("s1", "s2")) -> dict[str, Any]:
    return {
        "name": "strays",
        "persistence": {"targets": ["a", "b"]},
        "steps": [{"name": s, "node": f"{NODE}:add", "inputs": {"n": 1}} for s in steps],
    }


def runner(root: Path) -> Runner:
    return Runner(
        [
            build_datasource(
                DatasourceSettings(name=n, type="filesystem", path=str(root / n), fsync=False)
            )
            for n in ("a", "b")
        ]
    )


@pytest.mark.parametrize(
    "left",
    [("_blokrun.run.",), ("_blokrun.ckpt.",), ("_blokrun.run.", "_blokrun.ckpt.", "r1-")],
    ids=["run record", "checkpoint", "run record, checkpoints and alias"],
)
async def test_gc_deletes_what_a_headless_target_holds_of_the_run(
    tmp_path: Path, left: tuple[str, ...]
) -> None:
    async with runner(tmp_path) as r:
        await r.run(flow(), {"total": 100}, request_id="r1")
        b = r.datasources["b"]
        everything = await b.keys("")
        assert any(k.startswith("_blokrun.head.r1") for k in everything)
        # b keeps only some records of the run, no head (a cut-short repair or write)
        await b.delete_batch([k for k in everything if not k.startswith(left)])
        assert await b.keys("") and not await b.exists("_blokrun.head.r1")

        report = await r.collect_garbage(
            completed_older_than=0.0, failed_older_than=None, dry_run=False
        )
        assert [g.request_id for g in report.runs] == ["r1"]
        assert not report.errors
        for name in ("a", "b"):
            left_over = [
                k for k in await r.datasources[name].keys("") if not k.startswith("_blokrun.def.")
            ]
            assert left_over == [], (name, left_over)

        # the id is free again: a new run under it is its own, with its own inputs
        wfnodes.CALLS.clear()
        again = await r.run(flow(("t1",)), {"total": 5}, request_id="r1")
    assert again.status == "completed" and not again.existing
    assert again.vars["total"] == 6
    assert [step for _, step in wfnodes.CALLS] == ["t1"]


async def test_what_a_headless_target_holds_of_other_runs_stays(tmp_path: Path) -> None:
    """On the headless target, only the collected run's own records go: a run whose id
    starts like it, and a key under the collected run's alias pattern that holds another
    program's bytes, are left as they are."""
    async with runner(tmp_path) as r:
        await r.run(flow(), request_id="r2")
        await r.run(flow(), request_id="r2-s1")  # its keys start with "r2"
        b = r.datasources["b"]
        await b.delete_batch([k for k in await b.keys("") if "r2/" in k or k == "_blokrun.head.r2"])
        await b.save("r2-s2", b"another program's value")  # where r2's alias was
        await b.save("_blokrun.run.r2/1", b"garbage")  # a stray that does not verify
        report = await r.collect_garbage(
            completed_older_than=0.0, failed_older_than=None, dry_run=False
        )
        assert sorted(g.request_id for g in report.runs) == ["r2", "r2-s1"]
        # r2-s1 was collected as a run of its own (its head on both); r2's stray went too
        assert await b.load("r2-s2") == b"another program's value"
        assert not [k for k in await b.keys("_blokrun.") if not k.startswith("_blokrun.def.")]
