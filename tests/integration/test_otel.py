"""OpenTelemetry (blokrun.otel) with the SDK's in-memory exporters: the span tree of a run
that fails and is resumed, of a parallel level, of submit -> worker (one trace end to end);
a node's own spans under its step; metric values after known runs; no var value and no
secret in any attribute."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any
from uuid import uuid4

import anyio
import pytest
from opentelemetry import trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from blokrun import Runner, StepFailed
from blokrun.config import DatasourceSettings
from blokrun.otel import Telemetry, instrument
from blokrun.persistence import leases
from blokrun.workers import serve
from tests.conftest import ServerPool
from tests.integration import wfnodes

NODE = "tests.integration.wfnodes"
SECRET = "hunter2-very-secret-value"


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def provider(exporter: InMemorySpanExporter) -> TracerProvider:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider


@pytest.fixture
def reader() -> InMemoryMetricReader:
    return InMemoryMetricReader()


@pytest.fixture(autouse=True)
def _clean() -> Iterator[None]:
    wfnodes.FAIL_AT.clear()
    yield
    wfnodes.FAIL_AT.clear()


def linear(n: int = 3) -> dict[str, Any]:
    return {
        "name": "lin",
        "version": "7",
        "steps": [
            {"name": "s1", "node": "set", "inputs": {"password": SECRET}},
            *(
                {"name": f"s{i}", "node": f"{NODE}:add", "inputs": {"n": 1}}
                for i in range(2, n + 1)
            ),
        ],
    }


def make_runner(
    tmp_path: Path, provider: TracerProvider, reader: InMemoryMetricReader, **kw: Any
) -> tuple[Runner, Telemetry]:
    settings = [
        DatasourceSettings(name="default", type="filesystem", path=str(tmp_path / "a")),
        DatasourceSettings(name="mirror", type="memory"),
    ]
    runner = Runner(settings, **kw)
    telemetry = instrument(
        runner, tracer_provider=provider, meter_provider=MeterProvider(metric_readers=[reader])
    )
    return runner, telemetry


def attr(span: ReadableSpan | Any) -> dict[str, Any]:
    return dict(span.attributes or {})


def named(spans: tuple[ReadableSpan, ...] | list[ReadableSpan], name: str) -> list[ReadableSpan]:
    return [s for s in spans if s.name == name]


def parent_of(span: ReadableSpan, spans: list[ReadableSpan]) -> ReadableSpan | None:
    if span.parent is None:
        return None
    return next((s for s in spans if s.context.span_id == span.parent.span_id), None)


def metric_points(reader: InMemoryMetricReader) -> dict[str, list[Any]]:
    data = reader.get_metrics_data()
    out: dict[str, list[Any]] = {}
    assert data is not None
    for rm in data.resource_metrics:
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                out.setdefault(m.name, []).extend(m.data.data_points)
    return out


async def test_a_failed_run_and_its_resume_make_one_linked_story(
    tmp_path: Path,
    provider: TracerProvider,
    exporter: InMemorySpanExporter,
    reader: InMemoryMetricReader,
) -> None:
    wf = {**linear(3), "persistence": {"targets": ["default", "mirror"]}}
    runner, _ = make_runner(tmp_path, provider, reader)
    request_tracer = provider.get_tracer("service")
    async with runner:
        with request_tracer.start_as_current_span("POST /orders") as request:
            wfnodes.FAIL_AT.add("s3")
            with pytest.raises(StepFailed):
                await runner.run(wf, request_id="r-1")
        first = list(exporter.get_finished_spans())
        (run,) = named(first, "blokrun.run")
        # the run is a child of the request that started it, in its trace
        assert run.parent is not None and run.parent.span_id == request.get_span_context().span_id
        assert run.context.trace_id == request.get_span_context().trace_id
        assert attr(run)["blokrun.request_id"] == "r-1"
        assert attr(run)["blokrun.workflow.name"] == "lin"
        assert attr(run)["blokrun.workflow.version"] == "7"
        assert attr(run)["blokrun.outcome"] == "failed"
        assert run.status.status_code.name == "ERROR"
        assert any(e.name == "exception" for e in run.events)
        steps = named(first, "blokrun.step")
        assert [attr(s)["blokrun.step"] for s in steps] == ["s1", "s2", "s3"]
        assert all(parent_of(s, first) is run for s in steps)
        failed = steps[-1]
        assert failed.status.status_code.name == "ERROR"
        assert "s3 failed on purpose" in str(failed.events[0].attributes)
        checkpoints = named(first, "blokrun.checkpoint")
        # two checkpoints (s1, s2), each on both datasources, under the run, after its step
        assert sorted(
            (attr(c)["blokrun.step"], attr(c)["blokrun.datasource"]) for c in checkpoints
        ) == [("s1", "default"), ("s1", "mirror"), ("s2", "default"), ("s2", "mirror")]
        assert {attr(c)["db.system"] for c in checkpoints} == {"filesystem", "memory"}
        assert all(parent_of(c, first) is run for c in checkpoints)
        assert sorted(attr(c)["blokrun.sequence"] for c in checkpoints) == [1, 1, 2, 2]

        exporter.clear()
        wfnodes.FAIL_AT.clear()
        result = await runner.resume("r-1")
        assert result.status == "completed"
        second = list(exporter.get_finished_spans())
        (resume,) = named(second, "blokrun.resume")
        (again,) = named(second, "blokrun.run")
        assert parent_of(again, second) is resume
        assert attr(resume)["blokrun.resume.from_step"] == "s2"
        assert attr(resume)["blokrun.resume.from_seq"] == 2
        assert attr(again)["blokrun.resumed"] is True and attr(again)["blokrun.attempt"] == 2
        # the resumed attempt links to the attempt it continues (stored with the run's head)
        assert [link.context.span_id for link in again.links] == [run.context.span_id]
        assert [attr(s)["blokrun.step"] for s in named(second, "blokrun.step")] == ["s3"]
        # no var value anywhere
        for span in first + second:
            assert SECRET not in str(dict(span.attributes or {}))
            assert SECRET not in str([dict(e.attributes or {}) for e in span.events])


async def test_a_nodes_own_spans_nest_under_its_step_in_a_parallel_level(
    tmp_path: Path,
    provider: TracerProvider,
    exporter: InMemorySpanExporter,
    reader: InMemoryMetricReader,
) -> None:
    tracer = provider.get_tracer("node")

    async def work(ctx: Any, inputs: dict[str, Any]) -> Any:
        with tracer.start_as_current_span(f"work {ctx.step}"):
            await anyio.sleep(0.02)  # the two branches overlap
        return {"ok": ctx.step}

    wf = {
        "name": "fan",
        "steps": [
            {"name": "a", "node": "work"},
            {"name": "b", "node": "work", "depends_on": ["a"]},
            {"name": "c", "node": "work", "depends_on": ["a"]},
            {"name": "d", "node": "work", "depends_on": ["b", "c"]},
        ],
    }
    runner, _ = make_runner(tmp_path, provider, reader, nodes={"work": work})
    async with runner:
        await runner.run(wf, request_id="fan-1")
    spans = list(exporter.get_finished_spans())
    (run,) = named(spans, "blokrun.run")
    steps = {attr(s)["blokrun.step"]: s for s in named(spans, "blokrun.step")}
    assert set(steps) == {"a", "b", "c", "d"}
    assert all(parent_of(s, spans) is run for s in steps.values())
    b, c = steps["b"], steps["c"]
    assert b.start_time and b.end_time and c.start_time and c.end_time
    assert b.start_time < c.end_time and c.start_time < b.end_time  # side by side
    for name, step in steps.items():
        (own,) = [s for s in spans if s.name == f"work {name}"]
        assert parent_of(own, spans) is step


async def test_submit_to_worker_is_one_trace(
    provider: TracerProvider, exporter: InMemorySpanExporter, reader: InMemoryMetricReader
) -> None:
    runner = Runner([DatasourceSettings(name="default", type="memory")], lease_ttl=2.0)
    instrument(
        runner, tracer_provider=provider, meter_provider=MeterProvider(metric_readers=[reader])
    )
    tracer = provider.get_tracer("service")
    async with runner:
        with tracer.start_as_current_span("POST /jobs") as request:
            await runner.submit(linear(2), request_id="job-1")
        trace_id = request.get_span_context().trace_id
        stop = anyio.Event()
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: serve(runner, concurrency=2, stop=stop))
            with anyio.fail_after(10):
                assert (await runner.wait("job-1")).status == "completed"
            stop.set()
    spans = list(exporter.get_finished_spans())
    (claim,) = named(spans, "blokrun.claim")
    (run,) = named(spans, "blokrun.run")
    assert claim.parent is not None and claim.parent.span_id == request.get_span_context().span_id
    assert parent_of(run, spans) is claim
    # the job's spans, all in the submitter's trace: claim, run, its steps and checkpoints
    ours = [s for s in spans if s.context.trace_id == trace_id]
    assert {"blokrun.claim", "blokrun.run", "blokrun.step", "blokrun.checkpoint"} <= {
        s.name for s in ours
    }
    steps = named(spans, "blokrun.step")
    assert len(steps) == 2 and all(s.context.trace_id == trace_id for s in steps)
    # the worker's own presence writes are traces of their own, never the job's
    others = [s for s in spans if s.context.trace_id != trace_id]
    assert all(s.name == "blokrun.datasource.write" for s in others)


async def test_metrics_after_known_runs(
    tmp_path: Path, provider: TracerProvider, reader: InMemoryMetricReader
) -> None:
    runner, _ = make_runner(tmp_path, provider, reader)
    wf = {**linear(3), "persistence": {"targets": ["default", "mirror"]}}
    async with runner:
        for i in range(4):
            await runner.run(wf, request_id=f"ok-{i}")
        wfnodes.FAIL_AT.add("s2")
        for i in range(2):
            with pytest.raises(StepFailed):
                await runner.run(wf, request_id=f"bad-{i}")
    points = metric_points(reader)
    started = {attr(p)["blokrun.workflow.name"]: p.value for p in points["blokrun.runs.started"]}
    assert started == {"lin": 6}
    ended = {attr(p)["blokrun.outcome"]: p.value for p in points["blokrun.runs.ended"]}
    assert ended == {"completed": 4, "failed": 2}
    assert [p.value for p in points["blokrun.runs.in_flight"]] == [0]
    steps = {attr(p)["blokrun.step"]: p.count for p in points["blokrun.step.duration"]}
    assert steps == {"s1": 6, "s2": 4, "s3": 4}  # a failed step has no duration recorded
    per_ds: dict[str, int] = {}
    for p in points["blokrun.checkpoint.duration"]:
        key = attr(p)["blokrun.datasource"]
        per_ds[key] = per_ds.get(key, 0) + p.count
    assert per_ds == {"default": 14, "mirror": 14}  # 4 runs x 3 + 2 runs x 1, on each


async def test_instrument_twice_is_one_telemetry_and_off_costs_no_spans(
    tmp_path: Path,
    provider: TracerProvider,
    exporter: InMemorySpanExporter,
    reader: InMemoryMetricReader,
) -> None:
    runner, telemetry = make_runner(tmp_path, provider, reader)
    assert instrument(runner) is telemetry
    plain = Runner(
        [DatasourceSettings(name="default", type="filesystem", path=str(tmp_path / "p"))]
    )
    async with plain:
        await plain.run(linear(2), request_id="plain")
    assert exporter.get_finished_spans() == ()
    assert trace.get_current_span() is trace.INVALID_SPAN


async def test_lease_takeovers_and_group_commit_sizes_are_counted(
    server_pool: ServerPool, provider: TracerProvider, reader: InMemoryMetricReader
) -> None:
    settings = server_pool.get("redis").settings("default", prefix=f"ot-{uuid4().hex[:8]}/")
    runner = Runner([settings])
    instrument(
        runner, tracer_provider=provider, meter_provider=MeterProvider(metric_readers=[reader])
    )
    async with runner:
        wfnodes.FAIL_AT.add("s2")
        with pytest.raises(StepFailed):
            await runner.run(linear(2), request_id="taken")
        wfnodes.FAIL_AT.clear()
        # a holder of this machine whose process is gone (its pid is ours, its name unknown
        # here: no code of this process holds it)
        dead = f"{socket.gethostname()}/{leases._NODE}:{os.getpid()}:deadbeef0000"
        await runner.datasources["default"].acquire_lease("_blokrun.lease.taken", dead, 60)
        assert (await runner.resume("taken")).status == "completed"
        async with anyio.create_task_group() as tg:  # concurrent runs share round trips
            for i in range(40):
                tg.start_soon(partial(runner.run, linear(3), request_id=f"many-{i}"))
    points = metric_points(reader)
    (taken,) = points["blokrun.lease.takeovers"]
    assert attr(taken)["blokrun.lease.event"] == "taken_from_dead" and taken.value == 1
    (sizes,) = points["blokrun.group_commit.size"]
    assert sizes.count >= 1 and sizes.max > 1  # some flush carried several runs' saves


async def test_queue_gauges_on_a_worker(
    provider: TracerProvider, reader: InMemoryMetricReader
) -> None:
    gate = anyio.Event()

    async def wait_gate(ctx: Any, inputs: dict[str, Any]) -> Any:
        await gate.wait()
        return {}

    runner = Runner(
        [DatasourceSettings(name="default", type="memory")],
        lease_ttl=5.0,
        nodes={"gate": wait_gate},
    )
    telemetry = instrument(
        runner, tracer_provider=provider, meter_provider=MeterProvider(metric_readers=[reader])
    )
    telemetry.queue_poll = 0.02
    flow = {"name": "gated", "steps": [{"name": "g", "node": "gate"}]}
    async with runner:
        for i in range(5):
            await runner.submit(flow, request_id=f"q-{i}")
        stop = anyio.Event()
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: serve(runner, concurrency=2, stop=stop))
            depth: dict[str, float] = {}
            age: list[float] = []
            with anyio.fail_after(10):
                while depth.get("claimed") != 2 or not age or age[0] <= 0:
                    await anyio.sleep(0.05)
                    points = metric_points(reader)
                    depth = {
                        attr(p)["blokrun.queue.state"]: p.value
                        for p in points.get("blokrun.queue.depth", [])
                    }
                    age = [p.value for p in points.get("blokrun.queue.claim_age", [])]
            assert depth == {"waiting": 3, "claimed": 2}
            gate.set()
            with anyio.fail_after(10):
                for i in range(5):
                    await runner.wait(f"q-{i}")
            stop.set()


async def test_without_an_sdk_runs_make_no_spans_and_still_measure(
    tmp_path: Path, reader: InMemoryMetricReader
) -> None:
    """Instrumented with the API's no-op tracer (no SDK set up, or a trace not sampled):
    no step or write span is made, the trace context stays valid, metrics are recorded."""
    from opentelemetry.trace import NoOpTracerProvider

    runner = Runner(
        [DatasourceSettings(name="default", type="filesystem", path=str(tmp_path / "q"))]
    )
    telemetry = instrument(
        runner,
        tracer_provider=NoOpTracerProvider(),
        meter_provider=MeterProvider(metric_readers=[reader]),
    )
    async with runner:
        await runner.run(linear(3), request_id="quiet")
        assert telemetry._runs == {}
    points = metric_points(reader)
    assert sum(p.count for p in points["blokrun.step.duration"]) == 3
    assert sum(p.count for p in points["blokrun.checkpoint.duration"]) == 3
    assert trace.get_current_span() is trace.INVALID_SPAN
