"""Environment -> datasource settings: every bad variable is a ConfigError naming it.

The product rule: bad input gets a clear error that names the environment variable and what
was expected, never a traceback, and never a secret.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from blokrun.config import (
    DEFAULT_DATASOURCE,
    KNOWN_TYPES,
    DatasourceSettings,
    mask_url,
    settings_from_env,
)
from blokrun.errors import BlokrunError, ConfigError

CANONICAL_TYPES = sorted(set(KNOWN_TYPES.values()))
SECRET = "s3cr3t-Pa55"


def config_error(env: dict[str, str]) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        settings_from_env(env)
    return info.value


def assert_names(err: ConfigError, variable: str, *expected: str) -> None:
    """The error names the variable (attribute and message) and what was expected."""
    assert err.variable == variable
    message = str(err)
    assert variable in message
    for part in expected:
        assert part in message, f"{part!r} not in {message!r}"


# --------------------------------------------------------------------------- happy paths


def test_config_error_is_a_blokrun_error() -> None:
    assert issubclass(ConfigError, BlokrunError)


def test_empty_environment_gives_embedded_default_under_dot_blokrun() -> None:
    settings = settings_from_env({})
    assert settings.home == Path(".blokrun")
    assert list(settings.datasources) == [DEFAULT_DATASOURCE]
    default = settings.datasources[DEFAULT_DATASOURCE]
    assert default.name == "default"
    assert default.type == "filesystem"
    assert default.path == str((Path(".blokrun") / "checkpoints").absolute())  # shown whole


def test_empty_blokrun_home_means_dot_blokrun() -> None:
    assert settings_from_env({"BLOKRUN_HOME": ""}).home == Path(".blokrun")


def test_embedded_default_lives_under_blokrun_home(tmp_path: Path) -> None:
    settings = settings_from_env({"BLOKRUN_HOME": str(tmp_path)})
    assert settings.home == tmp_path
    assert settings.datasources["default"].path == str(tmp_path / "checkpoints")


def test_default_type_memory_replaces_embedded_default(tmp_path: Path) -> None:
    settings = settings_from_env(
        {"BLOKRUN_HOME": str(tmp_path), "DATASOURCE_DEFAULT_TYPE": "memory"}
    )
    default = settings.datasources["default"]
    assert default.type == "memory"
    assert default.path is None


def test_embedded_default_is_added_next_to_configured_datasources() -> None:
    settings = settings_from_env({"DATASOURCE_MEM_TYPE": "memory"})
    assert set(settings.datasources) == {"mem", "default"}
    assert settings.datasources["default"].type == "filesystem"


def test_unrelated_variables_are_ignored() -> None:
    settings = settings_from_env({"PATH": "/usr/bin", "datasource_x_type": "bogus", "HOME": "/"})
    assert list(settings.datasources) == ["default"]


def test_full_redis_datasource() -> None:
    settings = settings_from_env(
        {
            "DATASOURCE_CACHE_TYPE": "Redis",
            "DATASOURCE_CACHE_URL": "redis://:pw@localhost:6379/0",
            "DATASOURCE_CACHE_TTL": "3600",
            "DATASOURCE_CACHE_TIMEOUT": "2.5",
            "DATASOURCE_CACHE_POOL_SIZE": "10",
            "DATASOURCE_CACHE_PREFIX": "app:",
        }
    )
    cache = settings.datasources["cache"]
    assert cache.type == "redis"
    assert cache.url == "redis://:pw@localhost:6379/0"
    assert cache.ttl == 3600.0
    assert cache.timeout == 2.5
    assert cache.pool_size == 10
    assert cache.prefix == "app:"


@pytest.mark.parametrize(
    ("dtype", "setting"),
    [("redis", "FSYNC"), ("redis", "TABLE"), ("postgresql", "COLLECTION"), ("memory", "URL")],
)
def test_a_setting_the_driver_does_not_take_is_refused(dtype: str, setting: str) -> None:
    """Not silently ignored: FSYNC on Redis (durability is the server's), a TABLE on Redis."""
    env = {"DATASOURCE_CACHE_TYPE": dtype, f"DATASOURCE_CACHE_{setting}": "x"}
    if dtype in ("redis", "postgresql"):
        env["DATASOURCE_CACHE_URL"] = f"{dtype}://h/0"
    err = config_error(env)
    assert_names(err, f"DATASOURCE_CACHE_{setting}", f"a {dtype} datasource takes no {setting}")
    assert "TIMEOUT" in str(err)  # what it does take


def test_defaults_of_optional_settings() -> None:
    mem = settings_from_env({"DATASOURCE_MEM_TYPE": "memory"}).datasources["mem"]
    assert mem.ttl is None
    assert mem.timeout == 5.0
    assert mem.pool_size is None
    assert mem.prefix == ""
    assert mem.fsync is True


@pytest.mark.parametrize(
    ("alias", "canonical", "extra"),
    [
        ("postgres", "postgresql", {"URL": "postgres://u@h/db"}),
        ("postgresql", "postgresql", {"URL": "postgresql://u@h/db"}),
        ("mongo", "mongodb", {"URL": "mongodb://h:27017"}),
        ("mongodb", "mongodb", {"URL": "mongodb+srv://cluster.example"}),
        ("fs", "filesystem", {"PATH": "/data"}),
        ("file", "filesystem", {"PATH": "/data"}),
        ("filesystem", "filesystem", {"PATH": "/data"}),
        ("redis", "redis", {"URL": "rediss://h:6380"}),
        ("redis", "redis", {"URL": "unix:///tmp/redis.sock"}),
        ("s3", "s3", {"URL": "s3://bucket/prefix"}),
        ("  MEMORY ", "memory", {}),
    ],
)
def test_type_aliases_map_to_canonical(alias: str, canonical: str, extra: dict[str, str]) -> None:
    env = {"DATASOURCE_DS_TYPE": alias} | {f"DATASOURCE_DS_{k}": v for k, v in extra.items()}
    assert settings_from_env(env).datasources["ds"].type == canonical


def test_names_with_underscores_and_longest_suffix_wins() -> None:
    settings = settings_from_env(
        {
            "DATASOURCE_MY_CACHE_TYPE": "s3",
            "DATASOURCE_MY_CACHE_URL": "s3://bucket",
            "DATASOURCE_MY_CACHE_ENDPOINT_URL": "http://localhost:9000",
            "DATASOURCE_MY_CACHE_ACCESS_KEY_ID": "AKIA",
            "DATASOURCE_MY_CACHE_SECRET_ACCESS_KEY": "shh",
            "DATASOURCE_MY_CACHE_REGION": "eu-west-1",
        }
    )
    assert set(settings.datasources) == {"my_cache", "default"}
    ds = settings.datasources["my_cache"]
    assert ds.name == "my_cache"
    assert ds.url == "s3://bucket"
    assert ds.endpoint_url == "http://localhost:9000"
    assert ds.access_key_id == "AKIA"
    assert ds.secret_access_key == "shh"
    assert ds.region == "eu-west-1"


def test_identifiers_are_accepted() -> None:
    found = settings_from_env(
        {
            "DATASOURCE_PG_TYPE": "postgresql",
            "DATASOURCE_PG_URL": "postgresql://h/db",
            "DATASOURCE_PG_TABLE": "blokrun_records",
            "DATASOURCE_MG_TYPE": "mongodb",
            "DATASOURCE_MG_URL": "mongodb://h/db",
            "DATASOURCE_MG_DATABASE": "_db2",
            "DATASOURCE_MG_COLLECTION": "Runs",
        }
    ).datasources
    assert found["pg"].table == "blokrun_records"
    assert (found["mg"].database, found["mg"].collection) == ("_db2", "Runs")


# --------------------------------------------------------------------------- bad variables


def test_unknown_setting_suffix() -> None:
    err = config_error({"DATASOURCE_CACHE_TTTL": "60"})
    assert_names(err, "DATASOURCE_CACHE_TTTL", "unknown datasource setting", "TTL", "TYPE")
    assert "'60'" not in str(err)  # the value is not echoed


@pytest.mark.parametrize("var", ["DATASOURCE_TYPE", "DATASOURCE__TYPE", "DATASOURCE_X"])
def test_variable_without_name_or_setting(var: str) -> None:
    err = config_error({var: "memory"})
    assert err.variable == var
    assert var in str(err)


def test_bad_datasource_name() -> None:
    err = config_error({"DATASOURCE_1CACHE_TYPE": "memory"})
    assert_names(err, "DATASOURCE_1CACHE_TYPE", "'1cache'", "must start with a letter")


def test_missing_type_lists_given_variables_and_known_types() -> None:
    err = config_error({"DATASOURCE_CACHE_URL": "redis://h", "DATASOURCE_CACHE_TTL": "5"})
    assert_names(
        err,
        "DATASOURCE_CACHE_TYPE",
        "is missing",
        "DATASOURCE_CACHE_URL",
        "DATASOURCE_CACHE_TTL",
        *CANONICAL_TYPES,
    )


def test_unknown_type_lists_known_types() -> None:
    err = config_error({"DATASOURCE_CACHE_TYPE": "memcached"})
    assert_names(
        err, "DATASOURCE_CACHE_TYPE", "'memcached'", "unknown datasource type", *CANONICAL_TYPES
    )


@pytest.mark.parametrize("dtype", ["redis", "postgresql", "postgres", "mongodb", "mongo", "s3"])
def test_missing_url(dtype: str) -> None:
    err = config_error({"DATASOURCE_STORE_TYPE": dtype, "DATASOURCE_OTHER_TYPE": "memory"})
    assert_names(
        err, "DATASOURCE_STORE_URL", "is missing", KNOWN_TYPES[dtype], "needs a URL", "other"
    )


def test_empty_url_counts_as_missing() -> None:
    err = config_error({"DATASOURCE_C_TYPE": "redis", "DATASOURCE_C_URL": ""})
    assert_names(err, "DATASOURCE_C_URL", "is missing")


@pytest.mark.parametrize(
    ("dtype", "url", "expected"),
    [
        ("redis", "http://localhost:6379", "redis:// or rediss:// or unix://"),
        ("postgresql", "mysql://h/db", "postgresql:// or postgres://"),
        ("mongodb", "redis://h", "mongodb:// or mongodb+srv://"),
        ("s3", "https://bucket.example", "s3://"),
        ("redis", "localhost:6379", "redis://"),
    ],
)
def test_wrong_url_scheme(dtype: str, url: str, expected: str) -> None:
    err = config_error({"DATASOURCE_STORE_TYPE": dtype, "DATASOURCE_STORE_URL": url})
    assert_names(err, "DATASOURCE_STORE_URL", "expected a URL starting with", expected)


@pytest.mark.parametrize("dtype", ["filesystem", "fs", "file"])
def test_missing_path_for_filesystem(dtype: str) -> None:
    err = config_error({"DATASOURCE_FILES_TYPE": dtype})
    assert_names(err, "DATASOURCE_FILES_PATH", "is missing", "filesystem", "folder")


@pytest.mark.parametrize("setting", ["TTL", "TIMEOUT"])
@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("soon", "expected a number of seconds"),
        ("", "expected a number of seconds"),
        ("-1", "expected a positive number of seconds"),
        ("0", "expected a positive number of seconds"),
        ("0.0", "expected a positive number of seconds"),
        ("inf", "expected a positive number of seconds"),
        ("-inf", "expected a positive number of seconds"),
        ("nan", "expected a positive number of seconds"),
        ("1e400", "expected a positive number of seconds"),
    ],
)
def test_bad_seconds(setting: str, raw: str, expected: str) -> None:
    variable = f"DATASOURCE_MEM_{setting}"
    err = config_error({"DATASOURCE_MEM_TYPE": "memory", variable: raw})
    assert_names(err, variable, f"{variable}={raw!r}", expected)


@pytest.mark.parametrize("raw", ["0", "-3", "10001", "ten", "1.5", ""])
def test_bad_pool_size(raw: str) -> None:
    err = config_error(
        {
            "DATASOURCE_PG_TYPE": "postgresql",
            "DATASOURCE_PG_URL": "postgresql://h/db",
            "DATASOURCE_PG_POOL_SIZE": raw,
        }
    )
    assert_names(err, "DATASOURCE_PG_POOL_SIZE", repr(raw), "whole number from 1 to 10000")


@pytest.mark.parametrize("setting", ["TABLE", "COLLECTION", "DATABASE"])
@pytest.mark.parametrize("raw", ["x;drop table y", "x y", "1abc", "a-b", "", "a" * 64, 'x"--'])
def test_bad_identifier(setting: str, raw: str) -> None:
    variable = f"DATASOURCE_PG_{setting}"
    dtype = "postgresql" if setting == "TABLE" else "mongodb"
    err = config_error(
        {
            "DATASOURCE_PG_TYPE": dtype,
            "DATASOURCE_PG_URL": f"{dtype}://h/db",
            variable: raw,
        }
    )
    assert_names(err, variable, "expected an identifier")


def test_identifier_with_trailing_newline_is_rejected() -> None:
    err = config_error(
        {
            "DATASOURCE_PG_TYPE": "postgresql",
            "DATASOURCE_PG_URL": "postgresql://h/db",
            "DATASOURCE_PG_TABLE": "users\n",
        }
    )
    assert_names(err, "DATASOURCE_PG_TABLE", "expected an identifier")


def test_bad_fsync() -> None:
    err = config_error(
        {"DATASOURCE_F_TYPE": "fs", "DATASOURCE_F_PATH": "/d", "DATASOURCE_F_FSYNC": "maybe"}
    )
    assert_names(err, "DATASOURCE_F_FSYNC", "'maybe'", "expected true or false")


# --------------------------------------------------------------------------- secrets


@pytest.mark.parametrize(
    "url",
    [
        f"http://user:{SECRET}@localhost:6379/0",
        f"http://:{SECRET}@localhost:6379/0",
        f"mysql://admin:{SECRET}@db.example/prod",
    ],
)
def test_wrong_scheme_error_masks_password(url: str) -> None:
    err = config_error({"DATASOURCE_STORE_TYPE": "redis", "DATASOURCE_STORE_URL": url})
    assert SECRET not in str(err)
    assert SECRET not in repr(err)
    assert f"scheme {url.split(':', maxsplit=1)[0]!r}" in str(err)


@pytest.mark.parametrize(
    "url", [f"redis:/:{SECRET}@localhost:6379", f"admin:{SECRET}@localhost", f":{SECRET}@h"]
)
def test_wrong_scheme_error_never_leaks_password_of_malformed_url(url: str) -> None:
    err = config_error({"DATASOURCE_STORE_TYPE": "redis", "DATASOURCE_STORE_URL": url})
    assert SECRET not in str(err)


def test_no_config_error_message_contains_a_secret() -> None:
    """Every other error raised next to a secret-bearing URL keeps the secret out."""
    base = {
        "DATASOURCE_CACHE_TYPE": "redis",
        "DATASOURCE_CACHE_URL": f"redis://:{SECRET}@localhost:6379/0",
        "DATASOURCE_CACHE_SECRET_ACCESS_KEY": SECRET,
    }
    bad = [
        {"DATASOURCE_CACHE_TTL": "-1"},
        {"DATASOURCE_CACHE_TIMEOUT": "x"},
        {"DATASOURCE_CACHE_POOL_SIZE": "0"},
        {"DATASOURCE_CACHE_TABLE": "a;b"},
        {"DATASOURCE_CACHE_FSYNC": "?"},
        {"DATASOURCE_CACHE_TTTL": "1"},
        {"DATASOURCE_OTHER_TYPE": "nope"},
        {"DATASOURCE_PG_TYPE": "postgresql"},
    ]
    for extra in bad:
        err = config_error(base | extra)
        assert SECRET not in str(err), extra
        assert SECRET not in repr(err), extra


def test_missing_type_does_not_echo_secret_values() -> None:
    err = config_error(
        {
            "DATASOURCE_CACHE_URL": f"redis://:{SECRET}@h",
            "DATASOURCE_CACHE_SECRET_ACCESS_KEY": SECRET,
        }
    )
    assert "DATASOURCE_CACHE_URL" in str(err)
    assert SECRET not in str(err)


def test_describe_masks_url_and_omits_secret_key() -> None:
    ds = DatasourceSettings(
        name="cache",
        type="redis",
        url=f"redis://:{SECRET}@h:6379",
        secret_access_key=SECRET,
    )
    assert ds.describe() == "cache (redis redis://:***@h:6379)"
    assert SECRET not in ds.describe()


def test_describe_of_filesystem_and_memory() -> None:
    assert DatasourceSettings(name="f", type="filesystem", path="/d").describe() == (
        "f (filesystem /d)"
    )
    assert DatasourceSettings(name="m", type="memory").describe() == "m (memory)"


def test_repr_omits_secret_access_key() -> None:
    ds = DatasourceSettings(name="b", type="s3", url="s3://bucket", secret_access_key=SECRET)
    assert SECRET not in repr(ds)
    assert "secret_access_key" not in repr(ds)


def test_repr_masks_url_password() -> None:
    ds = DatasourceSettings(name="cache", type="redis", url=f"redis://u:{SECRET}@h:6379")
    assert SECRET not in repr(ds)
    settings = settings_from_env(
        {"DATASOURCE_CACHE_TYPE": "redis", "DATASOURCE_CACHE_URL": f"redis://:{SECRET}@h"}
    )
    assert SECRET not in repr(settings)


def test_settings_are_frozen() -> None:
    ds = DatasourceSettings(name="m", type="memory")
    with pytest.raises(AttributeError):
        ds.url = "x"  # type: ignore[misc]


# --------------------------------------------------------------------------- mask_url


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("redis://user:pass@host:6379/0", "redis://user:***@host:6379/0"),
        ("redis://:pass@host:6379/0", "redis://:***@host:6379/0"),
        ("postgresql://u:p%40ss@db/x?sslmode=require", "postgresql://u:***@db/x?sslmode=require"),
        ("mongodb://u:p@ss@h/db", "mongodb://u:***@h/db"),  # '@' inside the password
        ("redis://host:6379/0", "redis://host:6379/0"),
        ("s3://bucket/prefix", "s3://bucket/prefix"),
        ("unix:///tmp/redis.sock", "unix:///tmp/redis.sock"),
        ("http://[::1", "http://[::1"),
        ("", ""),
        (None, ""),
    ],
)
def test_mask_url(url: str | None, masked: str) -> None:
    assert mask_url(url) == masked


def test_mask_url_with_user_only_keeps_user() -> None:
    # A bare user (often a token) is treated as credentials: the user stays, a mask is added.
    masked = mask_url("redis://user@host")
    assert masked.startswith("redis://user")
    assert masked.endswith("@host")


@pytest.mark.parametrize("raw", ["abc", "-1", "0.0", "nan", "1e12"])
def test_a_bad_lease_ttl_names_the_variable(raw: str) -> None:
    with pytest.raises(ConfigError) as info:
        settings_from_env({"BLOKRUN_LEASE_TTL": raw})
    assert info.value.variable == "BLOKRUN_LEASE_TTL" and "seconds" in str(info.value)


@pytest.mark.parametrize(("raw", "ttl"), [("off", None), ("0", None), ("2.5", 2.5), ("", 30.0)])
def test_the_lease_ttl_can_be_set_or_turned_off(raw: str, ttl: float | None) -> None:
    assert settings_from_env({"BLOKRUN_LEASE_TTL": raw}).lease_ttl == ttl


def test_an_unknown_queue_datasource_names_the_variable_and_the_choices() -> None:
    with pytest.raises(ConfigError) as info:
        settings_from_env({"BLOKRUN_QUEUE_DATASOURCE": "jobs"})
    assert info.value.variable == "BLOKRUN_QUEUE_DATASOURCE"
    assert "'jobs'" in str(info.value) and "default" in str(info.value)
