"""Module nodes for tests/unit/test_loader.py (imported as tests.unit.nodes_for_loader)."""

from __future__ import annotations

from typing import Any

NOT_CALLABLE = 42


async def async_node(ctx: Any, inputs: dict[str, Any]) -> dict[str, Any]:
    return inputs


def sync_node(ctx: Any, inputs: dict[str, Any]) -> dict[str, Any]:
    return inputs
