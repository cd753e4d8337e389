"""The workflow language, one construct per file, run on the embedded default.

    choice.json       conditions ("when") and a choice of branches
    map.json          a map over a list: per-item checkpoints, a failure policy
    subworkflow.json  a child run (payment.json); a resumed parent finds it
    timer.json        a durable sleep
    schedule.json     a cron schedule (run by: blokrun worker --schedule schedule.json)
    fork              blokrun fork ID --from-step NAME: a new run from an old one's checkpoint

``python examples/language/run.py`` runs them all and prints what each did.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import anyio

from blokrun import Runner
from blokrun.workers import Scheduler, read_schedules

HERE = Path(__file__).resolve().parent
LINES = [{"qty": 2, "price": 30}, {"qty": 1, "price": 5}]


async def main(environ: Mapping[str, str] = os.environ) -> dict[str, Any]:
    env = dict(environ)
    env.setdefault("DATASOURCE_QUEUE_TYPE", "memory")  # for the schedule: one process
    env.setdefault("BLOKRUN_QUEUE_DATASOURCE", "queue")
    out: dict[str, Any] = {}
    async with Runner.from_env(env, search_paths=[str(HERE)]) as runner:
        shipped = await runner.run(HERE / "choice.json", {"lines": LINES, "country": "NL"})
        out["choice"] = shipped.vars["done"]["route"]
        mapped = await runner.run(
            HERE / "map.json", {"images": ["a.png", "b.png", "broken.png", "c.png"]}
        )
        out["map"] = mapped.vars["thumbs"]
        paid = await runner.run(HERE / "subworkflow.json", {"lines": LINES}, request_id="co-1")
        out["subworkflow"] = (paid.vars["receipt"]["paid"], (await runner.inspect("co-1")).children)
        waited = await runner.run(HERE / "timer.json", {"delay": 0.2})
        out["timer"] = waited.vars["remind"]["message"]
        forked = await runner.fork("co-1", from_step="receipt", set_vars={"pay.charge.charged": 1})
        out["fork"] = (forked.request_id, forked.vars["receipt"]["paid"])
        scheduler = Scheduler(runner, [runner.load(HERE / "schedule.json")])
        await scheduler.round()  # a new schedule: it starts with the next hour
        assert runner.queue_datasource is not None
        [schedule] = await read_schedules(runner.queue_datasource)
        out["schedule"] = (schedule.id, schedule.spec, schedule.next_tick() - schedule.last_tick)
    for name, what in out.items():
        print(f"{name:<12} {what}")
    return out


if __name__ == "__main__":
    anyio.run(main)
