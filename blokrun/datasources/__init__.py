"""Datasources: the byte-store contract, the named wrapper, and driver lookup.

This package imports no driver library; :func:`create_store` imports a driver module the
first time a datasource of that type is built.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from blokrun.datasources.datasource import Datasource, validate_key
from blokrun.datasources.protocol import Capabilities, Entry, LeaseState, LeaseStore, Store
from blokrun.datasources.registry import DRIVERS, create_store

if TYPE_CHECKING:
    from blokrun.datasources.settings import DatasourceSettings

__all__ = [
    "DRIVERS",
    "Capabilities",
    "Datasource",
    "Entry",
    "LeaseState",
    "LeaseStore",
    "Store",
    "build_datasource",
    "create_store",
    "validate_key",
]


def build_datasource(settings: DatasourceSettings) -> Datasource:
    """A (not yet connected) :class:`Datasource` for ``settings``."""
    return Datasource(settings, create_store(settings))
