"""A worker: claims runs from the queue, runs them under a concurrency limit, acks them.

* A job delivered for the first time is started with :meth:`Runner.run`; a job delivered
  again (its worker died, or released it) is **resumed** from its last checkpoint, so no
  completed step runs twice. The run's lease (with its fencing token) is what keeps two
  workers from driving one run; the queue claim only hands jobs out.
* Claims are renewed every third of their TTL while the run goes on; a worker that dies
  stops renewing, and its jobs go to the other workers after the TTL (at once on the same
  machine, where the lease of a dead process is taken over immediately).
* A run that keeps crashing its workers is dead-lettered by the resume after
  ``Runner.max_resumes`` recoveries (``BLOKRUN_MAX_RESUMES``); its job is then acked.
* A run whose timer step (``sleep``, ``wait-until``) has more than ``sleep_after`` seconds
  left (default: a claim's TTL) *sleeps*: its attempt ends with status ``sleeping``, its job's
  claim is extended to the wake-up time and left to run out (no queue change needed) and its
  slot serves other runs; the worker that claims it when it is due resumes it, and the
  timer, its wake-up time stored, is over.
* A run that ends -- completed, failed (its steps' retries used up), suspended for input,
  dead-lettered -- is acked: the queue is for starting runs, not for retrying failures
  (``runner.resume_failed()`` does that on purpose).
* Stopping (SIGTERM, ``stop`` set): no new claims; running runs get ``grace`` seconds to
  finish, then are cancelled (their completed steps are checkpointed) and their jobs
  released at once for another worker to resume.
* ``per_workflow`` limits are **cluster-wide**: a run of a limited workflow first takes one
  of its N *slot leases* (``_blokrun.slot.<workflow>.<i>``) in the queue's datasource, held
  and renewed like a run's lease and released when the run ends; with no slot free the job
  is *parked* (kept claimed, at most 4x ``concurrency``) and retried each round, so the jobs
  behind it are claimed next. A dead worker's slots expire with its claims.
* A job whose run is busy elsewhere is handed back when the holder's lease would run out
  (at most a third of a claim), never in a tight loop; a queue outage is logged and the
  worker backs off (up to 5 s) instead of ending.
* A job no worker can load -- its workflow refers to a module this worker cannot import,
  its document is invalid here -- is a *poison* job, not an outage: it is handed back after
  a growing pause (so another worker, maybe with the module, can try), and after
  ``LOAD_ATTEMPTS`` deliveries it is dead-lettered with its cause (a head record with status
  ``dead`` and the error, which ``wait`` reports) and acked.
"""

from __future__ import annotations

import logging
import os
import random
import socket
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import anyio

from blokrun.errors import (
    BlokrunError,
    ConfigError,
    LeaseLost,
    ResumeError,
    RunBusy,
    RunError,
    RunNotFound,
    WorkflowError,
)
from blokrun.persistence.leases import SLOT_PREFIX, Lease, acquire
from blokrun.workers.presence import forget, tell

if TYPE_CHECKING:
    from collections.abc import Mapping

    from blokrun.driver import RunResult
    from blokrun.queues.queue import Claim, Queue
    from blokrun.runner import Runner

__all__ = ["Worker", "WorkerStats"]

log = logging.getLogger("blokrun.worker")

#: Deliveries of a job that cannot be loaded before it is dead-lettered.
LOAD_ATTEMPTS = 3


class _Unloadable(Exception):
    """The job's workflow cannot be loaded here (``cause``: the WorkflowError/ConfigError)."""

    def __init__(self, cause: BlokrunError) -> None:
        super().__init__(str(cause))
        self.cause = cause


@dataclass
class WorkerStats:
    """What a worker did. ``outcomes`` counts runs by how they ended; ``slept``, attempts
    that parked their run until a timer's wake-up time (the run goes on later)."""

    claimed: int = 0
    started: int = 0
    resumed: int = 0
    released: int = 0
    slept: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)

    def count(self, outcome: str) -> None:
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1


class Worker:
    """Serve ``queue`` with ``runner``. Use :meth:`serve`; see the module docstring."""

    def __init__(
        self,
        runner: Runner,
        queue: Queue,
        *,
        concurrency: int = 8,
        per_workflow: Mapping[str, int] | None = None,
        claim_ttl: float = 30.0,
        poll: float = 0.05,
        grace: float = 30.0,
        name: str | None = None,
        sleep_after: float | None = None,
    ) -> None:
        if concurrency < 1:
            raise ValueError(f"concurrency {concurrency}: expected >= 1")
        self.runner = runner
        self.queue = queue
        self.concurrency = concurrency
        self.per_workflow = dict(per_workflow or {})
        self.claim_ttl = claim_ttl
        self.poll = poll
        self.grace = grace
        self.name = name or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.stats = WorkerStats()
        #: a timer step with more than this many seconds left parks its run ("sleeping"):
        #: the job is deferred to the wake-up time and the slot serves other runs
        self.sleep_after = claim_ttl if sleep_after is None else sleep_after
        self._wake: dict[str, float] = {}  # sleeping runs: request id -> wake-up time
        self._running: dict[str, anyio.CancelScope] = {}
        #: when each run this worker drives now was handed to it (Unix seconds; metrics)
        self.claimed_at: dict[str, float] = {}
        self._slots: dict[str, Lease] = {}  # request id -> the workflow slot it holds
        self._parked: dict[str, Claim] = {}  # claimed, waiting for a workflow slot
        self.park_limit = 4 * concurrency
        self._stopping = anyio.Event()
        self._slot_free = anyio.Event()

    async def serve(self, stop: anyio.Event | None = None, *, max_runs: int | None = None) -> None:
        """Claim and run jobs until ``stop`` is set (or ``max_runs`` ended), then drain."""
        stop = stop or anyio.Event()
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._heartbeat)
            idle = self.poll
            while not stop.is_set():
                if max_runs is not None and sum(self.stats.outcomes.values()) >= max_runs:
                    break
                try:
                    started = await self._round(tg)
                except BlokrunError as exc:  # the queue's datasource is down: retry later
                    log.warning("worker %s: %s; retrying in %.1fs", self.name, exc, idle)
                    started = False
                    idle = min(idle * 2, 5.0)
                if started:
                    idle = self.poll
                    continue
                await self._idle(stop, idle)
                idle = min(idle * 2, 1.0)
            await self._drain()
            for rid in list(self._parked):
                await self._give_back(rid)
            if self.runner.queue_datasource is not None:
                await forget(self.runner.queue_datasource, self.name)
            tg.cancel_scope.cancel()

    async def _round(self, tg: anyio.abc.TaskGroup) -> bool:
        """Start parked jobs whose slot came free, then claim; whether anything started."""
        started = False
        for claim in list(self._parked.values()):
            if len(self._running) >= self.concurrency:
                break
            if await self._start(tg, claim, parked=True):
                started = True
        free = self.concurrency - len(self._running)
        room = self.park_limit - len(self._parked)
        if free <= 0 or room <= 0:
            return started
        for claim in await self.queue.claim(self.name, min(free, room), self.claim_ttl):
            self.stats.claimed += 1
            started = await self._start(tg, claim) or started
        return started

    async def _idle(self, stop: anyio.Event, seconds: float) -> None:
        """Wait for a free slot, the stop, or ``seconds``."""
        with anyio.move_on_after(seconds):
            self._slot_free = anyio.Event()
            async with anyio.create_task_group() as waiter:

                async def wake(event: anyio.Event) -> None:
                    await event.wait()
                    waiter.cancel_scope.cancel()

                waiter.start_soon(wake, stop)
                waiter.start_soon(wake, self._slot_free)

    async def _give_back(self, request_id: str) -> None:
        self._parked.pop(request_id, None)
        try:
            await self.queue.release(self.name, request_id)
            self.stats.released += 1
        except BlokrunError as exc:  # the claim expires by itself
            log.warning("worker %s: could not release job %s: %s", self.name, request_id, exc)

    async def _start(self, tg: anyio.abc.TaskGroup, claim: Claim, *, parked: bool = False) -> bool:
        """Start ``claim``'s run; a capped workflow with no free slot is *parked*: kept
        claimed (so the jobs behind it are claimed next, not it again) and tried each
        round. Whether it started."""
        job = claim.job
        limit = self.per_workflow.get(job.workflow)
        if limit is not None:
            slot = await self._take_slot(job.workflow, job.request_id, limit)
            if slot is None:
                self._parked[job.request_id] = claim
                return False
            self._slots[job.request_id] = slot
        self._parked.pop(job.request_id, None)
        scope = anyio.CancelScope()
        self._running[job.request_id] = scope
        self.claimed_at[job.request_id] = time.time()
        tg.start_soon(self._run, claim, scope, name=f"blokrun run {job.request_id}")
        return True

    async def _run(self, claim: Claim, scope: anyio.CancelScope) -> None:
        rid = claim.job.request_id
        try:
            outcome, ack = await self._outcome(claim, scope)
        finally:
            self._running.pop(rid, None)
            self.claimed_at.pop(rid, None)
            slot = self._slots.pop(rid, None)
            if slot is not None:
                await slot.release()
            self._slot_free.set()
        wake = self._wake.pop(rid, None)
        if outcome == "sleeping" and wake is not None:
            self.stats.slept += 1
            await self._defer(rid, wake)
            return
        self.stats.count(outcome)
        await self._settle(rid, ack)

    async def _defer(self, rid: str, wake_at: float) -> None:
        """A sleeping run: its job stays in the queue, its claim extended to the wake-up
        time and no longer renewed -- so no worker takes it before then, and the first one
        to claim it after resumes it (a claim that ran out is a redelivery)."""
        with anyio.CancelScope(shield=True):
            try:
                left = max(0.0, wake_at - time.time())
                if rid not in await self.queue.renew(self.name, [rid], left):
                    log.warning("run %s: its claim was lost before it could be deferred", rid)
            except BlokrunError as exc:  # the claim expires; a worker resumes it, sleeps again
                log.warning("run %s: could not defer its job: %s", rid, exc)

    async def _outcome(self, claim: Claim, scope: anyio.CancelScope) -> tuple[str, bool]:
        """Drive the claimed job: (what became of it, whether its job is acked)."""
        rid = claim.job.request_id
        try:
            with scope:
                outcome = await self._drive(claim)
            if scope.cancelled_caught:
                return "cancelled", False
            return outcome, True
        except RunBusy as exc:
            # Driven elsewhere (an operator's resume, a worker whose claim expired): hand the
            # job back, but not at once -- keep it (and this slot) until the holder's lease
            # would run out, at most a third of a claim, so no worker spins on it.
            wait = min(max(exc.expires_at - time.time(), self.poll), self.claim_ttl / 3)
            with anyio.move_on_after(wait):
                await self._stopping.wait()
            return "busy", False
        except LeaseLost:
            return "taken over", False
        except _Unloadable as exc:
            return await self._unloadable(claim, exc.cause)
        except ResumeError as exc:
            log.warning("run %s: %s", rid, exc)
            return ("dead" if "dead-lettered" in str(exc) else "refused"), True
        except RunError as exc:
            log.info("run %s failed: %s", rid, exc.detail)
            return "failed", True
        except BlokrunError as exc:  # a datasource outage: leave the job for later
            log.warning("run %s: %s", rid, exc)
            return "error", False

    async def _settle(self, rid: str, ack: bool) -> None:
        """Ack the job (done with it) or hand it back, whatever cancels the caller."""
        with anyio.CancelScope(shield=True):
            try:
                if ack:
                    await self.queue.ack(self.name, rid)
                else:
                    await self.queue.release(self.name, rid)
                    self.stats.released += 1
            except BlokrunError as exc:  # the claim expires by itself
                log.warning(
                    "run %s: could not %s its job: %s", rid, "ack" if ack else "release", exc
                )

    async def _take_slot(self, workflow: str, request_id: str, limit: int) -> Lease | None:
        """One of ``workflow``'s ``limit`` slot leases, tried in random order; or None."""
        ds = self.runner.queue_datasource
        if ds is None or not ds.supports_leases:
            raise ConfigError(
                "a per-workflow limit needs a queue datasource that keeps leases "
                "(Redis or PostgreSQL)",
                variable="BLOKRUN_QUEUE_DATASOURCE",
            )
        owner = f"{self.name}:{request_id}"
        for i in random.sample(range(limit), limit):
            try:
                return await acquire(
                    ds, f"{workflow}.{i}", self.claim_ttl, owner, prefix=SLOT_PREFIX
                )
            except RunBusy:
                continue
        return None

    async def _drive(self, claim: Claim) -> str:
        tracing = self.runner.tracing
        if tracing is None:
            return await self._drive_job(claim)
        with tracing.job(claim.job.context, claim.job.request_id, claim.deliveries):
            return await self._drive_job(claim)

    async def _drive_job(self, claim: Claim) -> str:
        job = claim.job
        if claim.deliveries > 1:
            try:
                result = await self.runner.resume(
                    job.request_id, park_timers_after=self.sleep_after
                )
            except RunNotFound:
                pass  # claimed before, but its worker died before the run started
            else:
                self.stats.resumed += 1
                return self._ended(job.request_id, result)
        try:
            wf = self.runner.load(job.document, name=job.source)
        except (WorkflowError, ConfigError) as exc:
            raise _Unloadable(exc) from exc
        self.stats.started += 1
        result = await self.runner.run(
            wf,
            job.inputs,
            request_id=job.request_id,
            park_timers_after=self.sleep_after,
            tags=job.tags,
        )
        return self._ended(job.request_id, result)

    def _ended(self, rid: str, result: RunResult) -> str:
        if result.status == "sleeping" and result.wake_at is not None:
            self._wake[rid] = result.wake_at
        return result.status

    async def _unloadable(self, claim: Claim, cause: BlokrunError) -> tuple[str, bool]:
        """A job this worker cannot load: pause and hand it back, or after
        ``LOAD_ATTEMPTS`` deliveries dead-letter it with its cause. (outcome, ack)."""
        rid = claim.job.request_id
        if claim.deliveries < LOAD_ATTEMPTS:
            pause = min(0.5 * 2 ** (claim.deliveries - 1), self.claim_ttl / 3)
            log.warning(
                "run %s: cannot load its workflow here (delivery %d of %d; handed back in "
                "%.1fs): %s",
                rid,
                claim.deliveries,
                LOAD_ATTEMPTS,
                pause,
                cause,
            )
            with anyio.move_on_after(pause):
                await self._stopping.wait()
            return "unloadable", False
        reason = (
            f"dead-lettered after {claim.deliveries} deliveries: its workflow cannot be "
            f"loaded by the workers: {cause}"
        )
        log.error("run %s: %s", rid, reason)
        try:
            await self.runner.store.mark_unloadable(
                rid, claim.job.document, reason, inputs=claim.job.inputs, source=claim.job.source
            )
        except BlokrunError as exc:
            log.warning("run %s: could not record why it was dead-lettered: %s", rid, exc)
        return "dead", True

    async def _tell(self) -> None:
        ds = self.runner.queue_datasource
        if ds is not None:
            await tell(ds, self.name, concurrency=self.concurrency, running=list(self._running),
                       parked=list(self._parked), ttl=self.claim_ttl)  # fmt: skip

    async def _heartbeat(self) -> None:
        interval = max(self.claim_ttl / 3, 0.05)
        await self._tell()
        while True:
            await anyio.sleep(interval)
            await self._tell()
            ids = [*self._running, *self._parked]
            if not ids:
                continue
            try:
                held = await self.queue.renew(self.name, ids, self.claim_ttl)
                for rid, slot in list(self._slots.items()):
                    if self._slots.get(rid) is slot:  # not released meanwhile
                        await slot.renew()
            except BlokrunError as exc:
                log.warning("worker %s: could not renew its claims: %s", self.name, exc)
                continue
            for rid in set(ids) - held:
                # The claim expired and went elsewhere; the run's lease still decides who
                # drives it, so this run goes on unless its fenced writes are refused.
                log.warning("worker %s: lost the claim on run %s", self.name, rid)

    async def _drain(self) -> None:
        """Let running runs finish for ``grace`` seconds, then cancel them."""
        self._stopping.set()
        deadline = time.monotonic() + self.grace
        while self._running and time.monotonic() < deadline:
            self._slot_free = anyio.Event()
            with anyio.move_on_after(min(0.2, max(deadline - time.monotonic(), 0))):
                await self._slot_free.wait()
        for scope in list(self._running.values()):
            scope.cancel()
        while self._running:  # cancelled runs record their status, then leave
            self._slot_free = anyio.Event()
            with anyio.move_on_after(0.1):
                await self._slot_free.wait()
