"""Seed 000 as written: ``ctx.id`` and ``ctx.persistence`` reach nodes, and a step's
``persistence.key`` without a ``target`` publishes to the workflow's checkpoint targets."""

from __future__ import annotations

from blokrun import Runner
from blokrun.config import DatasourceSettings
from blokrun.datasources import build_datasource

NODE = "tests.integration.wfnodes"


def mem(name: str) -> DatasourceSettings:
    return DatasourceSettings(name=name, type="memory")


async def test_nodes_see_ctx_id_and_ctx_persistence() -> None:
    wf = {
        "name": "seed",
        "datasources": ["cache", "db"],
        "persistence": {
            "targets": ["cache", "db"],
            "keyPattern": "wf/${ctx.request.id}/${stepName}",
        },
        "steps": [{"name": "look", "node": f"{NODE}:show_ctx"}],
    }
    stores = [build_datasource(mem("cache")), build_datasource(mem("db"))]
    async with Runner(stores) as runner:
        result = await runner.run(wf, request_id="seed-1")
    assert result.vars["look"] == {
        "id": "seed-1",
        "enabled": True,
        "auto_save": True,
        "targets": ["cache", "db"],
        "datasources": ["cache", "db"],
        "key_pattern": "wf/${ctx.request.id}/${stepName}",
    }


async def test_a_key_without_a_target_is_published_on_every_checkpoint_target() -> None:
    wf = {
        "name": "publish",
        "datasources": ["cache", "db"],
        "persistence": {"targets": ["cache", "db"]},
        "steps": [
            {
                "name": "load-data",
                "node": "echo",
                "inputs": {"rows": [1, 2, 3]},
                "persistence": {"key": "raw-data-${ctx.request.id}"},
            },
            {
                "name": "read-back",
                "node": "echo",
                "inputs": {
                    "cache": "${ctx.datasource('cache', 'raw-data-${ctx.request.id}')}",
                    "db": "${ctx.datasource('db', 'raw-data-${ctx.request.id}')}",
                },
            },
        ],
    }
    stores = [build_datasource(mem("cache")), build_datasource(mem("db"))]
    async with Runner(stores) as runner:
        result = await runner.run(wf, request_id="p-1")
    assert result.vars["read-back"] == {"cache": {"rows": [1, 2, 3]}, "db": {"rows": [1, 2, 3]}}
