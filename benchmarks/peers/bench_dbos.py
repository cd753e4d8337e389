"""DBOS Transact: an async ``@DBOS.workflow`` calling N async ``@DBOS.step`` functions.

Each step returns ~50 bytes, which DBOS records in its system database before the workflow
goes on (its checkpoint); the workflow keeps its state in a local dict, as a DBOS program
would. Backends: the system database on PostgreSQL or SQLite (DBOS's default settings:
``DBOSConfig`` with ``system_database_url`` only). DBOS cannot run without persisting, so
there is no "off". 100 runs at once: ``asyncio.gather`` of 100 workflow calls.

Resume: DBOS resumes a workflow whose process died (a workflow whose function raised is
``ERROR``, final). So a child process (mode ``crash-prep``, executor id ``peers-crashed``
so no other process recovers them on launch) runs the 100-step workflows until every one
is inside its 100th step, then exits with ``os._exit``: 99 steps are recorded, each
workflow ``PENDING``. Resuming is ``DBOS.resume_workflow_async(id)`` and waiting for the
result: DBOS re-enqueues the workflow on its internal queue, a queue thread dequeues it
(polled, ~1 s by default), and the workflow replays its 99 recorded steps (each read from
the system database) and runs the last. ``resume_warm_notes`` gives the time from the
workflow function's start to its return (the replay itself, without the queue's pick-up).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from common import RESUME_STEPS, VALUE, Unavailable, main
from dbos import DBOS, SetWorkflowID

CRASH_AT: set[int] = set()  # crash-prep: the step at which every workflow stops
CRASH_IDS: list[str] = []
REACHED: list[str] = []
REPLAY: dict[str, list[float]] = {}  # workflow id -> [function start, function return]


@DBOS.step()
async def step(i: int) -> str:
    if i in CRASH_AT:
        REACHED.append(DBOS.workflow_id or "")
        if len(REACHED) == len(CRASH_IDS):
            print(json.dumps(CRASH_IDS), flush=True)
            os._exit(0)  # the crash: no status update, no clean-up
        await asyncio.sleep(3600)
    return VALUE


@DBOS.workflow()
async def linear(n: int) -> int:
    times = REPLAY.setdefault(DBOS.workflow_id or "", [time.perf_counter()])
    state: dict[str, str] = {}
    for i in range(n):
        state[f"k{i}"] = await step(i)
    times.append(time.perf_counter())
    return len(state)


def system_url(args: argparse.Namespace) -> str:
    if args.backend == "postgresql":
        url = urlsplit(args.pg_url)
        return urlunsplit(url._replace(path="/dbos_peers"))  # DBOS creates the database
    if args.backend == "sqlite":
        return f"sqlite:///{args.data_dir}/dbos.sqlite"
    raise Unavailable(
        "cannot run without persistence" if args.backend == "off" else f"no {args.backend}"
    )


def start(args: argparse.Namespace, executor_id: str = "local") -> None:
    config: Any = {"name": "peers-bench", "system_database_url": system_url(args),
                   "log_level": "WARNING", "executor_id": executor_id}  # fmt: skip
    DBOS(config=config)
    DBOS.launch()


class Dbos:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.replays: list[float] = []

    async def run(self, n: int) -> None:
        assert await linear(n) == n

    async def prepare(self, k: int) -> list[str]:
        a = self.args
        cmd = [sys.executable, sys.argv[0], "crash-prep", "--backend", a.backend,
               "--pg-url", a.pg_url, "--data-dir", a.data_dir, "--count", str(k)]  # fmt: skip
        proc = await asyncio.to_thread(
            subprocess.run, cmd, capture_output=True, text=True, timeout=120, check=False
        )
        if proc.returncode != 0:
            raise RuntimeError(f"crash-prep exited {proc.returncode}: {proc.stderr[-800:]}")
        ids: list[str] = json.loads(proc.stdout.strip().splitlines()[-1])
        return ids

    async def resume(self, run_id: str) -> None:
        handle = await DBOS.resume_workflow_async(run_id)
        assert await handle.get_result() == RESUME_STEPS
        t = REPLAY.get(run_id)
        if t is not None and len(t) == 2:
            self.replays.append(t[1] - t[0])

    def resume_notes(self) -> dict[str, list[float]]:
        return {"replay": self.replays}

    async def close(self) -> None:
        await asyncio.to_thread(DBOS.destroy)


async def connect(args: argparse.Namespace) -> Dbos:
    start(args)
    return Dbos(args)


def crash_prep() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("mode")
    p.add_argument("--backend", required=True)
    p.add_argument("--pg-url", default="")
    p.add_argument("--data-dir", default="")
    p.add_argument("--count", type=int, required=True)
    args = p.parse_args()
    CRASH_AT.add(RESUME_STEPS - 1)
    CRASH_IDS.extend(uuid.uuid4().hex for _ in range(args.count))

    async def go() -> None:
        start(args, executor_id="peers-crashed")

        async def one(wid: str) -> None:
            with SetWorkflowID(wid):
                await linear(RESUME_STEPS)

        await asyncio.gather(*(one(w) for w in CRASH_IDS))
        raise AssertionError("the workflows did not stop at their last step")

    asyncio.run(go())


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "crash-prep":
        crash_prep()
    else:
        main(connect, "dbos", ["dbos", "sqlalchemy", "psycopg", "psycopg-binary"])
