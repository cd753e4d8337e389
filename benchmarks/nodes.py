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


async def make_items(ctx: Any, inputs: dict[str, Any]) -> None:
    """``xs = list(range(n))`` in the run's vars (like the built-in ``set``, but the list
    is not written into the workflow's definition record)."""
    ctx.vars["xs"] = list(range(int(inputs["n"])))


async def map_item(ctx: Any, inputs: dict[str, Any]) -> Any:
    """A trivial map item: its result is ``{"v": item}``."""
    return {"v": inputs["x"]}


async def all_items(ctx: Any, inputs: dict[str, Any]) -> Any:
    """The same items as :func:`map_item` in one plain step: the output a map step gives."""
    return {"results": [await map_item(ctx, {"x": x}) for x in inputs["xs"]], "failed": []}
