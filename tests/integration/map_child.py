"""A map of N items in a child process: ``run`` (killed with SIGKILL at item KILL_AT),
``count`` (how many item results are stored) or ``resume``.

python -m tests.integration.map_child HOME REQUEST_ID MODE N KILL_AT

The datasource is ``default`` from DATASOURCE_DEFAULT_* (the filesystem under HOME when
unset). ``resume`` prints the number of results and their checksum.
"""

from __future__ import annotations

import os
import sys
from dataclasses import replace

import anyio

from blokrun import Runner
from blokrun.config import settings_from_env
from blokrun.datasources import build_datasource
from blokrun.persistence.items import load_items

CONCURRENCY = 50


def workflow(n: int) -> dict[str, object]:
    return {
        "name": "bigmap",
        "steps": [
            {"name": "make", "node": "set", "inputs": {"xs": list(range(n))}},
            {
                "name": "square",
                "node": "tests.integration.wfnodes:map_item",
                "map": {"items": "${ctx.vars.xs}", "concurrency": CONCURRENCY},
                "inputs": {"x": "${ctx.item}"},
            },
        ],
    }


async def main(home: str, rid: str, mode: str, n: int, kill_at: int) -> None:
    environ = dict(os.environ)
    environ.setdefault("BLOKRUN_HOME", home)
    settings = settings_from_env(environ).datasources["default"]
    if settings.type == "filesystem":
        settings = replace(settings, path=f"{home}/ck")
    async with Runner([build_datasource(settings)]) as runner:
        if mode == "run":
            os.environ["WF_KILL_AT_ITEM"] = str(kill_at)
            await runner.run(workflow(n), request_id=rid)
        elif mode == "count":
            info = await runner.inspect(rid)
            head = info.head
            assert head is not None
            found, _ = await load_items(
                [runner.datasources["default"]],
                request_id=rid,
                incarnation=head.incarnation,
                started_at=head.started_at,
                steps=["square"],
                envelope=runner.store.envelope,
            )
            stored = sorted(i for results in found.values() for i in results)
            print(" ".join(map(str, stored)))
        else:
            result = await runner.resume(rid)
            out = result.vars["square"]
            results = out["results"]
            print(len(results), sum(r["sq"] for r in results), len(out["failed"]))


if __name__ == "__main__":
    anyio.run(main, sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))
