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
