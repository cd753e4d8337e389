"""Fixtures every integration test gets."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.integration import wfnodes


@pytest.fixture(autouse=True)
def _fresh_nodes() -> Iterator[None]:
    """The nodes' shared state (calls, failures to inject, the gate) is empty for each test."""
    wfnodes.reset()
    yield
    wfnodes.reset()
