"""What OpenTelemetry costs per step (``blokrun.otel``).

A linear workflow of 100 trivial steps (the built-in ``set`` node), median per step, on
the memory datasource and on Redis, in four ways, interleaved in one run so the figures
compare: a plain runner; ``instrument``-ed with no SDK (the API's no-op providers: the
extra installed, nothing configured); ``instrument``-ed with the SDK (every span to an
in-memory exporter through a ``SimpleSpanProcessor`` -- exported as it ends, the dearest
way -- and metrics to an in-memory reader); and persistence off, for the floor. The goal
(issue 17): tracing off within noise of the plain runner; on, under a tenth of what a
Redis checkpoint costs over persistence off.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from benchmarks.drivers import _launch, _Skipped, _stop
from benchmarks.runner_overhead import workflow
from blokrun import Runner
from blokrun.config import DatasourceSettings

if TYPE_CHECKING:
    from benchmarks.harness import Report

SECTION = "OpenTelemetry per step"
N = 100


def _runner(settings: list[DatasourceSettings], mode: str) -> tuple[Runner, Any]:
    runner = Runner(settings)
    if mode == "plain":
        return runner, None
    from opentelemetry.metrics import NoOpMeterProvider
    from opentelemetry.trace import NoOpTracerProvider

    from blokrun.otel import instrument

    if mode == "noop":
        instrument(runner, tracer_provider=NoOpTracerProvider(), meter_provider=NoOpMeterProvider())
        return runner, None
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    meters = MeterProvider(metric_readers=[InMemoryMetricReader()])
    instrument(runner, tracer_provider=provider, meter_provider=meters)
    return runner, exporter


async def _measure(
    report: Report, label: str, settings: list[DatasourceSettings], rounds: int
) -> dict[str, float]:
    modes = ("plain", "noop", "sdk")
    runners = {mode: _runner(settings, mode) for mode in modes}
    samples: dict[str, list[float]] = {mode: [] for mode in (*modes, "off")}
    for runner, _ in runners.values():
        await runner.connect()
    try:
        wf = {m: runners[m][0].load(workflow(N, persistence=True)) for m in modes}
        off = runners["plain"][0].load(workflow(N, persistence=False))
        for r in range(rounds + 1):  # interleaved; the first round warms up
            for mode in (*modes, "off"):
                runner = runners["plain" if mode == "off" else mode][0]
                t0 = time.perf_counter()
                await runner.run(off if mode == "off" else wf[mode])
                if r:
                    samples[mode].append((time.perf_counter() - t0) / N)
                exporter = runners.get(mode, (None, None))[1]
                if exporter is not None:
                    exporter.clear()
    finally:
        for runner, _ in runners.values():
            await runner.close()
    med = {mode: statistics.median(v) for mode, v in samples.items()}
    ckpt = med["plain"] - med["off"]
    report.add(SECTION, f"{label}: checkpointed step, no telemetry", med["plain"], "s",
               f"checkpoint = {ckpt * 1e6:.0f} µs over persistence off")  # fmt: skip
    report.add(SECTION, f"{label}: instrumented, no SDK (off)", med["noop"], "s",
               f"{(med['noop'] - med['plain']) * 1e6:+.1f} µs/step")  # fmt: skip
    report.add(SECTION, f"{label}: instrumented, SDK + in-memory exporter (on)", med["sdk"],
               "s", f"{(med['sdk'] - med['plain']) * 1e6:+.1f} µs/step = "
               f"{(med['sdk'] - med['plain']) / ckpt:.2f}x the checkpoint")  # fmt: skip
    return med


def sdk_floor(repeats: int = 20_000) -> float:
    """What the SDK itself takes for what one checkpointed step needs at the least -- two
    spans (one made current, as a step's is) and two histogram records -- with the same
    processor and exporter, outside blokrun: the floor of "on"."""
    from opentelemetry import context, trace
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("floor")
    meter = MeterProvider(metric_readers=[InMemoryMetricReader()]).get_meter("floor")
    steps, ckpts = meter.create_histogram("a"), meter.create_histogram("b")
    labels = {"blokrun.workflow.name": "w", "blokrun.step": "s"}
    t0 = time.perf_counter()
    for i in range(repeats):
        step = tracer.start_span("blokrun.step", attributes={"blokrun.step": "s"})
        token = context.attach(trace.set_span_in_context(step))
        step.end()
        context.detach(token)
        steps.record(0.001, labels)
        ckpt = tracer.start_span("blokrun.checkpoint", attributes={"blokrun.sequence": i})
        ckpt.end()
        ckpts.record(0.001, labels)
        if i % 1000 == 0:
            exporter.clear()
    return (time.perf_counter() - t0) / repeats


async def run(report: Report, quick: bool = False) -> None:
    rounds = 5 if quick else 15
    await _measure(report, "memory", [DatasourceSettings(name="default", type="memory")], rounds)
    with tempfile.TemporaryDirectory(prefix="blokrun-bench-otel-") as tmp:
        server, reason = _launch("redis", Path(tmp))
        if server is None:
            report.add(SECTION, "redis", _Skipped(), "", (reason or "")[:300])
            return
        try:
            med = await _measure(report, "redis", [server.settings("default")], rounds)
        finally:
            _stop(server)
    ckpt = med["plain"] - med["off"]
    on = med["sdk"] - med["plain"]
    off = med["noop"] - med["plain"]
    floor = statistics.median(sdk_floor(5_000 if quick else 20_000) for _ in range(3))
    report.add(SECTION, "the SDK alone: 2 spans + 2 histogram records", floor, "s",
               "the least a traced, checkpointed step can cost (no blokrun code)")  # fmt: skip
    verdict = "met" if on < ckpt / 10 else "missed"
    cause = "" if verdict == "met" else f" (the SDK alone takes {floor * 1e6:.0f} µs)"
    report.add(SECTION, "goal: on < a tenth of a Redis checkpoint", on, "s",
               f"{verdict}: {on * 1e6:.1f} µs vs {ckpt / 10 * 1e6:.1f} µs{cause}; "
               f"off: {off * 1e6:+.1f} µs/step")  # fmt: skip
