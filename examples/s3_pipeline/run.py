"""Run seed query 1: fail at 'aggregate', then resume from it.

By default the ``storage`` datasource is the filesystem under ``.blokrun/storage``; point
it at S3 with ``DATASOURCE_STORAGE_TYPE=s3 DATASOURCE_STORAGE_URL=s3://bucket/prefix``
(plus ``DATASOURCE_STORAGE_ENDPOINT_URL`` for MinIO).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import anyio

from blokrun import Runner, StepFailed

HERE = Path(__file__).resolve().parent


def environment(environ: Mapping[str, str]) -> dict[str, str]:
    env = dict(environ)
    if "DATASOURCE_STORAGE_TYPE" not in env:
        home = env.get("BLOKRUN_HOME", ".blokrun")
        env.update(DATASOURCE_STORAGE_TYPE="filesystem", DATASOURCE_STORAGE_PATH=f"{home}/storage")
    return env


async def main(environ: Mapping[str, str] = os.environ, rows: int = 10_000) -> dict[str, Any]:
    async with Runner.from_env(environment(environ), search_paths=[str(HERE)]) as runner:
        os.environ["PIPELINE_FAIL_AGGREGATE"] = "1"
        try:
            await runner.run(HERE / "workflow.json", {"rows": rows, "chunk_size": 1000})
            raise AssertionError("the aggregate step was meant to fail")
        except StepFailed as exc:
            print(f"failed as planned at {exc.step!r}: {exc.__cause__}")
            rid = exc.request_id
        finally:
            del os.environ["PIPELINE_FAIL_AGGREGATE"]
        result = await runner.resume(rid)
        print(f"resumed {rid}: skipped {result.steps_skipped}, ran {result.steps_run}")
        print("summary:", result.vars["report"]["summary"])
        return {"request_id": rid, "result": result}


if __name__ == "__main__":
    anyio.run(main)
