"""What configures one datasource: :class:`DatasourceSettings`, built from the environment
(``blokrun.config``) or by hand, read by the drivers.

It lives beside the drivers, below the configuration that fills it in: a driver never
imports the configuration layer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from urllib.parse import quote

from blokrun.errors import ConfigError
from blokrun.redact import Redactor, mask_url, unencoded_in_password

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = ["DatasourceSettings", "setting_variable"]


def setting_variable(name: str, setting: str) -> str:
    """The variable that sets ``setting`` of datasource ``name``: ``DATASOURCE_CACHE_URL``."""
    return f"DATASOURCE_{name.upper()}_{setting}"


@dataclass(frozen=True, slots=True)
class DatasourceSettings:
    """Everything a driver needs to build its store. Built from the environment or by hand.

    ``timeout`` bounds every operation *and* the connect at start-up (seconds).
    ``ttl`` is the datasource's default expiry (seconds, ``None`` = never).
    """

    name: str
    type: str
    url: str | None = field(default=None, repr=False)
    path: str | None = None
    prefix: str = ""
    ttl: float | None = None
    table: str | None = None
    collection: str | None = None
    database: str | None = None
    region: str | None = None
    endpoint_url: str | None = None
    access_key_id: str | None = None
    secret_access_key: str | None = field(default=None, repr=False)
    pool_size: int | None = None
    timeout: float = 5.0
    fsync: bool = True
    #: settings a driver declares beyond these fields (``DATASOURCE_<NAME>_<SETTING>``), by name
    options: Mapping[str, str] = field(default_factory=dict)

    def __repr__(self) -> str:
        return f"DatasourceSettings({self.describe()})"

    def describe(self) -> str:
        """A one-line, secret-free description (``cache (redis redis://:***@h:6379)``)."""
        return f"{self.name} ({self.location()})"

    def located(self) -> str:
        """The name quoted, then where it is: ``'default' (filesystem /home/me/.blokrun/...)``."""
        return f"{self.name!r} ({self.location()})"

    def location(self) -> str:
        """Its type and where it is, secret-free (``redis redis://:***@h:6379``)."""
        where = mask_url(self.url) or self.path or ""
        if self.endpoint_url:
            where += f" at {mask_url(self.endpoint_url)}"
        return f"{self.type}{' ' + where if where else ''}"

    def __post_init__(self) -> None:
        for field_name, url in (("URL", self.url), ("ENDPOINT_URL", self.endpoint_url)):
            bad = unencoded_in_password(url)
            if bad:
                codes = ", ".join(f"{c!r} as {quote(c, safe='')}" for c in bad)
                variable = setting_variable(self.name, field_name)
                raise ConfigError(
                    f"{variable}: the password in {mask_url(url)} holds "
                    f"characters a URL cannot carry as they are; percent-encode them ({codes})",
                    variable=variable,
                )

    def redactor(self) -> Redactor:
        """What removes this datasource's secrets (URL passwords, the secret key) from text."""
        return Redactor.for_urls(
            self.url, self.endpoint_url, others=(self.secret_access_key, self.access_key_id)
        )
