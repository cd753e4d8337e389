"""How a trace crosses the queue: the contract a tracing integration (:mod:`blokrun.otel`)
fills in, so that the core imports no tracing library.

``runner.tracing`` is ``None`` unless an integration set it. When set, ``runner.resume`` runs
inside :meth:`JobTracing.resuming`, ``submit`` stores
:meth:`JobTracing.inject` in the job (``Job.context``: W3C ``traceparent`` and friends), and
a worker runs each claimed job inside :meth:`JobTracing.job` -- the submitter's trace
context made current, with a span for the claim -- so one trace shows the submit, the claim
and every step on the worker.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from collections.abc import Mapping
    from contextlib import AbstractContextManager

__all__ = ["JobTracing"]


class JobTracing(Protocol):
    def inject(self) -> dict[str, str]:
        """The current trace context as propagation headers (empty: none)."""
        ...

    def job(
        self, carrier: Mapping[str, str], request_id: str, deliveries: int
    ) -> AbstractContextManager[None]:
        """Entered by a worker around a claimed job's run: ``carrier`` is what
        :meth:`inject` gave at submit."""
        ...

    def resuming(self, request_id: str) -> AbstractContextManager[None]:
        """Entered around ``runner.resume`` (finding the run, planning, the attempt)."""
        ...
