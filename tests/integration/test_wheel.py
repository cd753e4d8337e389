"""The install path a user takes (issue 14.3): the project builds as a wheel, and the wheel
installed on its own (not this checkout) holds the whole package -- the ``blokrun`` console
script, ``py.typed``, every module -- and runs."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_the_wheel_installs_and_runs_outside_the_checkout(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(REPO), "--no-deps", "-q", "-w", str(wheels)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = wheels.glob("blokrun-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        assert "blokrun = blokrun.cli.main:main" in zf.read(entry_points).decode()
    assert "blokrun/py.typed" in names and "blokrun/datasources/registry.py" in names
    assert not any(n.startswith("tests/") for n in names)  # the package only

    target = tmp_path / "site"
    installed = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--target",
            str(target),
            str(wheel),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert installed.returncode == 0, installed.stderr
    workflow = tmp_path / "wf.json"
    workflow.write_text(
        '{"name": "hello", "steps": [{"name": "say", "node": "echo", "inputs": {"x": 1}}]}'
    )
    env = {
        "PYTHONPATH": str(target),
        "BLOKRUN_HOME": str(tmp_path / "home"),
        "PATH": "/usr/bin:/bin",
    }
    where = subprocess.run(
        [sys.executable, "-c", "import blokrun; print(blokrun.__file__)"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert where.stdout.startswith(str(target)), where  # the installed copy, not this checkout
    ran = subprocess.run(
        [sys.executable, "-m", "blokrun", "run", str(workflow)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ran.returncode == 0, ran.stderr
    assert '"say":{"x":1}' in ran.stdout.replace(" ", "")
