"""A hint never decides anything, as a stateful property (issue 18's one-read resume).

A runner that drove a run reads the records its head points at together with the head
(:mod:`blokrun.persistence.hints`); a runner that never saw the run reads them after it.
hypothesis interleaves two runners ("processes") on the same two filesystem targets:
runs of colliding ids with workflows of other lengths and definitions, failures at any
step, resumes by either, restarts, gc, and tampering -- a head deleted or put back as it
was, a checkpoint deleted or replaced by bytes it held earlier (another life's). After
every step, for every id, each runner must find and plan exactly what a third runner that
never ran anything does: the same views, records, chains and warnings, the same plan or
the same error.

Budget: ``BUDGET`` sequences of up to ``STEPS`` rules (``BLOKRUN_PROPERTY_EXAMPLES``
overrides).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import anyio
import anyio.from_thread
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from blokrun import Runner
from blokrun.config import DatasourceSettings
from blokrun.datasources import build_datasource
from blokrun.errors import BlokrunError
from blokrun.persistence.keys import checkpoint_key, head_key
from tests.regressions.hinting import seen

BUDGET = int(os.environ.get("BLOKRUN_PROPERTY_EXAMPLES", "40"))
STEPS = 12

IDS = ("r", "r-1", "s")
TARGETS = ("a", "b")
#: (request id, step) pairs whose node raises while listed
FAIL: set[tuple[str, str]] = set()


async def node(ctx: Any, inputs: dict[str, Any]) -> Any:
    if (ctx.request.id, ctx.step) in FAIL:
        raise RuntimeError(f"{ctx.step} fails on purpose")
    ctx.vars[ctx.step] = inputs["v"]
    return inputs["v"]


def workflow(steps: int, variant: int) -> dict[str, Any]:
    return {
        "name": f"hint-{variant}",
        "persistence": {"targets": list(TARGETS)},
        "steps": [
            {"name": f"s{i}", "node": f"{__name__}:node", "inputs": {"v": i * 10 + variant}}
            for i in range(1, steps + 1)
        ],
    }


class HintMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        FAIL.clear()
        self.root = Path(tempfile.mkdtemp(prefix="blokrun-hints-"))
        self.portal_cm = anyio.from_thread.start_blocking_portal()
        self.portal = self.portal_cm.__enter__()
        self.runners = [self._open() for _ in range(3)]  # here, there, the stranger
        #: bytes every head and checkpoint key held at some point (to put back)
        self.held: dict[tuple[str, str], list[bytes]] = {}

    def _open(self) -> Runner:
        sets = [
            DatasourceSettings(name=t, type="filesystem", path=str(self.root / t), fsync=False)
            for t in TARGETS
        ]
        runner = Runner([build_datasource(s) for s in sets])
        self.portal.call(runner.__aenter__)
        return runner

    def teardown(self) -> None:
        try:
            for runner in self.runners:
                self.portal.call(runner.__aexit__, None, None, None)
        finally:
            self.portal_cm.__exit__(None, None, None)
            shutil.rmtree(self.root, ignore_errors=True)
            FAIL.clear()

    def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        async def go() -> Any:
            with anyio.fail_after(30):
                return await fn(*args, **kwargs)

        return self.portal.call(go)

    def _attempt(self, fn: Any, *args: Any, **kwargs: Any) -> None:
        try:
            self._call(fn, *args, **kwargs)
        except BlokrunError:
            pass  # refused, failed, busy: the property is about what is read afterwards
        finally:
            FAIL.clear()
        self._remember()

    def _remember(self) -> None:
        async def snap() -> None:
            for t, ds in self.runners[2].datasources.items():
                for prefix in ("_blokrun.head.", "_blokrun.ckpt."):
                    for key in await ds.keys(prefix):
                        raw = await ds.load(key)
                        kept = self.held.setdefault((t, key), [])
                        if raw is not None and raw not in kept and len(kept) < 4:
                            kept.append(raw)

        self._call(snap)

    # -- rules -------------------------------------------------------------------------------

    @rule(
        who=st.integers(0, 1),
        rid=st.sampled_from(IDS),
        steps=st.integers(1, 12),
        variant=st.integers(0, 1),
        fail_at=st.none() | st.integers(1, 12),
        restart=st.booleans(),
    )
    def start(
        self, who: int, rid: str, steps: int, variant: int, fail_at: int | None, restart: bool
    ) -> None:
        if fail_at is not None:
            FAIL.add((rid, f"s{fail_at}"))
        runner = self.runners[who]
        self._attempt(runner.run, workflow(steps, variant), request_id=rid, restart=restart)

    @rule(who=st.integers(0, 1), rid=st.sampled_from(IDS), fail_at=st.none() | st.integers(1, 12))
    def resume(self, who: int, rid: str, fail_at: int | None) -> None:
        if fail_at is not None:
            FAIL.add((rid, f"s{fail_at}"))
        self._attempt(self.runners[who].resume, rid)

    @rule(who=st.integers(0, 1))
    def gc(self, who: int) -> None:
        self._attempt(
            self.runners[who].collect_garbage, completed_older_than=0.0, failed_older_than=0.0
        )

    @rule(where=st.sampled_from(TARGETS), rid=st.sampled_from(IDS), seq=st.integers(0, 12))
    def delete(self, where: str, rid: str, seq: int) -> None:
        """A head (``seq`` 0) or a checkpoint lost."""
        ds = self.runners[2].datasources[where]
        key = head_key(rid) if seq == 0 else checkpoint_key(rid, 1, seq)
        self._attempt(ds.delete, key)

    @rule(data=st.data())
    def put_back(self, data: st.DataObject) -> None:
        """A head or checkpoint key made to hold bytes it held before."""
        if not self.held:
            return
        (target, key), kept = data.draw(st.sampled_from(sorted(self.held.items())), label="key")
        raw = data.draw(st.sampled_from(kept), label="bytes")
        self._attempt(self.runners[2].datasources[target].save, key, raw)

    # -- the property --------------------------------------------------------------------------

    def _look(self, runner: Runner, rid: str) -> tuple[Any, Any]:
        found: Any
        try:
            found = seen(self._call(runner.store.planner.find, rid, None))
        except BlokrunError as exc:
            found = (type(exc).__name__, str(exc))
        try:
            plan: Any = self._call(runner.plan_resume, rid)
        except BlokrunError as exc:
            plan = (type(exc).__name__, str(exc))
        return found, plan

    @invariant()
    def hints_change_nothing_read(self) -> None:
        for rid in IDS:
            stranger = self._look(self.runners[2], rid)
            assert len(self.runners[2].store.locator.recent) == 0
            for runner in self.runners[:2]:
                assert self._look(runner, rid) == stranger, rid


HintMachine.TestCase.settings = settings(
    max_examples=BUDGET,
    stateful_step_count=STEPS,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
test_a_hint_changes_nothing_a_look_at_a_run_finds = HintMachine.TestCase
