"""No secret of a datasource reaches the user (issue 13, class 9): start-up failures of every
network driver, with passwords holding every character a URL must encode, through the
``blokrun`` command -- its message, its traceback (``BLOKRUN_TRACEBACK=1``, which prints the
whole exception chain) and its JSON logs -- and through the API's exception chain."""

from __future__ import annotations

import logging
from pathlib import Path
from urllib.parse import quote

import pytest

from blokrun import Runner
from blokrun.config import DatasourceSettings
from blokrun.errors import BlokrunError
from tests.integration.test_cli import blokrun
from tests.servers.base import free_port

PASSWORD = "Sup3r/Secret:p@ss#w?rd%zz"
ENCODED = quote(PASSWORD, safe="")
SECRET_KEY = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYzEXAMPLEKEY"
FORMS = (PASSWORD, ENCODED, "Sup3r", "Secret", "w?rd", SECRET_KEY, "K7MDENG")


def settings(driver: str) -> DatasourceSettings:
    port = free_port()  # nothing listens: the connect fails
    if driver == "s3":
        return DatasourceSettings(
            name="vault",
            type="s3",
            url="s3://bucket/prefix",
            endpoint_url=f"http://127.0.0.1:{port}",
            access_key_id="AKIDEXAMPLE",
            secret_access_key=SECRET_KEY,
            timeout=2.0,
        )
    scheme = {"postgresql": "postgresql", "redis": "redis", "mongodb": "mongodb"}[driver]
    return DatasourceSettings(
        name="vault",
        type=driver,
        url=f"{scheme}://bob:{ENCODED}@127.0.0.1:{port}/db0"
        if driver != "redis"
        else f"redis://bob:{ENCODED}@127.0.0.1:{port}/0",
        timeout=2.0,
    )


def clean(text: str) -> None:
    for form in FORMS:
        assert form not in text, (form, text)


DRIVERS = ["redis", "postgresql", "mongodb", "s3"]


@pytest.mark.parametrize("driver", DRIVERS)
async def test_a_failed_start_names_the_datasource_and_no_secret(
    driver: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    with pytest.raises(BlokrunError) as info:
        async with Runner([settings(driver)]):
            pass
    assert "vault" in str(info.value)
    seen: BaseException | None = info.value
    while seen is not None:
        clean(str(seen))
        clean(repr(seen))
        for group_member in getattr(seen, "exceptions", ()):
            clean(str(group_member))
        seen = seen.__cause__ or seen.__context__
    clean(caplog.text)


@pytest.mark.parametrize("driver", DRIVERS)
def test_the_command_prints_no_secret_even_with_tracebacks(driver: str, tmp_path: Path) -> None:
    s = settings(driver)
    env = {
        "DATASOURCE_VAULT_TYPE": s.type,
        "DATASOURCE_VAULT_TIMEOUT": "2",
        "BLOKRUN_TRACEBACK": "1",
        "BLOKRUN_LOG_LEVEL": "DEBUG",
    }
    for var, value in (
        ("URL", s.url),
        ("ENDPOINT_URL", s.endpoint_url),
        ("ACCESS_KEY_ID", s.access_key_id),
        ("SECRET_ACCESS_KEY", s.secret_access_key),
    ):
        if value:
            env[f"DATASOURCE_VAULT_{var}"] = value
    for args in (("runs",), ("--log-format", "json", "runs")):
        proc = blokrun(tmp_path, *args, **env)
        assert proc.returncode != 0
        assert "vault" in proc.stderr
        clean(proc.stderr)
        clean(proc.stdout)


def test_an_unencoded_password_is_refused_before_anything_connects(tmp_path: Path) -> None:
    proc = blokrun(
        tmp_path,
        "runs",
        DATASOURCE_VAULT_TYPE="redis",
        DATASOURCE_VAULT_URL="redis://:Sup3r/Secret@127.0.0.1:6390/0",
    )
    assert proc.returncode == 2, proc.stderr
    assert "DATASOURCE_VAULT_URL" in proc.stderr and "%2F" in proc.stderr
    clean(proc.stderr)
