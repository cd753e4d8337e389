"""A third-party driver (issue 12): shipped by a package in the ``blokrun.drivers``
entry-point group -- found by real entry-point discovery (``importlib.metadata``) from a
distribution's metadata under ``tests/thirdparty/site`` -- and configured from
``DATASOURCE_*`` like a built-in one, its own setting included; also ``register_driver()``
from code, and the errors of drivers that cannot be used."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from blokrun import ConfigError, Runner, register_driver
from blokrun.config import settings_from_env
from blokrun.datasources import DRIVERS, Driver, DriverTable, Store, create_store
from blokrun.datasources.settings import DatasourceSettings

HERE = Path(__file__).resolve().parent.parent / "thirdparty"
REPO = HERE.parents[1]


@pytest.fixture
def on_path(monkeypatch: pytest.MonkeyPatch) -> Callable[[str], None]:
    """Puts a folder of installed distributions on ``sys.path`` for one test."""

    def add(folder: str) -> None:
        monkeypatch.syspath_prepend(str(HERE / folder))

    return add


def test_an_entry_point_driver_is_found_and_built(on_path: Callable[[str], None]) -> None:
    on_path("site")
    table = DriverTable()
    driver = table.get("sqlite")
    assert driver is not None and driver.name == "sqlite"
    assert "blokrun-sqlite 0.1.0" in driver.origin and "entry point 'sqlite'" in driver.origin
    assert table.get("SQLite3") is driver  # its alias, any case
    assert "sqlite" in table.names() and "FILE" in table.all_settings()


def test_the_command_runs_and_resumes_on_a_driver_from_a_package(tmp_path: Path) -> None:
    """``DATASOURCE_LITE_TYPE=sqlite`` in a fresh process: the entry point is discovered,
    ``DATASOURCE_LITE_FILE`` reaches the driver, checkpoints land in the SQLite file."""
    wf = tmp_path / "wf.json"
    node = "tests.integration.wfnodes:add"
    wf.write_text(
        json.dumps(
            {
                "name": "plugged",
                "persistence": {"targets": ["lite"]},
                "steps": [{"name": f"s{i}", "node": node, "inputs": {"n": i}} for i in (1, 2, 3)],
            }
        )
    )
    db = tmp_path / "runs.sqlite"
    env = {
        "PATH": "/usr/bin:/bin",
        "PYTHONPATH": f"{HERE / 'site'}:{REPO}",
        "BLOKRUN_HOME": str(tmp_path / "home"),
        "DATASOURCE_LITE_TYPE": "sqlite",
        "DATASOURCE_LITE_FILE": str(db),
    }

    def blokrun(*args: str, **extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "blokrun", *args],
            env=env | extra,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )

    failed = blokrun(
        "run", str(wf), "--request-id", "p-1", "--input", '{"total": 0}', WF_FAIL_AT="s3"
    )
    assert failed.returncode == 1, failed.stderr
    resumed = blokrun("resume", "p-1")
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout)["total"] == 6
    with sqlite3.connect(db) as conn:
        keys = {k for (k,) in conn.execute("SELECT k FROM kv")}
    assert "_blokrun.head.p-1" in keys and "p-1-s3" in keys
    assert sum(k.startswith("_blokrun.ckpt.p-1/") for k in keys) == 3
    listed = blokrun("runs", "--json")
    assert [r["status"] for r in json.loads(listed.stdout)["runs"]] == ["completed"]
    missing = blokrun("runs", DATASOURCE_LITE_FILE="")
    assert missing.returncode == 2 and "DATASOURCE_LITE_FILE" in missing.stderr
    wrong = blokrun("runs", DATASOURCE_LITE_URL="sqlite://x")
    assert wrong.returncode == 2
    assert "DATASOURCE_LITE_URL" in wrong.stderr and "takes no URL" in wrong.stderr


async def test_register_driver_from_code(tmp_path: Path) -> None:
    from blokrun.datasources.filesystem import create as fs_create

    def create(settings: DatasourceSettings) -> Store:
        return fs_create(
            DatasourceSettings(name=settings.name, type="filesystem", path=settings.options["DIR"])
        )

    register_driver(
        Driver("folder_test", create, needs=frozenset({"DIR"}), settings=frozenset({"DIR"}))
    )
    try:
        env = {"DATASOURCE_F_TYPE": "folder_test", "DATASOURCE_F_DIR": str(tmp_path / "d")}
        settings = settings_from_env(env).datasources["f"]
        assert settings.options == {"DIR": str(tmp_path / "d")}
        async with Runner([settings]) as runner:
            wf = {
                "name": "w",
                "persistence": {"targets": ["f"]},
                "steps": [{"name": "a", "node": "echo"}],
            }
            assert (await runner.run(wf, {}, request_id="r")).status == "completed"
        assert any((tmp_path / "d").rglob("*"))
        with pytest.raises(ConfigError, match="taken by driver 'folder_test'"):
            register_driver(Driver("folder_test", create))
        assert register_driver(Driver("folder_test", create), replace=True).name == "folder_test"
    finally:
        DRIVERS._by_name.pop("folder_test", None)


def test_an_entry_point_that_cannot_be_imported_names_it_and_its_package(
    on_path: Callable[[str], None],
) -> None:
    on_path("broken_site")
    with pytest.raises(ConfigError) as info:
        DriverTable().get("ghost")
    message = str(info.value)
    assert "'ghost'" in message and "blokrun-broken 1.2.3" in message
    assert "blokrun_ghost_module" in message


def test_an_entry_point_taking_a_builtin_name_is_refused(on_path: Callable[[str], None]) -> None:
    on_path("clash_site")
    with pytest.raises(ConfigError) as info:
        DriverTable().get("nosuchtype")  # any lookup miss loads the entry points
    assert "'redis'" in str(info.value) and "blokrun-clash 0.0.1" in str(info.value)


def test_an_unknown_type_lists_every_known_one() -> None:
    with pytest.raises(ConfigError) as info:
        settings_from_env({"DATASOURCE_X_TYPE": "cassandra"})
    assert info.value.variable == "DATASOURCE_X_TYPE"
    for name in ("redis", "postgresql", "mongodb", "s3", "filesystem", "memory"):
        assert name in str(info.value)
    with pytest.raises(ConfigError, match="unknown type 'cassandra'"):
        create_store(DatasourceSettings(name="x", type="cassandra"))


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"name": "Bad-Name", "store": "m:f"}, "lower-case identifier"),
        ({"name": "ok", "store": "no_colon"}, "module:function"),
        ({"name": "ok", "store": "m:f", "needs": frozenset({"X"})}, "needs"),
    ],
)
def test_a_malformed_driver_is_refused(kwargs: dict[str, object], expected: str) -> None:
    with pytest.raises(ConfigError, match=expected):
        Driver(**kwargs)  # type: ignore[arg-type]
