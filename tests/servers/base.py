"""What every throwaway server offers to the tests."""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from blokrun.config import DatasourceSettings

if TYPE_CHECKING:
    from blokrun.datasources.datasource import Datasource


class ServerUnavailable(Exception):
    """The server cannot be started on this machine; the message says why (used as skip reason)."""


class ThrowawayServer(Protocol):
    driver: str  # the datasource type it serves ("redis", ...)
    label: str  # test-id label, e.g. "mongodb-mongoeco-emulator"

    def settings(self, name: str = "ds", **overrides: object) -> DatasourceSettings:
        """Settings that reach this server (overrides: prefix, ttl, timeout, table, ...)."""
        ...

    def stop(self) -> None:
        """Stop the server (for outage tests and at session end). Idempotent."""
        ...

    def start(self) -> None:
        """Start it again after :meth:`stop`, same port and data folder."""
        ...


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_for_port(port: int, timeout: float = 15.0, host: str = "127.0.0.1") -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise ServerUnavailable(
                    f"nothing listened on {host}:{port} after {timeout}s"
                ) from None
            time.sleep(0.02)


@dataclass
class LocalServer:
    """The memory and filesystem 'servers': no process, just settings."""

    driver: str
    label: str
    workdir: Path
    _counter: list[int] = field(default_factory=lambda: [0])

    def settings(self, name: str = "ds", **overrides: object) -> DatasourceSettings:
        self._counter[0] += 1
        base = DatasourceSettings(
            name=name,
            type=self.driver,
            path=str(self.workdir / f"store-{self._counter[0]}")
            if self.driver == "filesystem"
            else None,
        )
        return replace(base, **overrides)  # type: ignore[arg-type]

    def stop(self) -> None:
        pass

    def start(self) -> None:
        pass


async def connected(settings: DatasourceSettings) -> Datasource:
    """A datasource of ``settings`` (its driver's store), connected; the caller closes it."""
    from blokrun.datasources.datasource import Datasource
    from blokrun.datasources.registry import create_store

    ds = Datasource(settings, create_store(settings))
    await ds.connect()
    return ds


def settings_env(name: str, settings: DatasourceSettings) -> dict[str, str]:
    """``DATASOURCE_<NAME>_*`` variables that configure ``settings`` (for CLI / from_env tests)."""
    var = f"DATASOURCE_{name.upper()}_"
    env = {var + "TYPE": settings.type}
    fields = {
        "URL": settings.url,
        "PATH": settings.path,
        "PREFIX": settings.prefix or None,
        "TTL": settings.ttl,
        "TABLE": settings.table,
        "COLLECTION": settings.collection,
        "DATABASE": settings.database,
        "REGION": settings.region,
        "ENDPOINT_URL": settings.endpoint_url,
        "ACCESS_KEY_ID": settings.access_key_id,
        "SECRET_ACCESS_KEY": settings.secret_access_key,
        "POOL_SIZE": settings.pool_size,
        "TIMEOUT": settings.timeout,
    }
    env.update({var + k: str(v) for k, v in fields.items() if v is not None})
    if not settings.fsync:
        env[var + "FSYNC"] = "false"
    return env
