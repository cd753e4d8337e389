"""The driver table: everything about a datasource type in one typed entry.

A :class:`Driver` says where its store comes from (an import string, imported on first use,
so the core imports no driver library), which extra installs its library, the URL schemes
it accepts, whether it needs a URL or a folder, the settings it takes beyond the common ones,
and where its run queue comes from when it can hold one. Configuration (``blokrun.config``),
store creation and the run queue all read this one table; a new driver touches nothing else.

Third-party drivers are found two ways:

* :func:`register_driver` -- from code, before the datasources are built;
* the ``blokrun.drivers`` entry-point group -- a package declares
  ``[project.entry-points."blokrun.drivers"] mydb = "mypkg.blokrun_driver:DRIVER"`` where
  ``DRIVER`` is a :class:`Driver`; it is loaded the first time the table is asked for a type
  it does not know (or for every type), so ``DATASOURCE_X_TYPE=mydb`` just works.

The table is per process, like Python's codec registry: drivers are code, found by name.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points
from typing import TYPE_CHECKING, Any

from blokrun.errors import ConfigError, MissingExtraError

if TYPE_CHECKING:
    from collections.abc import Iterator

    from blokrun.datasources.protocol import Store
    from blokrun.datasources.settings import DatasourceSettings

__all__ = [
    "COMMON_SETTINGS",
    "DRIVERS",
    "ENTRY_POINT_GROUP",
    "Driver",
    "DriverTable",
    "create_store",
    "register_driver",
]

#: The entry-point group a package ships drivers in.
ENTRY_POINT_GROUP = "blokrun.drivers"

#: Settings every driver takes (``DATASOURCE_<NAME>_<SETTING>``).
COMMON_SETTINGS = frozenset({"TYPE", "PREFIX", "TTL", "TIMEOUT"})

#: Settings that fill a field of :class:`DatasourceSettings`; any other setting a driver
#: declares is passed in ``DatasourceSettings.options``.
FIELD_SETTINGS = frozenset(
    {
        "URL",
        "PATH",
        "TABLE",
        "COLLECTION",
        "DATABASE",
        "REGION",
        "ENDPOINT_URL",
        "ACCESS_KEY_ID",
        "SECRET_ACCESS_KEY",
        "POOL_SIZE",
        "FSYNC",
    }
)

StoreFactory = Callable[["DatasourceSettings"], "Store"]


@dataclass(frozen=True, slots=True)
class Driver:
    """One datasource type.

    ``store``: ``"module:function"`` (or the function) that builds the store from settings.
    ``library``/``extra``: the library it needs and the ``pip install 'blokrun[extra]'`` that
    brings it (checked before importing ``store``, for a clear error). ``schemes``: URL
    schemes it accepts (empty: any). ``needs``: settings it cannot do without. ``settings``:
    every setting it takes beyond :data:`COMMON_SETTINGS`. ``queue``: ``"module:function"``
    building a run queue on a datasource of this type, if it can hold one. ``aliases``: other
    names ``DATASOURCE_<NAME>_TYPE`` may use.
    """

    name: str
    store: str | StoreFactory
    library: str | None = None
    extra: str | None = None
    schemes: tuple[str, ...] = ()
    needs: frozenset[str] = frozenset()
    settings: frozenset[str] = frozenset()
    queue: str | None = None
    aliases: tuple[str, ...] = ()
    origin: str = field(default="blokrun", compare=False)

    def __post_init__(self) -> None:
        if not self.name or self.name != self.name.lower() or not self.name.isidentifier():
            raise ConfigError(
                f"driver name {self.name!r}: expected a lower-case identifier (it is what "
                "DATASOURCE_<NAME>_TYPE names)"
            )
        unknown = sorted(self.needs - self.settings)
        if unknown:
            raise ConfigError(f"driver {self.name!r}: needs {unknown} it does not take")
        if not callable(self.store) and ":" not in self.store:
            raise ConfigError(f"driver {self.name!r}: store {self.store!r} is not module:function")

    @property
    def takes(self) -> frozenset[str]:
        """Every ``DATASOURCE_<NAME>_<SETTING>`` a datasource of this type may set."""
        return COMMON_SETTINGS | self.settings

    def factory(self) -> StoreFactory:
        """The store factory, its library checked and its module imported."""
        if self.library is not None:
            try:
                importlib.import_module(self.library)
            except ImportError as exc:
                how = f"pip install 'blokrun[{self.extra}]'" if self.extra else "install it"
                raise MissingExtraError(
                    f"the {self.name} driver needs {self.library!r}, which is not installed: {how}"
                ) from exc
        if callable(self.store):
            return self.store
        factory: StoreFactory = _resolve(self.store, f"driver {self.name!r} ({self.origin})")
        return factory


def _resolve(target: str, what: str) -> Any:
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"{what}: cannot import {module_name!r}: {exc}") from exc
    try:
        return getattr(module, attr)
    except AttributeError:
        raise ConfigError(f"{what}: {module_name!r} has no {attr!r}") from None


_URL_SETTINGS = frozenset({"URL", "POOL_SIZE"})

BUILTIN: tuple[Driver, ...] = (
    Driver(
        "memory", "blokrun.datasources.memory:create", queue="blokrun.queues.memory_queue:create"
    ),
    Driver(
        "filesystem",
        "blokrun.datasources.filesystem:create",
        needs=frozenset({"PATH"}),
        settings=frozenset({"PATH", "FSYNC"}),
        aliases=("file", "fs"),
    ),
    Driver(
        "redis",
        "blokrun.datasources.redis:create",
        library="redis",
        extra="redis",
        schemes=("redis", "rediss", "unix"),
        needs=frozenset({"URL"}),
        settings=_URL_SETTINGS,
        queue="blokrun.queues.redis_queue:create",
    ),
    Driver(
        "postgresql",
        "blokrun.datasources.postgresql:create",
        library="asyncpg",
        extra="postgresql",
        schemes=("postgresql", "postgres"),
        needs=frozenset({"URL"}),
        settings=_URL_SETTINGS | {"TABLE"},
        queue="blokrun.queues.pg_queue:create",
        aliases=("postgres", "pg"),
    ),
    Driver(
        "mongodb",
        "blokrun.datasources.mongodb:create",
        library="pymongo",
        extra="mongodb",
        schemes=("mongodb", "mongodb+srv"),
        needs=frozenset({"URL"}),
        settings=_URL_SETTINGS | {"DATABASE", "COLLECTION"},
        aliases=("mongo",),
    ),
    Driver(
        "s3",
        "blokrun.datasources.s3:create",
        library="aioboto3",
        extra="s3",
        schemes=("s3",),
        needs=frozenset({"URL"}),
        settings=frozenset(
            {"URL", "POOL_SIZE", "REGION", "ENDPOINT_URL", "ACCESS_KEY_ID", "SECRET_ACCESS_KEY"}
        ),
    ),
)


class DriverTable:
    """Drivers by name (and alias): the built-in ones, registered ones, entry points."""

    __slots__ = ("_by_name", "_entry_points_loaded", "_lock")

    def __init__(self, drivers: tuple[Driver, ...] = BUILTIN) -> None:
        self._by_name: dict[str, Driver] = {}
        self._entry_points_loaded = False
        self._lock = threading.Lock()
        for driver in drivers:
            self.register(driver)

    def register(self, driver: Driver, *, replace: bool = False) -> Driver:
        """Add ``driver``; a name (or alias) already taken is an error unless ``replace``."""
        with self._lock:
            for name in (driver.name, *driver.aliases):
                known = self._by_name.get(name)
                if known is not None and known is not driver and not replace:
                    raise ConfigError(
                        f"driver {driver.name!r} ({driver.origin}): the type name {name!r} is "
                        f"taken by driver {known.name!r} ({known.origin})"
                    )
            for name in (driver.name, *driver.aliases):
                self._by_name[name] = driver
        return driver

    def get(self, name: str) -> Driver | None:
        """The driver for type ``name`` (an alias too), entry points included; else None."""
        key = name.strip().lower()
        driver = self._by_name.get(key)
        if driver is None and not self._entry_points_loaded:
            self.load_entry_points()
            driver = self._by_name.get(key)
        return driver

    def __iter__(self) -> Iterator[Driver]:
        """Every driver once, entry points included, by name."""
        self.load_entry_points()
        return iter(sorted(set(self._by_name.values()), key=lambda d: d.name))

    def names(self) -> list[str]:
        return [d.name for d in self]

    def all_settings(self) -> frozenset[str]:
        """Every setting some driver takes (how ``DATASOURCE_*`` names are split)."""
        out = set(COMMON_SETTINGS)
        for driver in self:
            out |= driver.settings
        return frozenset(out)

    def load_entry_points(self) -> None:
        """Register the drivers packages ship in :data:`ENTRY_POINT_GROUP` (once)."""
        if self._entry_points_loaded:
            return
        self._entry_points_loaded = True
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            self.register(_from_entry_point(ep))


def _from_entry_point(ep: EntryPoint) -> Driver:
    dist = f"{ep.dist.name} {ep.dist.version}" if ep.dist is not None else "an unknown package"
    origin = f"entry point {ep.name!r} = {ep.value!r} of {dist}"
    try:
        loaded = ep.load()
    except Exception as exc:
        raise ConfigError(f"cannot load the blokrun driver {origin}: {exc}") from exc
    if not isinstance(loaded, Driver):
        raise ConfigError(
            f"the blokrun driver {origin} is a {type(loaded).__name__}; expected a "
            "blokrun.datasources.Driver"
        )
    if loaded.name != ep.name:
        raise ConfigError(
            f"the blokrun driver {origin} is named {loaded.name!r}; the entry point's name "
            "must be the driver's"
        )
    return Driver(
        loaded.name,
        loaded.store,
        library=loaded.library,
        extra=loaded.extra,
        schemes=loaded.schemes,
        needs=loaded.needs,
        settings=loaded.settings,
        queue=loaded.queue,
        aliases=loaded.aliases,
        origin=origin,
    )


#: The process's driver table.
DRIVERS = DriverTable()


def register_driver(driver: Driver, *, replace: bool = False) -> Driver:
    """Make ``driver`` available to ``DATASOURCE_<NAME>_TYPE`` and :class:`DatasourceSettings`
    in this process; returns it (usable as ``DRIVER = register_driver(Driver(...))``)."""
    return DRIVERS.register(driver, replace=replace)


def create_store(settings: DatasourceSettings, table: DriverTable = DRIVERS) -> Store:
    """Build the store for ``settings.type`` (imports the driver module on first use)."""
    driver = table.get(settings.type)
    if driver is None:
        raise ConfigError(
            f"datasource {settings.name!r}: unknown type {settings.type!r}; expected one of: "
            f"{', '.join(table.names())}",
            variable=f"DATASOURCE_{settings.name.upper()}_TYPE",
        )
    try:
        factory = driver.factory()
    except MissingExtraError as exc:
        exc.datasource = settings.name
        exc.variable = f"DATASOURCE_{settings.name.upper()}_TYPE"
        exc.args = (f"datasource {settings.name!r}: {exc.args[0]}",)
        raise
    return factory(settings)
