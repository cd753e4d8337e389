"""The CLI's OpenTelemetry: set up from the standard ``OTEL_*`` variables when the ``otel``
extra is installed (see :mod:`blokrun.otel.setup`), and a Prometheus endpoint for
``--metrics-port``. Without those variables and that option nothing is imported."""

from __future__ import annotations

import argparse
import logging
import os
from typing import TYPE_CHECKING

from blokrun.errors import ConfigError

if TYPE_CHECKING:
    from collections.abc import Callable

    from blokrun.runner import Runner

__all__ = ["add_metrics_options", "enable"]

log = logging.getLogger("blokrun.otel")


def _nothing() -> None:
    return None


def enable(
    runner: Runner, *, metrics_port: int | None = None, metrics_host: str = "127.0.0.1"
) -> Callable[[], None]:
    """Instrument ``runner`` if the environment or ``metrics_port`` asks; returns what to
    call when the command ends (flush and stop the exporters)."""
    environ = dict(os.environ)
    wanted = any(k.startswith("OTEL_") for k in environ) or metrics_port is not None
    if not wanted:
        return _nothing
    try:
        from blokrun.otel import configure_from_env, instrument
    except ImportError:
        if metrics_port is not None:
            raise ConfigError(
                "--metrics-port needs the otel extra: pip install 'blokrun[otel]'",
                variable="--metrics-port",
            ) from None
        log.warning(
            "OTEL_* variables are set but the otel extra is not installed "
            "(pip install 'blokrun[otel]'): no traces or metrics"
        )
        return _nothing
    configured = configure_from_env(environ, metrics_port=metrics_port, metrics_host=metrics_host)
    if not configured.enabled:
        return _nothing
    instrument(
        runner,
        tracer_provider=configured.tracer_provider,
        meter_provider=configured.meter_provider,
    )
    if configured.metrics_port is not None:
        log.info("metrics for Prometheus on http://%s:%d/metrics", metrics_host, metrics_port)
    return configured.shutdown


def add_metrics_options(p: argparse.ArgumentParser) -> None:
    """``--metrics-port`` / ``--metrics-host``: serve the metrics for Prometheus."""
    p.add_argument(
        "--metrics-port",
        type=_port,
        default=None,
        metavar="N",
        help="serve metrics for Prometheus on http://HOST:N/metrics (needs the otel extra)",
    )
    p.add_argument(
        "--metrics-host",
        default="127.0.0.1",
        metavar="HOST",
        help="address of the metrics endpoint (default loopback)",
    )


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a port number 1-65535") from None
    if not 0 < port < 65536:
        raise argparse.ArgumentTypeError(f"{port}: expected a port number 1-65535")
    return port
