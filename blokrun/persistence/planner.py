"""Planning a resume: which checkpoint a run continues from, with which state and steps.

:meth:`Planner.plan` locates the run on its datasources, picks the workflow (the stored
definition, or a given one checked against the steps that already ran), rolls a head left
behind by a crash forward, rebuilds the vars of the chosen checkpoint (blobs included) and
says which steps are skipped and which run. It writes nothing: the caller takes the run's
lease, checks the head did not move meanwhile (:meth:`Planner.unchanged`), and drives it.

Resuming is idempotent: steps done at the chosen checkpoint never run again, and a
completed run plans nothing to run. ``from_step`` (time travel) plans from the checkpoint
before that step ran; ``set_vars`` edits the rebuilt vars.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from blokrun.errors import BlokrunError, DefinitionChanged, ResumeError, RunNotFound
from blokrun.execution.engine import token_hash
from blokrun.persistence.keys import checkpoint_key, head_key, scan_prefix
from blokrun.persistence.recorder import Position
from blokrun.persistence.records import HeadRecord, decode_record, validate_request_id
from blokrun.persistence.state import resolve_blobs
from blokrun.spec.schema import validate

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from blokrun.datasources import Datasource
    from blokrun.persistence.envelope import Envelope
    from blokrun.persistence.leases import Lease
    from blokrun.persistence.locate import FoundRun, Locator
    from blokrun.persistence.records import DefinitionRecord
    from blokrun.spec.loader import Workflow

__all__ = ["Planner", "Prepared", "ResumePlan", "accept_input", "check_unchanged", "set_path"]

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
    attempt: int
    done: list[str]
    recoveries: int
    position: Position
    edited: bool


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

    async def locate(self, request_id: str, wf: Workflow | None) -> FoundRun:
        """The run on whichever of its datasources knows it best, or :class:`RunNotFound`."""
        try:
            validate_request_id(request_id)
        except ValueError as exc:
            raise RunNotFound(str(exc), request_id=str(request_id)[:200]) from None
        candidates = (
            [self._datasources[n] for n in wf.targets]
            if wf is not None and wf.targets
            else list(self._datasources.values())
        )
        found = await self.locator.locate(
            request_id,
            candidates,
            scan_prefix=scan_prefix(wf, request_id),
            workflow=wf.name if wf is not None else None,
        )
        if found is None:
            where = ", ".join(repr(ds.name) for ds in candidates)
            raise RunNotFound(
                f"no checkpoint or run record found on {where}", request_id=request_id
            )
        return found

    async def _workflow(
        self, request_id: str, found: FoundRun, given: Workflow | None, force: bool
    ) -> Workflow:
        stored = await self.locator.definition(found)
        if given is not None:
            if stored is not None and stored.definition_hash != given.definition_hash and not force:
                check_unchanged(request_id, stored.document, given, found)
            return given
        if stored is not None:
            return self._load_stored(stored)
        raise ResumeError(
            "the workflow definition is not stored with the run; pass the workflow "
            "(blokrun resume ID --workflow FILE)",
            request_id=request_id,
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
        wf = await self._workflow(request_id, found, given, force)
        prefix = scan_prefix(wf, request_id)
        locator = self.locator
        if found.head is None and given is None and prefix != f"{request_id}-":
            # Located without a definition, by the seed's <id>-* convention: now that the
            # definition (and its key pattern) is known, scan where the checkpoints really are.
            better = await locator.scan(found.datasource, request_id, prefix, workflow=wf.name)
            if better and better[0].seq > found.seq:
                found.checkpoint = better[0]
        keys_attempt = found.head.attempt if found.head is not None else 1
        keys_started = found.checkpoint.started_at if found.checkpoint is not None else 0.0
        await locator.roll_forward(
            found,
            wf.step_names,
            lambda step: checkpoint_key(wf, request_id, keys_started, step, keys_attempt, {}),
        )
        head = found.head
        latest_seq = max(found.seq, head.seq, head.high_seq) if head is not None else found.seq
        if from_step is not None:
            if from_step not in wf.step_names:
                raise ResumeError(
                    f"--from-step {from_step!r} is not a step of {wf.name!r}; steps: "
                    f"{', '.join(wf.step_names)}",
                    request_id=request_id,
                )
            workflow_name = found.checkpoint.workflow if found.checkpoint is not None else None
            earlier = await locator.scan(
                found.datasource, request_id, prefix, workflow=workflow_name
            )
            found.checkpoint = next((r for r in earlier if from_step not in r.done), None)
        ckpt, state, refs = await locator.state(found, prefix)
        if ckpt is not None:
            vars_ = await resolve_blobs(
                state, refs, self._datasources, self._envelope, request_id=request_id
            )
            done = list(ckpt.done)
            started_at = ckpt.started_at
        elif found.run is not None:
            vars_, done = dict(found.run.inputs), []
            started_at = found.run.started_at
        else:
            raise ResumeError(
                "the run's start record is missing and it has no checkpoint: "
                "nothing to resume from",
                request_id=request_id,
            )
        for path, value in (set_vars or {}).items():
            set_path(vars_, path, value, request_id)
        if head is not None and head.status == "completed" and from_step is None:
            done = list(wf.step_names)  # even a last step that was not checkpointed
        attempt = (head.attempt if head is not None else (ckpt.attempt if ckpt else 1)) + 1
        position = Position(seq=max(latest_seq, ckpt.seq if ckpt is not None else 0))
        if ckpt is not None:
            last_key = ckpt.key or checkpoint_key(
                wf, request_id, keys_started, ckpt.step, keys_attempt, {}
            )
            position = Position(position.seq, ckpt.seq, ckpt.step, last_key)
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
            attempt=attempt,
            done=done,
            recoveries=(head.recoveries if head is not None else 0) + (1 if recovering else 0),
            position=position,
            edited=bool(set_vars),
        )

    async def unchanged(self, lease: Lease, head: HeadRecord | None) -> bool:
        """Whether the head record under the lease is the one the resume was planned on."""
        raw = await lease.datasource.load(head_key(lease.request_id))
        if raw is None:
            return head is None
        try:
            return decode_record(raw, HeadRecord, envelope=self._envelope) == head
        except BlokrunError:
            return False


def check_unchanged(
    request_id: str, stored: Mapping[str, Any], wf: Workflow, found: FoundRun
) -> None:
    """Refuse a given workflow that changed steps the run already completed."""
    done = found.checkpoint.done if found.checkpoint is not None else []
    old_steps = {s.get("name"): s for s in stored.get("steps", []) if isinstance(s, dict)}
    new_steps = {s.name: s for s in wf.steps}
    changed = []
    for name in done:
        new = new_steps.get(name)
        if new is None:
            changed.append(f"{name!r} (removed)")
        elif orjson.dumps(old_steps.get(name), option=orjson.OPT_SORT_KEYS) != orjson.dumps(
            wf.document["steps"][new.index], option=orjson.OPT_SORT_KEYS
        ):
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
