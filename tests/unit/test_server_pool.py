"""A throwaway server that cannot be started skips its tests on a developer's machine, and
fails them under CI (``CI=true``) or ``make test`` (``BLOKRUN_TEST_SERVERS=required``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import ServerPool


@pytest.fixture
def pool(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ServerPool:
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.delenv("BLOKRUN_TEST_SERVERS", raising=False)
    return ServerPool(tmp_path)


def test_a_missing_server_skips_with_the_reason(pool: ServerPool) -> None:
    with pytest.raises(pytest.skip.Exception, match="never starts"):
        pool.get("unavailable")
    with pytest.raises(pytest.skip.Exception, match="never starts"):  # remembered, not retried
        pool.get("unavailable")


@pytest.mark.parametrize(("var", "value"), [("CI", "true"), ("BLOKRUN_TEST_SERVERS", "required")])
def test_a_missing_server_fails_when_servers_are_required(
    pool: ServerPool, monkeypatch: pytest.MonkeyPatch, var: str, value: str
) -> None:
    monkeypatch.setenv(var, value)
    with pytest.raises(pytest.fail.Exception, match=r"could not be started.*never starts"):
        pool.get("unavailable")
    with pytest.raises(pytest.fail.Exception):
        pool.get("unavailable")


def test_server_tests_are_marked_so_they_can_be_left_out(pytestconfig: pytest.Config) -> None:
    """``-m "not server"`` leaves out the tests that start a server, and only those."""
    import subprocess
    import sys

    def collected(*args: str) -> set[str]:
        out = subprocess.run(
            [sys.executable, "-m", "pytest", "--co", "-q", "-p", "no:cacheprovider", *args],
            cwd=pytestconfig.rootpath,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        return {line for line in out.splitlines() if "::" in line}

    target = "tests/contract/test_contract.py"
    everything = collected(target)
    local = collected(target, "-m", "not server")
    assert local and local < everything
    assert all("[memory" in t or "[filesystem" in t for t in local), sorted(local)[:5]
    assert all("[redis" not in t and "[postgresql" not in t for t in local)
