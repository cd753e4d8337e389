"""Planning a resume: which checkpoint a run continues from, with which state and steps.

:meth:`Planner.plan` locates the run on every target (:mod:`blokrun.persistence.locate`),
picks the workflow (the stored definition, or a given one checked against the steps that
already ran), takes the most advanced *verified* checkpoint, rebuilds its vars (blobs
included) and says which steps are skipped and which run, and what each lagging target
lacks (``repairs``). It writes nothing: the caller takes the run's lease, checks the head
did not move meanwhile (:meth:`Planner.unchanged`), writes the repairs, and drives it.

It **fails closed**: a completed run whose final checkpoint does not verify on any target is
not resumed from an older one (that would report completed with older vars); a run whose
records need an encryption key this process lacks, or that would be written in clear after
being encrypted, is refused before anything is written.

Resuming is idempotent: steps done at the chosen checkpoint never run again, and a
completed run plans nothing to run. ``from_step`` (time travel) plans from the checkpoint
before that step ran; ``set_vars`` edits the rebuilt vars.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from blokrun.errors import (
    BlokrunError,
    ConfigError,
    DefinitionChanged,
    ResumeError,
    RunNotFound,
)
from blokrun.execution.engine import token_hash
from blokrun.persistence.keys import checkpoint_key, head_key
from blokrun.persistence.recorder import Position
from blokrun.persistence.records import HeadRecord, decode_record, validate_request_id
from blokrun.persistence.state import resolve_blobs
from blokrun.spec.graph import step_definitions
from blokrun.spec.schema import validate

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from blokrun.datasources import Datasource, Entry
    from blokrun.persistence.envelope import Envelope
    from blokrun.persistence.leases import Lease
    from blokrun.persistence.locate import FoundRun, Locator
    from blokrun.persistence.records import CheckpointRecord, DefinitionRecord
    from blokrun.spec.loader import Workflow

__all__ = [
    "Planner",
    "Prepared",
    "ResumePlan",
    "accept_input",
    "check_unchanged",
    "set_path",
]

#: Statuses a resume counts as a recovery (the dead-letter count): the run did not end well.
_RECOVERING = frozenset({"failed", "cancelled", "running", "dead"})


@dataclass(frozen=True, slots=True)
class ResumePlan:
    """Which steps a resume skips (done at the checkpoint it starts from) and runs."""

    request_id: str
    workflow: str
    after: str | None  # the step of that checkpoint (None: from the run's start)
    from_seq: int
    skip: tuple[str, ...]
    run: tuple[str, ...]
    attempt: int  # the attempt number the resume will have
    head_status: str | None
    head: HeadRecord | None = None


@dataclass(slots=True)
class Prepared:
    """A planned resume and everything needed to drive it."""

    plan: ResumePlan
    workflow: Workflow
    vars: dict[str, Any]
    inputs: dict[str, Any]
    started_at: float
    incarnation: int
    attempt: int
    done: list[str]
    recoveries: int
    position: Position
    edited: bool
    found: FoundRun
    #: time travel: the step the resume runs again from (its timers and map items, and
    #: those of every later step, start afresh)
    from_step: str | None = None
    #: what each lagging target lacks of the chosen state, written under the lease
    repairs: list[tuple[Datasource, list[Entry]]] = field(default_factory=list)


class Planner:
    """Plans resumes over a store's datasources (see the module docstring)."""

    __slots__ = ("_datasources", "_envelope", "_load_stored", "locator")

    def __init__(
        self,
        locator: Locator,
        datasources: Mapping[str, Datasource],
        envelope: Envelope,
        load_stored: Callable[[DefinitionRecord], Workflow],
    ) -> None:
        self.locator = locator
        self._datasources = datasources
        self._envelope = envelope
        self._load_stored = load_stored

    def candidates(self, wf: Workflow | None) -> list[Datasource]:
        """Where a run's records may be: its workflow's targets, or every datasource."""
        if wf is not None and wf.targets:
            return [self._datasources[n] for n in wf.targets]
        return list(self._datasources.values())

    async def find(
        self,
        request_id: str,
        wf: Workflow | None,
        *,
        scan: bool = True,
        lease: Lease | None = None,
        reading: bool = False,
    ) -> FoundRun | None:
        """The run as its targets hold it, or ``None`` (``scan=False``: a target holding
        neither its head nor its first run record does not hold it; no key listing).
        ``lease``: the run's lease, taken reading :func:`first_keys` (not read again)."""
        try:
            validate_request_id(request_id)
        except ValueError as exc:
            raise RunNotFound(str(exc), request_id=str(request_id)[:200]) from None
        read = None if lease is None or lease.read is None else (lease.datasource, lease.read)
        return await self.locator.locate(
            request_id, self.candidates(wf), scan=scan, read=read, reading=reading
        )

    async def locate(
        self, request_id: str, wf: Workflow | None, *, reading: bool = False
    ) -> FoundRun:
        """The run as its targets hold it, or :class:`~blokrun.errors.RunNotFound`
        (``reading``: see :meth:`Locator.locate`)."""
        found = await self.find(request_id, wf, reading=reading)
        if found is None:
            where = ", ".join(ds.settings.located() for ds in self.candidates(wf))
            raise RunNotFound(
                f"no checkpoint or run record found on {where}", request_id=request_id
            )
        return found

    async def workflow(
        self, request_id: str, found: FoundRun, given: Workflow | None, force: bool
    ) -> tuple[Workflow, bytes | None]:
        """The workflow to drive the run with, and its stored definition's bytes."""
        stored = await self.locator.definition(found)
        record, raw = stored if stored is not None else (None, None)
        if given is not None:
            changed = record is not None and record.definition_hash != given.definition_hash
            if changed and not force:
                assert record is not None
                check_unchanged(request_id, record.document, given, found)
            return given, raw
        if record is not None:
            return self._load_stored(record), raw
        raise ResumeError(
            "the workflow definition is not stored with the run on any of its targets; pass "
            "the workflow (blokrun resume ID --workflow FILE)",
            request_id=request_id,
        )

    def check_encryption(self, found: FoundRun) -> None:
        """Refuse to write a run that was encrypted in clear (no downgrade)."""
        sealed = [v.head.key_id for v in found.views if v.head is not None and v.head.key_id]
        if sealed and self._envelope.key_id is None:
            raise ConfigError(
                f"run {found.request_id} is encrypted (key {sealed[0]!r}) and this process "
                "has no active encryption key: its records would be written in clear. Set "
                "BLOKRUN_ENCRYPTION_KEY (the old key may stay in BLOKRUN_ENCRYPTION_OLD_KEYS)",
                variable="BLOKRUN_ENCRYPTION_KEY",
            )

    async def plan(
        self,
        request_id: str,
        given: Workflow | None,
        *,
        force: bool = False,
        from_step: str | None = None,
        set_vars: Mapping[str, Any] | None = None,
    ) -> Prepared:
        """Plan the resume of ``request_id`` (see the module docstring)."""
        found = await self.locate(request_id, given)
        unreachable = [v for v in found.views if v.error is not None]
        if unreachable:
            view = unreachable[0]
            raise ResumeError(
                f"target {view.datasource.name!r} cannot be read ({view.error}); a resume "
                "reads every target before it writes",
                request_id=request_id,
            ) from view.error
        self.check_encryption(found)
        wf, definition = await self.workflow(request_id, found, given, force)
        head = found.head
        claimed = found.claimed_seq()
        completed = head is not None and head.status == "completed"
        if completed and found.seq < claimed and from_step is None:
            key = checkpoint_key(request_id, found.incarnation, claimed)
            targets = ", ".join(repr(v.datasource.name) for v in found.views)
            raise ResumeError(
                f"completed, but its final checkpoint #{claimed} ({key!r}) does not verify "
                f"on any target ({targets}); the last one that does is #{found.seq}. It is "
                "not reported completed with older vars: 'blokrun inspect ID' shows what is "
                "damaged; 'blokrun resume ID --from-step STEP' runs the later steps again",
                request_id=request_id,
            )
        ckpt: CheckpointRecord | None
        if from_step is not None:
            ckpt, vars_, refs = await self._before(found, wf, from_step)
        else:
            ckpt, vars_, refs = self.locator.state(found)
        if ckpt is not None:
            vars_ = await resolve_blobs(
                vars_, refs, self._datasources, self._envelope, request_id=request_id
            )
            done = list(ckpt.done)
            started_at = ckpt.started_at
        elif found.run is not None:
            vars_, done = dict(found.run.inputs), []
            started_at = found.run.started_at
        else:
            raise ResumeError(
                "the run's start record is missing and it has no checkpoint that verifies: "
                "nothing to resume from",
                request_id=request_id,
            )
        for path, value in (set_vars or {}).items():
            set_path(vars_, path, value, request_id)
        if head is not None and head.status == "completed" and from_step is None:
            done = list(wf.step_names)  # even a last step that was not checkpointed
        attempt = (head.attempt if head is not None else (ckpt.attempt if ckpt else 1)) + 1
        high = max(found.seq, claimed, head.high_seq if head is not None else 0)
        position = Position(seq=high)
        if ckpt is not None:
            position = Position(high, ckpt.seq, ckpt.step, ckpt.key)
        done_set = set(done)
        plan = ResumePlan(
            request_id=request_id,
            workflow=wf.name,
            after=ckpt.step if ckpt is not None else None,
            from_seq=ckpt.seq if ckpt is not None else 0,
            skip=tuple(s for s in wf.step_names if s in done_set),
            run=tuple(s for s in wf.step_names if s not in done_set),
            attempt=attempt,
            head_status=head.status if head is not None else None,
            head=head,
        )
        recovering = head is None or head.status in _RECOVERING
        return Prepared(
            plan=plan,
            workflow=wf,
            vars=vars_,
            inputs=dict(found.run.inputs) if found.run is not None else {},
            started_at=started_at,
            incarnation=max(found.incarnation, 1),
            attempt=attempt,
            done=done,
            recoveries=(head.recoveries if head is not None else 0) + (1 if recovering else 0),
            position=position,
            edited=bool(set_vars),
            found=found,
            from_step=from_step,
            repairs=await self.locator.repairs(found, definition, wf.ttl, wf.targets),
        )

    async def _before(
        self, found: FoundRun, wf: Workflow, step: str
    ) -> tuple[CheckpointRecord | None, dict[str, Any], set[str]]:
        """The latest verified checkpoint taken before ``step`` ran, and its vars."""
        if step not in wf.step_names:
            raise ResumeError(
                f"--from-step {step!r} is not a step of {wf.name!r}; steps: "
                f"{', '.join(wf.step_names)}",
                request_id=found.request_id,
            )
        ds = found.datasource
        listed = await self.locator.history(ds, found.request_id, found.incarnation, found.upto)
        for stored in reversed(listed):
            rec = stored.record
            if rec is None or step in rec.done:
                continue
            rebuilt = await self.locator.rebuild(ds, rec)
            if rebuilt is not None:
                return rec, *rebuilt
        return None, {}, set()

    async def unchanged(self, lease: Lease, found: FoundRun) -> bool:
        """Whether the head under the lease is still the one the resume was planned on."""
        key = head_key(lease.request_id)
        view = next((v for v in found.views if v.datasource is lease.datasource), None)
        head = view.head if view is not None else None
        if lease.read is not None:  # read with the lease (Store.acquire(..., reading=...))
            raw = lease.read.get(key)
        else:
            raw = await lease.datasource.load(key)
        if raw is None:
            if head is not None:
                return False
            # The lease's datasource held no head when planned (it lost it): the plan
            # stood on another target's head -- is that one still the same? (gc may have
            # marked and deleted the run meanwhile.)
            for other in found.views:
                if other is view or other.head is None:
                    continue
                if await self._head_now(other.datasource, key) != other.head:
                    return False
            return True
        stored = self._decoded_head(raw, key)
        return stored is not None and stored == head

    async def _head_now(self, ds: Datasource, key: str) -> HeadRecord | None:
        raw = await ds.load(key)
        return None if raw is None else self._decoded_head(raw, key)

    def _decoded_head(self, raw: bytes, key: str) -> HeadRecord | None:
        try:
            return decode_record(raw, HeadRecord, envelope=self._envelope, bind=key)
        except BlokrunError:
            return None


def check_unchanged(
    request_id: str, stored: Mapping[str, Any], wf: Workflow, found: FoundRun
) -> None:
    """Refuse a given workflow that changed steps the run already completed."""
    done = found.checkpoint.done if found.checkpoint is not None else []
    old_steps = step_definitions(stored)
    new_steps = step_definitions(wf.document)
    changed = []
    for name in done:
        new = new_steps.get(name)
        if new is None:
            changed.append(f"{name!r} (removed)")
        elif old_steps.get(name) != new:
            changed.append(f"{name!r} (changed)")
    if changed:
        raise DefinitionChanged(
            f"the workflow changed steps that already ran: {', '.join(changed)}; "
            "resume with the original definition (omit --workflow) or pass --force "
            "to continue with the new one anyway",
            request_id=request_id,
        )


def set_path(vars_: dict[str, Any], path: str, value: Any, request_id: str) -> None:
    """``vars_["a"]["b"] = value`` for ``path="a.b"``, creating objects on the way."""
    parts = path.split(".")
    if not path or any(not p for p in parts):
        raise ResumeError(f"--set {path!r}: expected a dotted name like a.b", request_id=request_id)
    target: Any = vars_
    for i, part in enumerate(parts[:-1]):
        nxt = target.get(part) if isinstance(target, dict) else None
        if nxt is None:
            nxt = target[part] = {}
        if not isinstance(nxt, dict):
            where = ".".join(parts[: i + 1])
            raise ResumeError(
                f"--set {path!r}: vars.{where} is a {type(nxt).__name__}, not an object",
                request_id=request_id,
            )
        target = nxt
    target[parts[-1]] = value


def accept_input(prepared: Prepared, value: Any, token: str | None) -> dict[str, Any]:
    """The answer for a suspended run's ``await-input`` step, checked: the token must be
    the one its suspension returned, and the input must fit the step's schema. ``{}``
    when the run is not suspended (then no input or token may be given)."""
    head = prepared.plan.head
    rid = prepared.plan.request_id
    if head is None or head.status != "suspended" or head.waiting_step is None:
        if token is not None or value is not None:
            raise ResumeError("is not waiting for input", request_id=rid)
        return {}
    step = head.waiting_step
    if token is None or value is None:
        raise ResumeError(
            f"is suspended at step {step!r} waiting for input: resume it with the input "
            "and the token its suspension returned (blokrun resume ID --input JSON "
            "--token TOKEN)",
            request_id=rid,
            step=step,
        )
    if not hmac.compare_digest(token_hash(rid, step, token), head.token_hash or ""):
        raise ResumeError("wrong token for this run and step", request_id=rid, step=step)
    schema = prepared.workflow.step(step).spec.inputs.get("schema")
    if isinstance(schema, dict):
        problems = validate(value, schema, "$.input")
        if problems:
            raise ResumeError(
                f"input refused, the run stays suspended: {'; '.join(problems[:5])}",
                request_id=rid,
                step=step,
            )
    return {step: value}
