"""The run record's guarantee as a stateful property (issue 13): hypothesis interleaves runs
whose ids and step names are chosen to collide under the default key pattern (run ``a`` +
step ``b-c`` and run ``a-b`` + step ``c`` both name ``a-b-c``), the same id run again (same
inputs, other inputs, ``restart``), step failures, resumes, SIGKILL-equivalent crashes at
any write, tampering with a stored record, gc, and one target losing everything it holds --
and checks after every step:

* no completed step ran twice (per incarnation; the step in flight at a crash may run again,
  once per crash);
* every result equals what the run's own steps returned, in order: a run never reads
  another run's record;
* a completed run resumes to the very same vars -- or, if one of its records was tampered
  with and no target holds a good copy, fails naming a key; never other data;
* nothing verified is lost: a run that completed and was not collected is found.

The datasources are two filesystem targets (``a`` never loses data, ``b`` may); a "crash"
makes every write of the current process fail from a chosen write on -- a write may land in
part, as a batch cut short -- and the next "process" is a new Runner. Budget: ``BUDGET``
sequences of up to ``STEPS`` rules (``BLOKRUN_PROPERTY_EXAMPLES`` overrides), measured at
about 25 s on the 2-core machine of ``benchmarks/RESULTS.md`` (the whole suite must stay
under 10 minutes there).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import anyio
import anyio.from_thread
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from blokrun import Runner, RunResult
from blokrun.config import DatasourceSettings
from blokrun.datasources import Datasource, Store, create_store
from blokrun.errors import BlokrunError, RunError, RunExists, RunNotFound, StepFailed
from blokrun.persistence.keys import parse_checkpoint_key
from blokrun.persistence.records import DEFAULT_ENVELOPE, decode_alias

BUDGET = int(os.environ.get("BLOKRUN_PROPERTY_EXAMPLES", "200"))
STEPS = 14

IDS = ("a", "a-b", "a-b-c", "b")
STEP_NAMES = ("b", "b-c", "c", "c-d", "d")

#: Every node call that completed: (request id, step), in order. Reset by the machine.
LOG: list[tuple[str, str]] = []
#: (request id, step) pairs whose node raises while listed.
FAIL: set[tuple[str, str]] = set()


async def node(ctx: Any, inputs: dict[str, Any]) -> Any:
    """Fails on demand; else records the call and returns what only this run's step can."""
    if (ctx.request.id, ctx.step) in FAIL:
        raise RuntimeError(f"{ctx.step} fails on purpose")
    LOG.append((ctx.request.id, ctx.step))
    ctx.vars.setdefault("trail", []).append(ctx.step)
    return f"{ctx.request.id}/{ctx.step}/{inputs['seed']}"


def workflow(steps: Sequence[str], targets: Sequence[str] = ("a", "b")) -> dict[str, Any]:
    return {
        "name": "prop",
        "persistence": {"targets": list(targets)},
        "steps": [
            {"name": s, "node": f"{__name__}:node", "inputs": {"seed": "${ctx.vars.seed}"}}
            for s in steps
        ],
    }


def expected_vars(rid: str, steps: Sequence[str], seed: int) -> dict[str, Any]:
    out: dict[str, Any] = {"seed": seed, "trail": list(steps)}
    out.update({s: f"{rid}/{s}/{seed}" for s in steps})
    return out


class Died(OSError):
    """What every write raises once the simulated process is dead."""


class Crash:
    """One process's fate: alive, or dead from the ``at``-th write on (the write that dies
    may land ``keep`` entries of its batch first)."""

    def __init__(self) -> None:
        self.at: int | None = None
        self.keep = 0
        self.writes = 0
        self.dead = False

    def write(self, entries: int) -> int:
        """How many of ``entries`` to write, then raise if this write dies; -1: write all."""
        if self.dead:
            raise Died("the process is dead")
        self.writes += 1
        if self.at is not None and self.writes >= self.at:
            self.dead = True
            return min(self.keep, entries)
        return -1


class Mortal:
    """A store whose writes stop when its process dies."""

    def __init__(self, inner: Any, crash: Crash) -> None:
        self._inner = inner
        self._crash = crash

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def _check(self) -> None:
        if self._crash.write(1) >= 0:
            raise Died("the process died before this write")

    async def save(self, key: str, data: bytes, ttl: float | None = None) -> None:
        self._check()
        await self._inner.save(key, data, ttl)

    async def save_batch(self, entries: Sequence[Any]) -> None:
        keep = self._crash.write(len(entries))
        if keep >= 0:
            if keep:
                await self._inner.save_batch(list(entries)[:keep])
            raise Died("the process died in this write")
        await self._inner.save_batch(entries)

    async def save_batch_fenced(self, entries: Sequence[Any], lease_key: str, token: int) -> bool:
        keep = self._crash.write(len(entries))
        if keep >= 0:
            if keep:
                await self._inner.save_batch_fenced(list(entries)[:keep], lease_key, token)
            raise Died("the process died in this write")
        ok: bool = await self._inner.save_batch_fenced(entries, lease_key, token)
        return ok

    async def delete(self, key: str) -> bool:
        self._check()
        gone: bool = await self._inner.delete(key)
        return gone

    async def delete_batch(self, keys: Sequence[str]) -> int:
        self._check()
        n: int = await self._inner.delete_batch(keys)
        return n

    async def acquire_lease(self, *args: Any) -> Any:
        if self._crash.dead:
            raise Died("the process is dead")
        return await self._inner.acquire_lease(*args)

    async def renew_lease(self, *args: Any) -> Any:
        if self._crash.dead:
            raise Died("the process is dead")
        return await self._inner.renew_lease(*args)

    async def release_lease(self, *args: Any) -> Any:
        if self._crash.dead:
            raise Died("the process is dead")
        return await self._inner.release_lease(*args)


@dataclass
class Run:
    """What the model knows of one request id."""

    steps: tuple[str, ...]
    seed: int
    status: str  # "completed", "failed", "crashed"
    since: int = 0  # LOG length when this incarnation started
    crashes: int = 0  # crashes in this incarnation: each may repeat the step in flight once
    tampered: bool = False
    result: dict[str, Any] | None = None
    done: list[str] = field(default_factory=list)  # steps known completed (not after a crash)


class RunRecordMachine(RuleBasedStateMachine):
    #: the workflow's checkpoint targets (``a`` never loses data; ``b``, if there, may)
    TARGETS: tuple[str, ...] = ("a", "b")

    def __init__(self) -> None:
        super().__init__()
        LOG.clear()
        FAIL.clear()
        self.root = Path(tempfile.mkdtemp(prefix="blokrun-prop-"))
        self.portal_cm = anyio.from_thread.start_blocking_portal()
        self.portal = self.portal_cm.__enter__()
        self.runs: dict[str, Run] = {}
        self.owners: dict[str, str] = {}  # alias key -> the run seen owning it
        self.fate = Crash()
        self.runner: Runner | None = None
        self._start_process()

    # -- the simulated process -----------------------------------------------------------

    def _settings(self, name: str) -> DatasourceSettings:
        return DatasourceSettings(
            name=name, type="filesystem", path=str(self.root / name), fsync=False
        )

    def _mortal(self, settings: DatasourceSettings) -> Store:
        return cast("Store", Mortal(create_store(settings), self.fate))

    def _start_process(self) -> None:
        self.fate = Crash()
        datasources = [
            Datasource(s, self._mortal(s)) for s in (self._settings(t) for t in self.TARGETS)
        ]
        self.runner = Runner(datasources)
        self.portal.call(self.runner.__aenter__)

    def _end_process(self) -> None:
        runner, self.runner = self.runner, None
        if runner is not None:
            try:
                self.portal.call(runner.__aexit__, None, None, None)
            except BlokrunError:
                pass  # a dead process closes nothing cleanly

    def teardown(self) -> None:
        try:
            self._end_process()
        finally:
            self.portal_cm.__exit__(None, None, None)
            shutil.rmtree(self.root, ignore_errors=True)
            FAIL.clear()

    @property
    def _runner(self) -> Runner:
        assert self.runner is not None
        return self.runner

    def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        async def go() -> Any:
            with anyio.fail_after(30):
                return await fn(*args, **kwargs)

        return self.portal.call(go)

    def _stored(self, rid: str) -> bool:
        """Whether anything of run ``rid`` is stored (a head, a run record, a checkpoint)."""

        async def look() -> bool:
            for ds in self._runner.datasources.values():
                for prefix in (
                    f"_blokrun.head.{rid}",
                    f"_blokrun.run.{rid}/",
                    f"_blokrun.ckpt.{rid}/",
                ):
                    if [k for k in await ds.keys(prefix) if k == prefix or prefix.endswith("/")]:
                        return True
            return False

        stored: bool = self._call(look)
        return stored

    def _calls(self, rid: str, since: int = 0) -> Counter[str]:
        return Counter(step for r, step in LOG[since:] if r == rid)

    # -- checking a result -----------------------------------------------------------------

    def _check_completed(self, rid: str, result: RunResult) -> None:
        run = self.runs[rid]
        assert result.status == "completed", result
        want = expected_vars(rid, run.steps, run.seed)
        got = {k: v for k, v in result.vars.items() if k in want}
        assert got == want, (rid, got, want)  # its own steps' values, in order: never another's
        if run.result is not None:
            assert result.vars == run.result, (rid, result.vars, run.result)
        run.result = dict(result.vars)
        run.status, run.done = "completed", list(run.steps)

    # -- rules -------------------------------------------------------------------------------

    @rule(
        data=st.data(),
        rid=st.sampled_from(IDS),
        fail_at=st.none() | st.integers(0, 3),
        restart=st.booleans(),
    )
    def start(self, data: st.DataObject, rid: str, fail_at: int | None, restart: bool) -> None:
        """``run`` on a new id, or the same id again (same or other workflow and inputs, or
        restart)."""
        known = self.runs.get(rid)
        fresh_steps = st.lists(st.sampled_from(STEP_NAMES), min_size=1, max_size=4, unique=True)
        if known is not None and data.draw(st.booleans(), label="same workflow"):
            steps = list(known.steps)
        else:
            steps = data.draw(fresh_steps, label="steps")
        if known is not None and data.draw(st.booleans(), label="same inputs"):
            seed = known.seed
        else:
            seed = data.draw(st.integers(0, 3), label="seed")
        failing = steps[fail_at] if fail_at is not None and fail_at < len(steps) else None
        if failing is not None:
            FAIL.add((rid, failing))
        mark = len(LOG)
        try:
            result = self._call(
                self._runner.run,
                workflow(steps, self.TARGETS),
                {"seed": seed},
                request_id=rid,
                restart=restart,
            )
        except RunExists:
            assert known is not None and not restart, (rid, known)
            same = known.steps == tuple(steps) and known.seed == seed
            assert known.status != "completed" or not same, (rid, known)
            assert len(LOG) == mark  # refused: nothing ran
            return
        except StepFailed:
            assert failing is not None and (known is None or restart), (rid, known)
            upto = steps.index(failing)
            self.runs[rid] = Run(tuple(steps), seed, "failed", since=mark, done=steps[:upto])
            assert self._calls(rid, mark) == Counter(steps[:upto])  # each once
            return
        except BlokrunError as exc:  # a completed run whose record was damaged: fail closed
            assert known is not None and known.tampered and not restart, (rid, exc)
            assert len(LOG) == mark
            return
        finally:
            FAIL.discard((rid, failing or ""))
        if known is not None and not restart:
            # the same workflow and inputs that completed: its stored result, nothing ran
            assert result.existing and len(LOG) == mark, (rid, known, result)
            assert known.steps == tuple(steps) and known.seed == seed, (rid, known)
            self._check_completed(rid, result)
            return
        assert failing is None, (rid, failing)
        self.runs[rid] = Run(tuple(steps), seed, "running", since=mark)
        assert self._calls(rid, mark) == Counter(steps)  # every step once
        self._check_completed(rid, result)

    @precondition(lambda self: bool(self.runs))
    @rule(data=st.data())
    def resume(self, data: st.DataObject) -> None:
        """Resume a run: a failed or crashed one runs only what is missing; a completed one
        runs nothing and returns the same vars."""
        rid = data.draw(st.sampled_from(sorted(self.runs)))
        run = self.runs[rid]
        mark = len(LOG)
        try:
            result = self._call(self._runner.resume, rid)
        except RunNotFound:
            # only a run that died before anything of it was stored may be unknown
            assert run.status == "crashed" and not run.done, f"run {rid} is lost"
            del self.runs[rid]
            return
        except BlokrunError as exc:
            # only a record tampered with, with no good copy left, may stop it -- and then
            # it says which key, and runs nothing
            assert run.tampered, (rid, exc)
            assert "_blokrun." in str(exc) or f"{rid}-" in str(exc), exc
            assert len(LOG) == mark
            return
        ran = self._calls(rid, mark)
        assert not set(ran) & set(run.done), (rid, ran, run.done)  # completed steps never again
        self._check_completed(rid, result)
        total = self._calls(rid, run.since)
        repeats = sum(n - 1 for n in total.values() if n > 1)
        assert repeats <= run.crashes, (rid, total, run.crashes)  # only a step in flight

    @rule(
        rid=st.sampled_from(IDS),
        steps=st.lists(st.sampled_from(STEP_NAMES), min_size=1, max_size=4, unique=True),
        seed=st.integers(0, 3),
        at=st.integers(1, 12),
        keep=st.integers(0, 3),
    )
    def crash(self, rid: str, steps: list[str], seed: int, at: int, keep: int) -> None:
        """SIGKILL-equivalent: the process dies at its ``at``-th write (after ``keep``
        entries of it landed) while running a new id, or resuming a known one."""
        known = self.runs.get(rid)
        self.fate.at, self.fate.keep = self.fate.writes + at, keep
        mark = len(LOG)
        try:
            if known is None:
                result = self._call(
                    self._runner.run, workflow(steps, self.TARGETS), {"seed": seed}, request_id=rid
                )
            else:
                result = self._call(self._runner.resume, rid)
        except (RunError, BlokrunError, OSError):
            result = None
        died = self.fate.dead
        self._end_process()
        self._start_process()
        if known is None:
            if not self._stored(rid):
                assert result is None, (rid, result)
                return  # it died before anything of it was stored: the id is free again
            self.runs[rid] = Run(tuple(steps), seed, "crashed", since=mark)
            known = self.runs[rid]
        if result is not None and not died:
            if result.status == "completed":
                self._check_completed(rid, result)
            return
        if result is not None and result.status == "completed":
            self._check_completed(rid, result)  # it finished before the write that died
        if known.status != "completed":
            known.status = "crashed"
            known.crashes += 1

    @precondition(lambda self: any(r.status == "completed" for r in self.runs.values()))
    @rule(
        data=st.data(),
        where=st.sampled_from(["a", "b"]),
        how=st.sampled_from(["flip", "older", "delete"]),
    )
    def tamper(self, data: st.DataObject, where: str, how: str) -> None:
        """Damage a completed run's latest checkpoint on one target: a flipped byte, an older
        record of the same run copied over it, or the record deleted."""
        rid = data.draw(
            st.sampled_from(sorted(r for r, v in self.runs.items() if v.status == "completed"))
        )

        async def go() -> None:
            ds = self._runner.datasources[where if where in self.TARGETS else self.TARGETS[0]]
            keys = sorted(await ds.keys(f"_blokrun.ckpt.{rid}/"))
            if not keys:
                return
            latest = keys[-1]
            raw = await ds.load(latest)
            if raw is None:
                return
            if how == "flip":
                await ds.save(latest, raw[:-3] + bytes([raw[-3] ^ 0x40]) + raw[-2:])
            elif how == "older" and len(keys) > 1:
                older = await ds.load(keys[-2])
                if older is not None:
                    await ds.save(latest, older)
            else:
                await ds.delete(latest)

        self._call(go)
        self.runs[rid].tampered = True

    @precondition(lambda self: "b" in self.TARGETS)
    @rule()
    def lose_target_b(self) -> None:
        """Target ``b`` comes back empty (a server restarted without persistence)."""
        shutil.rmtree(self.root / "b", ignore_errors=True)
        (self.root / "b").mkdir(parents=True, exist_ok=True)

    @precondition(lambda self: bool(self.runs))
    @rule(completed=st.booleans(), failed=st.booleans())
    def gc(self, completed: bool, failed: bool) -> None:
        """Collect every completed and/or failed run (age 0): they go whole, others stay."""
        report = self._call(
            self._runner.collect_garbage,
            completed_older_than=0.0 if completed else None,
            failed_older_than=0.0 if failed else None,
            dry_run=False,
        )
        gone = {r.request_id for r in report.runs}
        self.owners = {k: v for k, v in self.owners.items() if v not in gone}
        for rid in gone:
            run = self.runs.pop(rid, None)
            assert run is not None, f"gc deleted {rid}, which the model does not know"
            if run.status == "completed":
                assert completed, rid
            else:
                assert failed or run.status == "crashed", (rid, run.status)
        for rid, run in self.runs.items():
            if run.status == "completed" and completed and not run.tampered:
                raise AssertionError(f"gc kept completed run {rid}: {report}")

    # -- invariants ----------------------------------------------------------------------------

    @invariant()
    def no_completed_step_ran_twice(self) -> None:
        for rid, run in self.runs.items():
            total = self._calls(rid, run.since)
            repeats = sum(n - 1 for n in total.values() if n > 1)
            assert repeats <= run.crashes, (rid, total, run.crashes)

    @invariant()
    def an_alias_belongs_to_its_first_writer_for_good(self) -> None:
        """Every alias (a key under the user's pattern) on the target that never loses data
        names a run whose step renders to it, points at that run's own checkpoint, and keeps
        its owner until that run is collected: no run's record is ever replaced by
        another's."""
        if self.runner is None:
            return

        async def aliases() -> dict[str, tuple[str, str]]:
            ds = self._runner.datasources["a"]
            out: dict[str, tuple[str, str]] = {}
            for key in await ds.keys():
                if key.startswith("_blokrun."):
                    continue
                raw = await ds.load(key)
                record = decode_alias(
                    raw or b"", datasource="a", key=key, envelope=DEFAULT_ENVELOPE
                )
                assert record is not None, key
                out[key] = (record.request_id, record.key)
            return out

        for key, (owner, pointer) in self._call(aliases).items():
            assert key in {f"{owner}-{s}" for s in STEP_NAMES}, (key, owner)
            parsed = parse_checkpoint_key(pointer)
            assert parsed is not None and parsed[0] == owner, (key, owner, pointer)
            first = self.owners.setdefault(key, owner)
            assert first == owner, f"alias {key!r} of run {first!r} now belongs to {owner!r}"

    @invariant()
    def every_known_run_is_found(self) -> None:
        """Nothing verified is lost: each run the model knows has a head somewhere."""
        if self.runner is None or not self.runs:
            return

        async def heads() -> set[str]:
            return {r.request_id async for r in self._runner.iter_runs()}

        found = self._call(heads)
        for rid, run in self.runs.items():
            if run.status in ("completed", "failed"):
                assert rid in found, (rid, run.status, found)


RunRecordMachine.TestCase.settings = settings(
    max_examples=BUDGET,
    stateful_step_count=STEPS,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
test_the_run_record_keeps_its_promise = RunRecordMachine.TestCase
