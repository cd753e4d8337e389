"""Nodes the benchmarks use."""

from __future__ import annotations

from typing import Any

#: While true, :func:`provider` fails (a provider that is down, then back).
DOWN = {"now": False}


async def provider(ctx: Any, inputs: dict[str, Any]) -> None:
    if DOWN["now"]:
        raise RuntimeError("the provider is down")
