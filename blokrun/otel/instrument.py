"""The telemetry of one runner: spans, metrics, trace propagation (see :mod:`blokrun.otel`).

Spans and their parents::

    blokrun.resume (around runner.resume: locate, plan, the attempt)
    └── blokrun.run (one attempt; links to the attempt it continues)
        ├── blokrun.step (the node's own spans nest here)
        ├── blokrun.checkpoint (one per datasource the step's checkpoint goes to)
        └── blokrun.datasource.write (the run's start, its end, ...)
    blokrun.claim (a worker runs a job: child of the submitter's span)
    └── blokrun.run ...

The hook runs before the recorder (``Hook.first``): a step's span ends when its node has
returned, and its checkpoint's spans follow it under the run's span, so a step span is the
node's time and a checkpoint span the storage's.
"""

from __future__ import annotations

import asyncio
import contextvars
import importlib.metadata
import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from opentelemetry import context as otel_context
from opentelemetry import metrics, trace
from opentelemetry.propagate import extract, inject
from opentelemetry.trace import Link, SpanKind, Status, StatusCode

from blokrun.datasources.index import INDEX_KEY, decode_row
from blokrun.execution.hooks import Hook
from blokrun.persistence.keys import parse_checkpoint_key

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping, Sequence

    from opentelemetry.metrics import CallbackOptions, Meter, MeterProvider, Observation
    from opentelemetry.trace import Span, Tracer, TracerProvider

    from blokrun.datasources import Datasource, Entry
    from blokrun.execution.events import RunEnded, RunStarted, StepFinished, StepStarted
    from blokrun.runner import Runner
    from blokrun.workers.worker import Worker

__all__ = ["Telemetry", "instrument"]

log = logging.getLogger("blokrun.otel")


def _version() -> str:
    try:
        return importlib.metadata.version("blokrun")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


_VERSION = _version()

#: the step whose checkpoint is being written in this task: (request id, workflow, step)
_CHECKPOINTING: contextvars.ContextVar[tuple[str, str, str] | None] = contextvars.ContextVar(
    "blokrun_checkpointing", default=None
)
_DURATION_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


@dataclass(slots=True)
class _Open:
    """A span this hook started and made current, and where."""

    span: Span
    token: object
    task: asyncio.Task[Any] | None


@dataclass(slots=True)
class _Write:
    """A datasource write being traced: its span, its metric attributes (checkpoints
    only), when it started."""

    span: Span | None  # None: the run records no spans
    labels: dict[str, str] | None
    t0: float


@dataclass(slots=True)
class _Run:
    run: _Open
    workflow: str
    steps: dict[str, _Open] = field(default_factory=dict)
    #: the run's span records nothing (no SDK, or not sampled): its children would not
    #: either, so no step or write span is made for it (metrics still are)
    quiet: bool = False
    _labels: dict[str, dict[str, str]] = field(default_factory=dict)

    def labels(self, step: str) -> dict[str, str]:
        """The metric attributes of ``step`` (built once per run and step)."""
        found = self._labels.get(step)
        if found is None:
            found = self._labels[step] = {
                "blokrun.workflow.name": self.workflow,
                "blokrun.step": step,
            }
        return found


def _task() -> asyncio.Task[Any] | None:
    try:
        return asyncio.current_task()
    except RuntimeError:
        return None


def _close(opened: _Open) -> None:
    """Make the context current before ``opened`` again -- only in the task that attached
    it (a branch task that died took its context along)."""
    if opened.task is _task():
        otel_context.detach(opened.token)  # type: ignore[arg-type]


class Telemetry(Hook):
    """Spans and metrics of one runner's runs. Build it with :func:`instrument`."""

    first = True

    def __init__(
        self,
        tracer_provider: TracerProvider | None = None,
        meter_provider: MeterProvider | None = None,
    ) -> None:
        self.tracer: Tracer = trace.get_tracer("blokrun", _VERSION, tracer_provider=tracer_provider)
        meter = metrics.get_meter("blokrun", _VERSION, meter_provider=meter_provider)
        self.meter: Meter = meter
        self._runs: dict[str, _Run] = {}
        self._workers: list[Worker] = []
        self._queue: dict[str, int] = {}
        #: seconds between two reads of the queue's counts by a worker's watch
        self.queue_poll = 5.0
        #: metric attributes of checkpoints, per (datasource, workflow, step)
        self._ds_labels: dict[tuple[str, str, str], dict[str, str]] = {}
        self.step_duration = meter.create_histogram(
            "blokrun.step.duration",
            unit="s",
            description="Time a step's node took (its retries included)",
            explicit_bucket_boundaries_advisory=_DURATION_BUCKETS,
        )
        self.checkpoint_duration = meter.create_histogram(
            "blokrun.checkpoint.duration",
            unit="s",
            description="Time one datasource took to store a step's checkpoint",
            explicit_bucket_boundaries_advisory=_DURATION_BUCKETS,
        )
        self.runs_started = meter.create_counter(
            "blokrun.runs.started", unit="{run}", description="Attempts of runs started"
        )
        self.runs_ended = meter.create_counter(
            "blokrun.runs.ended",
            unit="{run}",
            description="Attempts ended, by outcome (completed, failed, cancelled, suspended, "
            "sleeping) and runs dead-lettered (dead)",
        )
        self.in_flight = meter.create_up_down_counter(
            "blokrun.runs.in_flight", unit="{run}", description="Attempts running now"
        )
        self.lease_events = meter.create_counter(
            "blokrun.lease.takeovers",
            unit="{lease}",
            description="Leases taken from a dead process, and leases lost to another one",
        )
        self.group_size = meter.create_histogram(
            "blokrun.group_commit.size",
            unit="{run}",
            description="Runs whose saves shared one round trip (group commit)",
            explicit_bucket_boundaries_advisory=(1, 2, 4, 8, 16, 32, 64, 128, 256),
        )
        meter.create_observable_gauge(
            "blokrun.queue.depth",
            callbacks=[self._observe_depth],
            unit="{job}",
            description="Jobs in the queue, waiting or claimed (workers)",
        )
        meter.create_observable_gauge(
            "blokrun.queue.claim_age",
            callbacks=[self._observe_claim_age],
            unit="s",
            description="Age of the oldest claim a worker of this process holds",
        )

    # -- the hook ---------------------------------------------------------------------------

    async def on_run_start(self, event: RunStarted) -> None:
        wf = event.workflow
        attrs: dict[str, Any] = {
            "blokrun.request_id": event.request_id,
            "blokrun.workflow.name": wf.name,
            "blokrun.workflow.version": wf.version,
            "blokrun.attempt": event.attempt,
            "blokrun.resumed": event.resumed,
            "blokrun.durability": wf.durability or "sync",
        }
        links = []
        if event.resumed:
            attrs["blokrun.resume.from_step"] = event.from_step or ""
            attrs["blokrun.resume.from_seq"] = event.from_seq
            previous = trace.get_current_span(extract(dict(event.previous))).get_span_context()
            if previous.is_valid:
                links.append(Link(previous, {"blokrun.link": "continues"}))
            around = trace.get_current_span()
            if getattr(around, "name", None) == "blokrun.resume" and around.is_recording():
                around.set_attribute("blokrun.resume.from_step", event.from_step or "")
                around.set_attribute("blokrun.resume.from_seq", event.from_seq)
        span = self.tracer.start_span("blokrun.run", links=links, attributes=attrs)
        ctx = trace.set_span_in_context(span)
        token = otel_context.attach(ctx)
        inject(event.context, context=ctx)  # kept with the run's head: a resume links here
        self._runs[event.request_id] = _Run(
            _Open(span, token, _task()), wf.name, quiet=not span.is_recording()
        )
        _CHECKPOINTING.set((event.request_id, wf.name, ""))  # the run's start record
        self.runs_started.add(1, {"blokrun.workflow.name": wf.name})
        self.in_flight.add(1, {"blokrun.workflow.name": wf.name})

    async def before_step(self, event: StepStarted) -> None:
        state = self._runs.get(event.request_id)
        if state is None or state.quiet:
            return
        # the run's span (its parent) names the run, workflow and attempt: a step's span
        # names the step (each attribute costs the SDK ~0.5 µs to check)
        span = self.tracer.start_span("blokrun.step", attributes={"blokrun.step": event.step.name})
        token = otel_context.attach(trace.set_span_in_context(span))
        state.steps[event.step.name] = _Open(span, token, _task())

    async def after_step(self, event: StepFinished) -> None:
        state = self._runs.get(event.request_id)
        if state is None:
            return
        opened = state.steps.pop(event.step.name, None)
        if opened is not None:
            if event.attempts > 1:
                opened.span.set_attribute("blokrun.step.tries", event.attempts)
            if event.skipped:
                opened.span.set_attribute("blokrun.outcome", "skipped")
            opened.span.end()
            _close(opened)
        if not event.skipped:
            self.step_duration.record(event.duration, state.labels(event.step.name))
        _CHECKPOINTING.set((event.request_id, event.workflow.name, event.step.name))

    async def on_run_end(self, event: RunEnded) -> None:
        state = self._runs.pop(event.request_id, None)
        if state is None:
            return
        error = event.error if event.status in ("failed", "cancelled") else None
        for opened in reversed(list(state.steps.values())):  # the step that failed
            if error is not None:
                opened.span.record_exception(error)
                opened.span.set_status(Status(StatusCode.ERROR, type(error).__name__))
            opened.span.set_attribute("blokrun.outcome", event.status)
            opened.span.end()
            _close(opened)
        span = state.run.span
        span.set_attribute("blokrun.outcome", event.status)
        span.set_attribute("blokrun.steps_run", len(event.steps_run))
        if error is not None:
            span.record_exception(error)
            span.set_status(Status(StatusCode.ERROR, type(error).__name__))
        span.end()
        _close(state.run)
        _CHECKPOINTING.set(None)
        wf = {"blokrun.workflow.name": state.workflow}
        self.runs_ended.add(1, {**wf, "blokrun.outcome": event.status})
        self.in_flight.add(-1, wf)

    # -- the datasource observer ------------------------------------------------------------

    def _sequence(self, entries: Sequence[Entry]) -> int | None:
        """The sequence number of the checkpoint in ``entries`` (None: none); counts a run
        marked dead on the way (its index row says so)."""
        seq = None
        for key, data, _ in entries:
            if key == INDEX_KEY:
                row = decode_row(data)
                if row.status == "dead":
                    self.runs_ended.add(
                        1, {"blokrun.workflow.name": row.workflow, "blokrun.outcome": "dead"}
                    )
            elif seq is None and (parsed := parse_checkpoint_key(key)) is not None:
                seq = parsed[2]
        return seq

    def _labels(self, ds: Datasource, workflow: str, step: str) -> dict[str, str]:
        found = self._ds_labels.get((ds.name, workflow, step))
        if found is None:
            found = {
                "blokrun.datasource": ds.name,
                "blokrun.workflow.name": workflow,
                "blokrun.step": step,
            }
            if len(self._ds_labels) < 10_000:  # bounded, whatever the workflows
                self._ds_labels[ds.name, workflow, step] = found
        return found

    def write_started(self, ds: Datasource, entries: Sequence[Entry]) -> object:
        seq = self._sequence(entries)
        step = _CHECKPOINTING.get()
        quiet = self._runs.get(step[0]) if step is not None else None
        if quiet is not None and quiet.quiet:  # no span; the checkpoint's time is measured
            labels = self._labels(ds, step[1], step[2]) if seq is not None and step else None
            return _Write(None, labels, time.perf_counter())
        attrs: dict[str, Any] = {"blokrun.datasource": ds.name, "db.system": ds.type}
        # a run's writes are children of its run span, also when written while a step's
        # span is current (a failed step's status)
        state = self._runs.get(step[0]) if step is not None else None
        parent = trace.set_span_in_context(state.run.span) if state is not None else None
        if seq is None or step is None:
            if step is not None:
                attrs["blokrun.request_id"] = step[0]
            span = self.tracer.start_span(
                "blokrun.datasource.write", parent, SpanKind.CLIENT, attributes=attrs
            )
            return _Write(span, None, 0.0)
        attrs["blokrun.sequence"] = seq
        attrs["blokrun.step"] = step[2]
        span = self.tracer.start_span(
            "blokrun.checkpoint", parent, SpanKind.CLIENT, attributes=attrs
        )
        return _Write(span, self._labels(ds, step[1], step[2]), time.perf_counter())

    def write_ended(self, started: object, error: BaseException | None) -> None:
        assert isinstance(started, _Write)
        span = started.span
        if span is not None:
            if error is not None:
                span.record_exception(error)
                span.set_status(Status(StatusCode.ERROR, type(error).__name__))
            span.end()
        if started.labels is not None and error is None:
            self.checkpoint_duration.record(time.perf_counter() - started.t0, started.labels)

    def flushed(self, ds: Datasource, groups: int) -> None:
        self.group_size.record(groups, {"blokrun.datasource": ds.name})

    def lease_event(self, ds: Datasource, request_id: str, event: str) -> None:
        self.lease_events.add(1, {"blokrun.datasource": ds.name, "blokrun.lease.event": event})

    # -- the queue --------------------------------------------------------------------------

    def inject(self) -> dict[str, str]:
        carrier: dict[str, str] = {}
        inject(carrier)
        return carrier

    @contextmanager
    def resuming(self, request_id: str) -> Iterator[None]:
        with self.tracer.start_as_current_span(
            "blokrun.resume", attributes={"blokrun.request_id": request_id}
        ):
            yield

    @contextmanager
    def job(self, carrier: Mapping[str, str], request_id: str, deliveries: int) -> Iterator[None]:
        parent = extract(dict(carrier))
        with self.tracer.start_as_current_span(
            "blokrun.claim",
            context=parent,
            kind=SpanKind.CONSUMER,
            attributes={"blokrun.request_id": request_id, "blokrun.deliveries": deliveries},
        ):
            yield

    async def watch(self, worker: Worker) -> None:
        """Keep the queue gauges of ``worker`` current (a worker's task runs this), reading
        the queue's counts every :attr:`queue_poll` seconds."""
        import anyio

        self._workers.append(worker)
        try:
            while True:
                try:
                    stats = await worker.queue.stats()
                    self._queue = {"waiting": stats.waiting, "claimed": stats.claimed}
                except Exception as exc:  # a gauge must never stop a worker
                    log.debug("queue gauges: could not read the queue's counts: %s", exc)
                await anyio.sleep(self.queue_poll)
        finally:
            self._workers.remove(worker)

    def _observe_depth(self, options: CallbackOptions) -> Iterator[Observation]:
        from opentelemetry.metrics import Observation

        for state, n in self._queue.items():
            yield Observation(n, {"blokrun.queue.state": state})

    def _observe_claim_age(self, options: CallbackOptions) -> Iterator[Observation]:
        from opentelemetry.metrics import Observation

        now = time.time()
        oldest = min((t for w in self._workers for t in w.claimed_at.values()), default=None)
        if self._workers:
            yield Observation(0.0 if oldest is None else now - oldest)


def instrument(
    runner: Runner,
    *,
    tracer_provider: TracerProvider | None = None,
    meter_provider: MeterProvider | None = None,
) -> Telemetry:
    """Trace and measure ``runner``'s runs (before ``async with runner``). Returns the
    :class:`Telemetry`; calling it twice on one runner returns the first one."""
    existing = runner.tracing
    if isinstance(existing, Telemetry):
        return existing
    telemetry = Telemetry(tracer_provider, meter_provider)
    runner.add_hook(telemetry)
    for ds in runner.datasources.values():
        ds.observer = telemetry
    runner.tracing = telemetry
    return telemetry
