"""OpenTelemetry traces and metrics for blokrun (``pip install 'blokrun[otel]'``).

::

    from blokrun import Runner
    from blokrun.otel import instrument

    runner = Runner(...)
    instrument(runner)          # the global tracer and meter providers, or pass your own
    async with runner:
        await runner.run("flow.json")

:func:`instrument` adds a :class:`Telemetry` to the runner: a :class:`~blokrun.Hook` that
runs before the recorder (spans ``blokrun.run`` per attempt and ``blokrun.step`` per step,
the run's trace context stored with its head so a resume links to the attempt it
continues), an observer of every datasource write (``blokrun.checkpoint`` per checkpoint
and datasource, ``blokrun.datasource.write`` for other writes), a ``blokrun.resume`` span
around ``runner.resume``, and the runner's :class:`~blokrun.tracing.JobTracing` (the trace
goes with a submitted job to the worker that claims it). Nothing is threaded through the
engine, and nothing of this package is imported unless you import it: without it, or with
no SDK configured (the API's no-op providers), blokrun costs what it did.

No var value and no secret becomes an attribute; sizes do (``blokrun.bytes``).

The CLI sets up the SDK from the standard variables (:func:`configure_from_env`):
``OTEL_TRACES_EXPORTER`` / ``OTEL_METRICS_EXPORTER`` (``otlp``, ``console``, ``none``),
``OTEL_EXPORTER_OTLP_ENDPOINT``, ``OTEL_SERVICE_NAME``, ``OTEL_SDK_DISABLED``; ``blokrun
worker --metrics-port N`` serves the metrics for Prometheus.
"""

from __future__ import annotations

from blokrun.otel.instrument import Telemetry, instrument
from blokrun.otel.setup import Configured, configure_from_env

__all__ = ["Configured", "Telemetry", "configure_from_env", "instrument"]
