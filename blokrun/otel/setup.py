"""Setting up the OpenTelemetry SDK from the standard ``OTEL_*`` variables (the CLI does).

Like OpenTelemetry's own tools: ``OTEL_SDK_DISABLED=true`` turns everything off;
``OTEL_TRACES_EXPORTER`` and ``OTEL_METRICS_EXPORTER`` name the exporters (``otlp``,
``console``, ``none``; comma-separated); when they are not set, ``otlp`` is used if
``OTEL_EXPORTER_OTLP_ENDPOINT`` (or its ``_TRACES_``/``_METRICS_`` form) is set, else nothing
is set up. The OTLP exporter (HTTP/protobuf) reads its own variables (endpoint, headers,
timeout); ``OTEL_SERVICE_NAME`` and ``OTEL_RESOURCE_ATTRIBUTES`` name the service.
A Prometheus port (``blokrun worker --metrics-port``) adds a reader serving ``/metrics``
(on 127.0.0.1 unless ``--metrics-host`` says otherwise).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from blokrun.errors import ConfigError

if TYPE_CHECKING:
    from collections.abc import Mapping

    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.trace import TracerProvider

__all__ = ["Configured", "configure_from_env"]

_KNOWN = frozenset({"otlp", "console", "none"})


@dataclass(slots=True)
class Configured:
    """The providers set up (``None``: that signal is off) and how to flush them."""

    tracer_provider: TracerProvider | None = None
    meter_provider: MeterProvider | None = None
    metrics_port: int | None = None
    _closers: list[Any] = field(default_factory=list)

    @property
    def enabled(self) -> bool:
        return self.tracer_provider is not None or self.meter_provider is not None

    def shutdown(self) -> None:
        """Flush and stop the exporters (the CLI calls it on exit)."""
        for provider in (self.tracer_provider, self.meter_provider):
            if provider is not None:
                provider.shutdown()
        for close in self._closers:
            close()


def _exporters(environ: Mapping[str, str], variable: str, signal: str) -> list[str]:
    raw = environ.get(variable)
    if raw is None:
        endpoint = environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or environ.get(
            f"OTEL_EXPORTER_OTLP_{signal}_ENDPOINT"
        )
        return ["otlp"] if endpoint else []
    names = [n.strip().lower() for n in raw.split(",") if n.strip()]
    unknown = [n for n in names if n not in _KNOWN]
    if unknown:
        raise ConfigError(
            f"{variable}={raw!r}: unknown exporter {unknown[0]!r}; expected one of: "
            f"{', '.join(sorted(_KNOWN))}",
            variable=variable,
        )
    return [n for n in names if n != "none"]


def configure_from_env(
    environ: Mapping[str, str],
    *,
    metrics_port: int | None = None,
    metrics_host: str = "127.0.0.1",
) -> Configured:
    """SDK providers for the ``OTEL_*`` variables of ``environ`` (the CLI passes the
    process's), plus a Prometheus endpoint on ``metrics_host:metrics_port``. Nothing global
    is set: pass the providers to :func:`blokrun.otel.instrument`."""
    env = environ
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return Configured()
    traces = _exporters(env, "OTEL_TRACES_EXPORTER", "TRACES")
    metric_exporters = _exporters(env, "OTEL_METRICS_EXPORTER", "METRICS")
    if not traces and not metric_exporters and metrics_port is None:
        return Configured()
    from opentelemetry.sdk.resources import Resource

    resource = Resource.create({"service.name": env.get("OTEL_SERVICE_NAME") or "blokrun"})
    out = Configured(metrics_port=metrics_port)
    if traces:
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import (
            BatchSpanProcessor,
            ConsoleSpanExporter,
            SimpleSpanProcessor,
        )

        tracer_provider = TracerProvider(resource=resource)
        for name in traces:
            if name == "console":
                tracer_provider.add_span_processor(
                    SimpleSpanProcessor(ConsoleSpanExporter(out=sys.stderr))
                )
            else:
                from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
                    OTLPSpanExporter,
                )

                tracer_provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        out.tracer_provider = tracer_provider
    if metric_exporters or metrics_port is not None:
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import (
            ConsoleMetricExporter,
            MetricReader,
            PeriodicExportingMetricReader,
        )

        readers: list[MetricReader] = []
        for name in metric_exporters:
            if name == "console":
                readers.append(PeriodicExportingMetricReader(ConsoleMetricExporter(out=sys.stderr)))
            else:
                from opentelemetry.exporter.otlp.proto.http.metric_exporter import (
                    OTLPMetricExporter,
                )

                readers.append(PeriodicExportingMetricReader(OTLPMetricExporter()))
        if metrics_port is not None:
            readers.append(_prometheus(out, metrics_port, metrics_host))
        out.meter_provider = MeterProvider(resource=resource, metric_readers=readers)
    return out


def _prometheus(out: Configured, port: int, host: str) -> Any:
    """A reader whose metrics ``/metrics`` on ``host:port`` serves (prometheus_client)."""
    from opentelemetry.exporter.prometheus import PrometheusMetricReader
    from prometheus_client import start_http_server

    try:
        server, thread = start_http_server(port, addr=host)
    except OSError as exc:
        raise ConfigError(
            f"--metrics-port {port}: cannot listen on {host}:{port}: {exc.strerror or exc}",
            variable="--metrics-port",
        ) from exc

    def close() -> None:
        server.shutdown()
        thread.join(timeout=5)

    out._closers.append(close)
    return PrometheusMetricReader()
