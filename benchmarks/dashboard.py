"""The dashboard's server time: the runs list over 10,000 stored runs (first page, filtered
by status, searched by id), the live refresh of the rows shown, and one run's page with 200
checkpoints -- on the embedded default (the filesystem) and on Redis.

The runs are real runs of a two-step workflow (one in ten failed), made 100 at a time; the
pages are served by ``blokrun_app`` in-process (httpx's ASGI transport: server time, no
network). Medians of 5 after a warm-up. Beside them, reading every head -- what listing cost
before the run index (``blokrun.datasources.index``) -- on the same store.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import httpx

from benchmarks.drivers import _launch, _Skipped, _stop
from blokrun import Runner, StepFailed
from blokrun.config import DatasourceSettings
from blokrun.web import blokrun_app

if TYPE_CHECKING:
    from benchmarks.harness import Report

SECTION = "Dashboard: server time"


def flow(fail: bool) -> dict[str, Any]:
    return {
        "name": "dash",
        "steps": [
            {"name": "a", "node": "set", "inputs": {"x": 1}},
            {"name": "b", "node": "fail" if fail else "echo", "inputs": {}},
        ],
    }


def long_run(steps: int) -> dict[str, Any]:
    return {
        "name": "long",
        "steps": [{"name": f"s{i}", "node": "set", "inputs": {f"v{i}": i}} for i in range(steps)],
    }


async def make_runs(runner: Runner, count: int) -> None:
    limiter = anyio.CapacityLimiter(100)

    async def one(i: int) -> None:
        async with limiter:
            try:
                await runner.run(flow(i % 10 == 0), request_id=f"d-{i:05d}")
            except StepFailed:
                pass

    async with anyio.create_task_group() as tg:
        for i in range(count):
            tg.start_soon(one, i)


async def timed(http: httpx.AsyncClient, path: str, repeats: int = 5) -> float:
    await http.get(path)  # warm-up
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        response = await http.get(path)
        samples.append(time.perf_counter() - t0)
        assert response.status_code == 200, (path, response.status_code)
    return statistics.median(samples)


async def on_store(report: Report, label: str, settings: DatasourceSettings, count: int) -> None:
    async with Runner([settings]) as runner:
        t0 = time.perf_counter()
        await make_runs(runner, count)
        made = time.perf_counter() - t0
        await runner.run(long_run(200), request_id="long-1")
        transport = httpx.ASGITransport(app=blokrun_app(runner, read_only=True))
        async with httpx.AsyncClient(transport=transport, base_url="http://bench") as http:
            first = await timed(http, "/api/runs?limit=50")
            failed = await timed(http, "/api/runs?limit=50&status=failed")
            search = await timed(http, "/api/runs?limit=50&q=d-0999")
            page = await timed(http, "/")
            one = await timed(http, "/runs/long-1")
            shown = (await http.get("/api/runs?limit=50")).json()["runs"]
            ids = "&".join(f"id={r['request_id']}" for r in shown)
            live = await timed(http, f"/api/statuses?{ids}")
        scans = []
        for _ in range(3):
            t0 = time.perf_counter()
            n = len([r async for r in runner.iter_runs()])
            scans.append(time.perf_counter() - t0)
        scan = statistics.median(scans)
    note = f"{count:,} runs on {label} (made in {made:.1f} s)"
    section = f"{SECTION} ({label})"
    report.add(section, "runs list, first page of 50 (API)", first, "s", note)
    report.add(section, "runs list, failed only (API)", failed, "s", note)
    report.add(section, "runs list, search 'd-0999' in ids (API)", search, "s", note)
    report.add(section, "runs page (HTML, with counts per status)", page, "s", note)
    report.add(section, "live refresh of the 50 runs shown (API)", live, "s",
               "what an open runs page polls every 2 s: one head read per row")  # fmt: skip
    report.add(section, "a run's page, 200 checkpoints (HTML)", one, "s",
               "timeline, table and the state at the latest checkpoint")  # fmt: skip
    report.add(section, "reading every head (listing before the index)", scan, "s",
               f"{n:,} heads; {scan / first:.0f}x the first page through the index")  # fmt: skip


async def run(report: Report, quick: bool = False) -> None:
    count = 1000 if quick else 10_000
    home = tempfile.mkdtemp(prefix="blokrun-bench-dash-")
    settings = DatasourceSettings(name="default", type="filesystem", path=home)
    await on_store(report, "the filesystem default", settings, count)
    with tempfile.TemporaryDirectory(prefix="blokrun-bench-dash-") as tmp:
        server, reason = _launch("redis", Path(tmp))
        if server is None:
            report.add(f"{SECTION} (redis)", "runs list", _Skipped(), "", (reason or "")[:300])
            return
        try:
            await on_store(report, "redis", server.settings("default"), count)
        finally:
            _stop(server)
