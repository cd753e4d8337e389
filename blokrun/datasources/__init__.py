"""Datasources: the byte-store contract, the named wrapper, and driver lookup.

This package imports no driver library; :func:`create_store` imports a driver module the
first time a datasource of that type is built.
"""

from __future__ import annotations

from blokrun.datasources.datasource import Datasource, validate_key
from blokrun.datasources.protocol import (
    Capabilities,
    Entry,
    GroupStore,
    HealthStore,
    LeaseState,
    LeaseStore,
    Store,
    StoreHealth,
)
from blokrun.datasources.registry import (
    DRIVERS,
    ENTRY_POINT_GROUP,
    Driver,
    DriverTable,
    create_store,
    register_driver,
)
from blokrun.datasources.settings import DatasourceSettings

__all__ = [
    "DRIVERS",
    "ENTRY_POINT_GROUP",
    "Capabilities",
    "Datasource",
    "DatasourceSettings",
    "Driver",
    "DriverTable",
    "Entry",
    "GroupStore",
    "HealthStore",
    "LeaseState",
    "LeaseStore",
    "Store",
    "StoreHealth",
    "build_datasource",
    "create_store",
    "register_driver",
    "validate_key",
]


def build_datasource(settings: DatasourceSettings) -> Datasource:
    """A (not yet connected) :class:`Datasource` for ``settings``."""
    return Datasource(settings, create_store(settings))
