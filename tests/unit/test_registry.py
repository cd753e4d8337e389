"""Driver lookup: lazy imports and the one error that names the missing extra."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest

from blokrun.config import DatasourceSettings
from blokrun.datasources import build_datasource
from blokrun.errors import MissingExtraError


def test_importing_blokrun_and_running_on_the_filesystem_imports_no_driver_library() -> None:
    code = (
        "import sys, anyio, blokrun\n"
        "from blokrun import Runner\n"
        "from blokrun.config import DatasourceSettings\n"
        "async def main():\n"
        "    async with Runner([DatasourceSettings(name='default', type='memory')]) as r:\n"
        "        await r.run({'name': 'x', 'steps': [{'name': 'a', 'node': 'set', 'inputs': {'k': 1}}]})\n"
        "anyio.run(main)\n"
        "loaded = [m for m in ('redis', 'asyncpg', 'pymongo', 'aioboto3', 'botocore', 'cryptography') if m in sys.modules]\n"
        "print(','.join(loaded))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.strip() == ""


@pytest.mark.parametrize(
    ("dtype", "library", "extra"),
    [
        ("redis", "redis", "redis"),
        ("postgresql", "asyncpg", "postgresql"),
        ("mongodb", "pymongo", "mongodb"),
        ("s3", "aioboto3", "s3"),
    ],
)
def test_a_missing_library_names_the_extra_to_install(
    monkeypatch: pytest.MonkeyPatch, dtype: str, library: str, extra: str
) -> None:
    from blokrun.datasources import registry

    importer: Any = registry.importlib  # type: ignore[attr-defined]  # the module it calls
    real = importer.import_module

    def fake_import(name: str, package: str | None = None) -> Any:
        if name == library:
            raise ModuleNotFoundError(f"No module named {library!r}", name=library)
        return real(name, package)

    monkeypatch.setattr(importer, "import_module", fake_import)
    settings = DatasourceSettings(name="store", type=dtype, url="x://unused")
    with pytest.raises(MissingExtraError) as info:
        build_datasource(settings)
    assert f"pip install 'blokrun[{extra}]'" in str(info.value)
    assert "'store'" in str(info.value)
