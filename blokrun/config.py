"""Environment -> datasource settings. The only module that reads the environment.

Datasources are declared by ``DATASOURCE_<NAME>_<SETTING>`` variables (seed 000)::

    DATASOURCE_CACHE_TYPE=redis
    DATASOURCE_CACHE_URL=redis://:secret@localhost:6379/0
    DATASOURCE_CACHE_TTL=3600

``<NAME>`` may contain underscores (``DATASOURCE_MY_CACHE_URL`` names ``my_cache``): the
setting is matched from the end against the known suffixes. Unknown settings, unknown types,
bad numbers and missing required settings are :class:`~blokrun.errors.ConfigError` naming
the variable; URLs in messages are masked (:func:`mask_url`).

With no ``DATASOURCE_DEFAULT_*`` variable, an embedded ``default`` datasource keeps
checkpoints on the filesystem under ``$BLOKRUN_HOME`` (``./.blokrun`` when unset), so run
and resume work with zero set-up.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from blokrun.datasources.registry import (
    BUILTIN,
    COMMON_SETTINGS,
    DRIVERS,
    FIELD_SETTINGS,
    Driver,
)
from blokrun.datasources.settings import DatasourceSettings, setting_variable
from blokrun.errors import ConfigError
from blokrun.redact import mask_url
from blokrun.types import DURABILITIES

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

    from blokrun.types import Durability

__all__ = [
    "DEFAULT_DATASOURCE",
    "KNOWN_TYPES",
    "DatasourceSettings",
    "RunnerSettings",
    "check_datasource",
    "check_durability",
    "check_lease_ttl",
    "mask_url",
    "settings_from_env",
]

DEFAULT_DATASOURCE = "default"

#: The built-in types a ``DATASOURCE_<NAME>_TYPE`` may name (aliases map to the canonical
#: name); drivers registered or shipped as entry points add theirs (the driver table).
KNOWN_TYPES: Mapping[str, str] = {
    alias: driver.name for driver in BUILTIN for alias in (driver.name, *driver.aliases)
}

_NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
_IDENT_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")


@dataclass(frozen=True, slots=True)
class RunnerSettings:
    """What :meth:`blokrun.Runner.from_env` needs.

    ``environ`` is the mapping it was read from, for the parts that parse their own
    variables (:func:`envelope_from_env`).
    """

    datasources: Mapping[str, DatasourceSettings]
    home: Path
    blob_datasource: str | None = None
    blob_threshold: int = 256 * 1024
    max_resumes: int = 10
    lease_ttl: float | None = 30.0
    durability: Durability = "sync"
    queue_datasource: str | None = None
    environ: Mapping[str, str] = field(default_factory=dict, repr=False)


_var = setting_variable


def _parse_float(raw: str, variable: str, *, allow_zero: bool) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(
            f"{variable}={raw!r}: expected a number of seconds", variable=variable
        ) from None
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(
            f"{variable}={raw!r}: expected a positive number of seconds", variable=variable
        )
    return value


def _parse_bool(raw: str, variable: str) -> bool:
    low = raw.strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{variable}={raw!r}: expected true or false", variable=variable)


def _driver(name: str, raw: Mapping[str, str]) -> Driver:
    """The driver ``DATASOURCE_<NAME>_TYPE`` names."""
    type_var = _var(name, "TYPE")
    if "TYPE" not in raw:
        given = ", ".join(sorted(_var(name, s) for s in raw))
        raise ConfigError(
            f"{type_var} is missing (datasource {name!r} has {given}); "
            f"expected one of: {', '.join(DRIVERS.names())}",
            variable=type_var,
        )
    driver = DRIVERS.get(raw["TYPE"])
    if driver is None:
        raise ConfigError(
            f"{type_var}={raw['TYPE']!r}: unknown datasource type; expected one of: "
            f"{', '.join(DRIVERS.names())} (or a driver a package registers: "
            "see docs/drivers.md)",
            variable=type_var,
        )
    return driver


def _check_takes(name: str, raw: Mapping[str, str], driver: Driver, configured: list[str]) -> None:
    """Every setting given is one ``driver`` takes; every one it needs is given."""
    for setting in sorted(raw):
        if setting not in driver.takes:
            var = _var(name, setting)
            raise ConfigError(
                f"{var}: a {driver.name} datasource takes no {setting}; it takes: "
                f"{', '.join(sorted(driver.takes))}",
                variable=var,
            )
    for setting in sorted(driver.needs):
        if not raw.get(setting):
            var = _var(name, setting)
            what = {"URL": "a URL", "PATH": "a folder"}.get(setting, setting)
            raise ConfigError(
                f"{var} is missing: a {driver.name} datasource needs {what} "
                f"(configured datasources: {', '.join(configured)})",
                variable=var,
            )


def _check_scheme(name: str, url: str | None, driver: Driver) -> None:
    if url is None or not driver.schemes:
        return
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme not in driver.schemes:
        var = _var(name, "URL")
        raise ConfigError(
            f"{var}: scheme {scheme or '(none)'!r} is not right for a {driver.name} datasource; "
            f"expected a URL starting with {' or '.join(s + '://' for s in driver.schemes)}",
            variable=var,
        )


def _pool_size(name: str, raw: Mapping[str, str]) -> int | None:
    if "POOL_SIZE" not in raw:
        return None
    var = _var(name, "POOL_SIZE")
    try:
        pool_size = int(raw["POOL_SIZE"])
    except ValueError:
        pool_size = 0
    if pool_size < 1 or pool_size > 10_000:
        raise ConfigError(
            f"{var}={raw['POOL_SIZE']!r}: expected a whole number from 1 to 10000", variable=var
        )
    return pool_size


def _identifiers(name: str, raw: Mapping[str, str]) -> None:
    for setting in ("TABLE", "COLLECTION", "DATABASE"):
        if setting in raw and not _IDENT_RE.fullmatch(raw[setting]):
            var = _var(name, setting)
            raise ConfigError(
                f"{var}={raw[setting]!r}: expected an identifier (letters, digits, _)",
                variable=var,
            )


def _build(name: str, raw: Mapping[str, str], configured: list[str]) -> DatasourceSettings:
    driver = _driver(name, raw)
    _check_takes(name, raw, driver, configured)
    url = raw.get("URL") or None
    _check_scheme(name, url, driver)
    _identifiers(name, raw)

    def number(setting: str) -> float | None:
        if setting not in raw:
            return None
        return _parse_float(raw[setting], _var(name, setting), allow_zero=False)

    timeout = number("TIMEOUT")
    return DatasourceSettings(
        name=name,
        type=driver.name,
        url=url,
        path=raw.get("PATH") or None,
        prefix=raw.get("PREFIX", ""),
        ttl=number("TTL"),
        table=raw.get("TABLE") or None,
        collection=raw.get("COLLECTION") or None,
        database=raw.get("DATABASE") or None,
        region=raw.get("REGION") or None,
        endpoint_url=raw.get("ENDPOINT_URL") or None,
        access_key_id=raw.get("ACCESS_KEY_ID") or None,
        secret_access_key=raw.get("SECRET_ACCESS_KEY") or None,
        pool_size=_pool_size(name, raw),
        timeout=5.0 if timeout is None else timeout,
        fsync=_parse_bool(raw["FSYNC"], _var(name, "FSYNC")) if "FSYNC" in raw else True,
        options={k: v for k, v in raw.items() if k not in FIELD_SETTINGS | COMMON_SETTINGS},
    )


def settings_from_env(environ: Mapping[str, str] | None = None) -> RunnerSettings:
    """Parse ``DATASOURCE_*`` and ``BLOKRUN_HOME`` from ``environ`` (default ``os.environ``)."""
    env = os.environ if environ is None else environ
    grouped = _grouped(env)
    home = Path(env.get("BLOKRUN_HOME") or ".blokrun")
    configured = sorted(grouped)
    datasources = {name: _build(name, raw, configured) for name, raw in sorted(grouped.items())}
    if DEFAULT_DATASOURCE not in datasources:
        datasources[DEFAULT_DATASOURCE] = embedded_default(home)
    blob_ds = check_datasource(
        "BLOKRUN_BLOB_DATASOURCE", env.get("BLOKRUN_BLOB_DATASOURCE") or None, datasources
    )
    threshold = _whole(env, "BLOKRUN_BLOB_THRESHOLD", 256 * 1024, 1, "a positive number of bytes")
    max_resumes = _whole(env, "BLOKRUN_MAX_RESUMES", 10, 0, "a whole number >= 0")
    queue_ds = check_datasource(
        "BLOKRUN_QUEUE_DATASOURCE", env.get("BLOKRUN_QUEUE_DATASOURCE") or None, datasources
    )
    durability = check_durability((env.get("BLOKRUN_DURABILITY") or "sync").strip())
    return RunnerSettings(
        datasources=datasources,
        home=home,
        blob_datasource=blob_ds,
        blob_threshold=threshold,
        max_resumes=max_resumes,
        lease_ttl=_lease_ttl(env),
        durability=durability,
        queue_datasource=queue_ds,
        environ=dict(env),
    )


def _grouped(env: Mapping[str, str]) -> dict[str, dict[str, str]]:
    """``DATASOURCE_<NAME>_<SETTING>`` variables by datasource name, then setting."""
    grouped: dict[str, dict[str, str]] = {}
    # Longest first, so ENDPOINT_URL wins over URL (every driver's settings, entry points too)
    suffixes = sorted(DRIVERS.all_settings(), key=lambda x: (-len(x), x))
    for var, value in env.items():
        if not var.startswith("DATASOURCE_"):
            continue
        body = var[len("DATASOURCE_") :]
        found = next(
            (x for x in suffixes if body.endswith("_" + x) and len(body) > len(x) + 1), None
        )
        if found is None:
            raise ConfigError(
                f"{var}: unknown datasource setting; expected DATASOURCE_<NAME>_<SETTING> "
                f"with SETTING one of: {', '.join(sorted(suffixes))}",
                variable=var,
            )
        name = body[: -len(found) - 1].lower()
        if not _NAME_RE.fullmatch(name):
            raise ConfigError(
                f"{var}: datasource name {name!r} must start with a letter and use "
                "letters, digits and _",
                variable=var,
            )
        grouped.setdefault(name, {})[found] = value
    return grouped


def _whole(env: Mapping[str, str], variable: str, default: int, least: int, what: str) -> int:
    """The whole number ``variable`` holds (at least ``least``), else ``default`` if unset."""
    raw = env.get(variable)
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = least - 1
    if value < least:
        raise ConfigError(f"{variable}={raw!r}: expected {what}", variable=variable)
    return value


def _lease_ttl(env: Mapping[str, str]) -> float | None:
    raw = (env.get("BLOKRUN_LEASE_TTL") or "").strip()
    if not raw:
        return 30.0
    if raw.lower() in ("off", "none", "0"):
        return None
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    return check_lease_ttl(value, raw)


def check_datasource(variable: str, name: str | None, configured: Iterable[str]) -> str | None:
    """``name`` if it is ``None`` or a configured datasource; else an error naming ``variable``."""
    names = sorted(configured)
    if name is not None and name not in names:
        raise ConfigError(
            f"{variable}={name!r} is not a configured datasource; configured: {', '.join(names)}",
            variable=variable,
        )
    return name


def check_lease_ttl(value: float | None, shown: object = None) -> float | None:
    """A lease TTL in seconds (> 0, under a year) or ``None`` (leases off)."""
    if value is not None and not (0 < value < 86400 * 365):
        raise ConfigError(
            f"BLOKRUN_LEASE_TTL={value if shown is None else shown!r}: expected a number of "
            "seconds > 0 (how long a run's lease outlives a process that died), or 'off'",
            variable="BLOKRUN_LEASE_TTL",
        )
    return value


def check_durability(value: str) -> Durability:
    for known in DURABILITIES:
        if value == known:
            return known
    raise ConfigError(
        f"BLOKRUN_DURABILITY={value!r}: expected one of {', '.join(DURABILITIES)}",
        variable="BLOKRUN_DURABILITY",
    )


def embedded_default(home: Path) -> DatasourceSettings:
    """The zero-set-up ``default`` datasource: the filesystem under ``home/checkpoints``."""
    return DatasourceSettings(
        name=DEFAULT_DATASOURCE, type="filesystem", path=str((home / "checkpoints").absolute())
    )


# --------------------------------------------------------------------------- record envelope
# BLOKRUN_ENCRYPTION_KEY, BLOKRUN_ENCRYPTION_OLD_KEYS, BLOKRUN_COMPRESSION and
# BLOKRUN_COMPRESSION_THRESHOLD: how records are sealed (blokrun.persistence.envelope).

if TYPE_CHECKING:
    from blokrun.persistence.envelope import Compression, Envelope

__all__ += ["envelope_from_env"]

_KEY_FORM = "[<id>:]<base64 of 32 random bytes>"


def envelope_from_env(environ: Mapping[str, str]) -> Envelope:
    """The :class:`~blokrun.persistence.envelope.Envelope` the variables of ``environ`` ask for.

    * ``BLOKRUN_ENCRYPTION_KEY`` -- ``<id>:<base64 of 32 bytes>`` or ``<base64 of 32 bytes>``
      (the id is then the first 8 hex digits of sha256(key)). New records are encrypted with it.
    * ``BLOKRUN_ENCRYPTION_OLD_KEYS`` -- comma-separated entries of the same form, used only to
      open records (key rotation). Old keys without an active key open encrypted records and
      write plain ones (the way back from encryption).
    * ``BLOKRUN_REQUIRE_ENCRYPTION`` -- ``true``: refuse to start without
      ``BLOKRUN_ENCRYPTION_KEY``, so no record is ever written in plain.
    * ``BLOKRUN_COMPRESSION`` -- ``none``, ``zlib`` or ``zstd`` (default zstd when the
      ``zstandard`` package imports, else zlib).
    * ``BLOKRUN_COMPRESSION_THRESHOLD`` -- payloads of at least this many bytes are compressed
      (default 4096).

    Empty variables count as unset. Every bad value is a ConfigError naming its variable;
    key material never appears in a message.
    """
    from blokrun.persistence.envelope import (
        ENCRYPTION_KEY_ENV,
        REQUIRE_ENCRYPTION_ENV,
        Envelope,
    )

    keys, active = _encryption_keys(environ)
    raw_required = environ.get(REQUIRE_ENCRYPTION_ENV, "").strip()
    if raw_required and _parse_bool(raw_required, REQUIRE_ENCRYPTION_ENV) and active is None:
        raise ConfigError(
            f"{REQUIRE_ENCRYPTION_ENV} is set but {ENCRYPTION_KEY_ENV} is not: every record "
            f"must be encrypted; set {ENCRYPTION_KEY_ENV} to <id>:<base64 of 32 bytes>",
            variable=REQUIRE_ENCRYPTION_ENV,
        )
    return Envelope(
        compression=_compression(environ),
        threshold=_compression_threshold(environ),
        keys=keys,
        active_key=active,
    )


def _encryption_keys(environ: Mapping[str, str]) -> tuple[dict[str, bytes], str | None]:
    """Every key by id (the active one and the old ones), and the active key's id."""
    from blokrun.persistence.envelope import ENCRYPTION_KEY_ENV, ENCRYPTION_OLD_KEYS_ENV

    keys: dict[str, bytes] = {}
    active: str | None = None
    raw_key = environ.get(ENCRYPTION_KEY_ENV, "").strip()
    if raw_key:
        active, material = _parse_encryption_key(raw_key, ENCRYPTION_KEY_ENV, ENCRYPTION_KEY_ENV)
        keys[active] = material
    raw_old = environ.get(ENCRYPTION_OLD_KEYS_ENV, "")
    entries = [e.strip() for e in raw_old.split(",")] if raw_old.strip() else []
    for number, entry in enumerate(entries, 1):
        if not entry:
            continue
        where = f"{ENCRYPTION_OLD_KEYS_ENV} (entry {number})"
        kid, material = _parse_encryption_key(entry, ENCRYPTION_OLD_KEYS_ENV, where)
        if kid in keys:
            raise ConfigError(
                f"{where}: key id {kid!r} is already used by "
                f"{ENCRYPTION_KEY_ENV if kid == active else 'an earlier entry'}; "
                "every key needs its own id",
                variable=ENCRYPTION_OLD_KEYS_ENV,
            )
        keys[kid] = material
    return keys, active


def _compression(environ: Mapping[str, str]) -> Compression:
    from blokrun.persistence.envelope import COMPRESSION_ENV
    from blokrun.persistence.envelope.compression import zstd_available

    raw = environ.get(COMPRESSION_ENV, "").strip().lower()
    if not raw:
        return "zstd" if zstd_available() else "zlib"
    choices: dict[str, Compression] = {"none": "none", "zlib": "zlib", "zstd": "zstd"}
    if raw not in choices:
        raise ConfigError(
            f"{COMPRESSION_ENV}={environ[COMPRESSION_ENV]!r}: expected none, zlib or zstd",
            variable=COMPRESSION_ENV,
        )
    return choices[raw]


def _compression_threshold(environ: Mapping[str, str]) -> int:
    from blokrun.persistence.envelope import THRESHOLD_ENV

    raw = environ.get(THRESHOLD_ENV, "").strip()
    if not raw:
        return 4096
    try:
        threshold = int(raw)
    except ValueError:
        threshold = -1
    if threshold < 0:
        raise ConfigError(
            f"{THRESHOLD_ENV}={environ[THRESHOLD_ENV]!r}: expected a whole number of bytes >= 0",
            variable=THRESHOLD_ENV,
        )
    return threshold


def _parse_encryption_key(text: str, variable: str, where: str) -> tuple[str, bytes]:
    """``(id, key)`` from ``[<id>:]<base64>``; errors name ``where`` and never echo the key."""
    import base64
    import binascii
    import hashlib

    from blokrun.persistence.envelope.crypto import KEY_BYTES, KEY_ID_RULE, is_key_id

    kid: str | None = None
    encoded = text
    if ":" in text:
        kid, _, encoded = text.partition(":")
        kid = kid.strip()
        encoded = encoded.strip()
        if not is_key_id(kid):
            raise ConfigError(
                f"{where}: invalid key id (expected {KEY_ID_RULE} before the ':'); "
                f"the value must be {_KEY_FORM}",
                variable=variable,
            )
    normalized = encoded.replace("-", "+").replace("_", "/")  # accept URL-safe base64 too
    normalized += "=" * (-len(normalized) % 4)
    try:
        material = base64.b64decode(normalized, validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError(
            f"{where}: the key is not valid base64; the value must be {_KEY_FORM}",
            variable=variable,
        ) from None
    if len(material) != KEY_BYTES:
        raise ConfigError(
            f"{where}: the key decodes to {len(material)} bytes; AES-256 needs exactly "
            f"{KEY_BYTES} (the value must be {_KEY_FORM})",
            variable=variable,
        )
    return kid or hashlib.sha256(material).hexdigest()[:8], material


def ui_token(env: Mapping[str, str]) -> str | None:
    """``BLOKRUN_UI_TOKEN``: what ``blokrun ui`` requires on every request (None: unset).
    A token shorter than 16 characters is refused: it would be guessed."""
    token = env.get("BLOKRUN_UI_TOKEN") or None
    if token is not None and len(token) < 16:
        raise ConfigError(
            "BLOKRUN_UI_TOKEN: expected at least 16 characters (e.g. python -c 'import "
            "secrets; print(secrets.token_urlsafe())')",
            variable="BLOKRUN_UI_TOKEN",
        )
    return token
