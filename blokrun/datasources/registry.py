"""Driver lookup: a table of import strings, imported on first use.

The core imports no driver library until a datasource of that type is built. A type whose
optional dependency is missing raises one :class:`~blokrun.errors.MissingExtraError` that
says what to ``pip install``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from blokrun.errors import ConfigError, MissingExtraError

if TYPE_CHECKING:
    from collections.abc import Callable

    from blokrun.datasources.protocol import Store
    from blokrun.datasources.settings import DatasourceSettings

__all__ = ["DRIVERS", "create_store"]

#: type -> (module, the extra that installs its library, the library's top-level module)
DRIVERS: dict[str, tuple[str, str | None, str | None]] = {
    "memory": ("blokrun.datasources.memory", None, None),
    "filesystem": ("blokrun.datasources.filesystem", None, None),
    "redis": ("blokrun.datasources.redis", "redis", "redis"),
    "postgresql": ("blokrun.datasources.postgresql", "postgresql", "asyncpg"),
    "mongodb": ("blokrun.datasources.mongodb", "mongodb", "pymongo"),
    "s3": ("blokrun.datasources.s3", "s3", "aioboto3"),
}


def create_store(settings: DatasourceSettings) -> Store:
    """Build the driver for ``settings.type`` (imports the driver module on first use)."""
    try:
        module_name, extra, library = DRIVERS[settings.type]
    except KeyError:
        raise ConfigError(
            f"datasource {settings.name!r}: unknown type {settings.type!r}; expected one of: "
            f"{', '.join(sorted(DRIVERS))}",
            variable=f"DATASOURCE_{settings.name.upper()}_TYPE",
        ) from None
    if library is not None:
        try:
            importlib.import_module(library)
        except ImportError as exc:
            raise MissingExtraError(
                f"the {settings.type} driver needs {library!r}, which is not installed: "
                f"pip install 'blokrun[{extra}]'",
                datasource=settings.name,
            ) from exc
    module = importlib.import_module(module_name)
    factory: Callable[[DatasourceSettings], Store] = module.create
    return factory(settings)
