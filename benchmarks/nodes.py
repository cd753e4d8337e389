"""Nodes the benchmarks use."""

from __future__ import annotations

from typing import Any

#: While true, :func:`provider` fails (a provider that is down, then back).
DOWN = {"now": False}


async def provider(ctx: Any, inputs: dict[str, Any]) -> None:
    if DOWN["now"]:
        raise RuntimeError("the provider is down")


async def provider_env(ctx: Any, inputs: dict[str, Any]) -> None:
    """Fails while ``BENCH_PROVIDER_DOWN`` is set (for runs in a fresh process)."""
    import os

    if os.environ.get("BENCH_PROVIDER_DOWN"):
        raise RuntimeError("the provider is down")


def blocking_work(ctx: Any, inputs: dict[str, Any]) -> None:
    """A step that blocks for ``seconds`` (a blocking client call); blokrun runs it in a
    worker thread, so the event loop is free meanwhile."""
    import time

    time.sleep(float(inputs["seconds"]))
