"""The dashboard over HTTP (the ASGI app in-process, httpx): every view and action, on the
filesystem default and Redis; escaping, tokens, CSRF, read-only, error shapes."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from uuid import uuid4

import anyio
import httpx
import pytest

from blokrun import Runner, StepFailed
from blokrun.config import DatasourceSettings
from blokrun.web import blokrun_app
from tests.conftest import ServerPool
from tests.integration import wfnodes

NODE = "tests.integration.wfnodes"
EVIL = '<script>alert(1)</script>"><img src=x onerror=alert(2)>'


def flow(name: str = "shop") -> dict[str, Any]:
    return {
        "name": name,
        "steps": [
            {"name": "load", "node": "set", "inputs": {"note": EVIL, "big": "x" * 5000}},
            {"name": "charge", "node": f"{NODE}:add", "inputs": {"n": 5}},
            {"name": "ship", "node": f"{NODE}:add", "inputs": {"n": 7}},
        ],
    }


def asking() -> dict[str, Any]:
    return {
        "name": "approval",
        "steps": [
            {"name": "ask", "node": "await-input", "inputs": {"prompt": "ok?", "schema": {
                "type": "object", "required": ["amount"],
                "properties": {"amount": {"type": "number"}, "who": {"type": "string"}}}}},
            {"name": "after", "node": "echo", "inputs": {"got": "${ctx.vars.ask}"}},
        ],
    }  # fmt: skip


@pytest.fixture(params=["filesystem", "redis"])
async def runner(request: pytest.FixtureRequest, server_pool: ServerPool) -> AsyncIterator[Runner]:
    settings = server_pool.get(request.param).settings("default", prefix=f"web-{uuid4().hex[:8]}/")
    async with Runner([settings]) as rt:
        yield rt


def client(app: Any, **kw: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t", **kw)


async def failed_run(rt: Runner, rid: str = "r-1") -> None:
    wfnodes.FAIL_AT.add("ship")
    with pytest.raises(StepFailed):
        await rt.run(flow(), {"total": 0}, request_id=rid)
    wfnodes.FAIL_AT.clear()


def csrf_of(page: httpx.Response) -> str:
    match = re.search(r'name=csrf value="([^"]+)"', page.text)
    assert match, page.text[:500]
    return match.group(1)


async def test_runs_list_filters_and_counts(runner: Runner) -> None:
    await failed_run(runner, "r-1")
    await runner.run(flow("other"), {"total": 0}, request_id="r-2")
    async with client(blokrun_app(runner)) as http:
        page = await http.get("/")
        assert page.status_code == 200
        assert "r-1" in page.text and "r-2" in page.text
        assert "failed 1" in page.text and "completed 1" in page.text
        only_failed = await http.get("/", params={"status": "failed"})
        assert "r-1" in only_failed.text and ">r-2<" not in only_failed.text
        data = (await http.get("/api/runs", params={"workflow": "other"})).json()
        assert [r["request_id"] for r in data["runs"]] == ["r-2"]
        found = (await http.get("/api/runs", params={"q": "-1"})).json()
        assert [r["request_id"] for r in found["runs"]] == ["r-1"]
        assert (await http.get("/api/counts")).json() == {"completed": 1, "failed": 1}
        paged = (await http.get("/api/runs", params={"limit": 1})).json()
        assert len(paged["runs"]) == 1 and paged["cursor"]
        rest = (await http.get("/api/runs", params={"limit": 1, "cursor": paged["cursor"]})).json()
        assert {paged["runs"][0]["request_id"], rest["runs"][0]["request_id"]} == {"r-1", "r-2"}


async def test_a_run_page_shows_timeline_checkpoints_state_and_diff(runner: Runner) -> None:
    await failed_run(runner)
    async with client(blokrun_app(runner)) as http:
        page = await http.get("/runs/r-1")
        assert page.status_code == 200
        html = page.text
        assert "class=timeline" in html and 'title="charge · attempt 1 · completed"' in html
        assert 'class="bar st-failed' in html  # the failed step is marked
        assert "ship: RuntimeError: ship failed on purpose" in html
        assert "<h2>state at #2 (charge)</h2>" in html
        assert "… (5000 bytes)" in html  # a large value is cut, its size shown
        detail = (await http.get("/api/runs/r-1")).json()
        assert detail["status"] == "failed" and detail["failed_step"] == "ship"
        assert [c["step"] for c in detail["checkpoints"]] == ["load", "charge"]
        state = (await http.get("/api/runs/r-1/state", params={"seq": 1})).json()
        assert state["vars"]["note"] == EVIL and state["vars"]["big"]["$size"] == 5000
        diff = (await http.get("/api/runs/r-1/diff", params={"a": 1, "b": 2})).json()
        assert any(line.startswith("+ vars.charge") for line in diff["lines"])
        shown = await http.get("/runs/r-1", params={"a": 1, "b": 2})
        assert "diff #1 → #2" in shown.text


async def test_everything_from_a_run_is_escaped(runner: Runner) -> None:
    await failed_run(runner)
    async with client(blokrun_app(runner)) as http:
        html = (await http.get("/runs/r-1", params={"seq": 1})).text
    assert "<script>alert(1)</script>" not in html
    assert "<img src=x" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "&lt;img src=x onerror=alert(2)&gt;" in html


async def test_resume_from_the_page_with_csrf_and_a_dry_run_first(runner: Runner) -> None:
    await failed_run(runner)
    async with client(blokrun_app(runner), follow_redirects=False) as http:
        page = await http.get("/runs/r-1")
        csrf = csrf_of(page)
        forged = await http.post("/runs/r-1/resume", data={"csrf": "guess"})
        assert forged.status_code == 403
        preview = await http.post(
            "/runs/r-1/resume", data={"csrf": csrf, "from_step": "charge", "dry_run": "1"}
        )
        assert preview.status_code == 303
        notice = (await http.get(preview.headers["location"])).text
        assert "preview: after load it would skip load and run charge, ship" in notice
        assert (await runner.inspect("r-1")).status == "failed"  # a preview runs nothing
        done = await http.post("/runs/r-1/resume", data={"csrf": csrf})
        assert "resume%3A%20completed" in done.headers["location"]
    assert (await runner.inspect("r-1")).status == "completed"


async def test_json_actions_and_error_shapes(runner: Runner) -> None:
    await failed_run(runner)
    async with client(blokrun_app(runner)) as http:
        await http.get("/")
        token = http.cookies["blokrun_csrf"]
        headers = {"X-CSRF-Token": token}
        missing = await http.get("/api/runs/nope")
        assert missing.status_code == 404 and missing.json()["type"] == "RunNotFound"
        bad = await http.get("/api/runs", params={"limit": 0})
        assert bad.status_code == 400 and "limit" in bad.json()["error"]
        step = await http.post("/api/runs/r-1/resume", json={"from_step": "zz"}, headers=headers)
        assert step.status_code == 409 and "is not a step" in step.json()["error"]
        ok = await http.post("/api/runs/r-1/resume", json={"set": {"total": 100}}, headers=headers)
        assert ok.status_code == 200 and ok.json()["status"] == "completed"
        assert ok.json()["steps_run"] == ["ship"]
        gc = (await http.get("/api/gc")).json()
        assert gc["dry_run"] is True


async def test_answer_an_await_input_step_with_its_form(runner: Runner) -> None:
    result = await runner.run(asking(), request_id="q-1")
    assert result.status == "suspended" and result.token
    async with client(blokrun_app(runner), follow_redirects=False) as http:
        page = await http.get("/runs/q-1")
        assert 'name="in.amount" type=number' in page.text and 'name="in.who"' in page.text
        csrf = csrf_of(page)
        wrong = await http.post("/runs/q-1/input",
                                data={"csrf": csrf, "in.amount": "3", "token": "nope"})  # fmt: skip
        assert "refused" in wrong.headers["location"]
        answered = await http.post("/runs/q-1/input", data={
            "csrf": csrf, "in.amount": "3", "in.who": "ada", "token": result.token})  # fmt: skip
        assert answered.status_code == 303
    final = await runner.inspect("q-1")
    assert final.status == "completed"


async def test_read_only_hides_and_refuses_actions(runner: Runner) -> None:
    await failed_run(runner)
    async with client(blokrun_app(runner, read_only=True)) as http:
        page = await http.get("/runs/r-1")
        assert "<form method=post" not in page.text
        csrf = http.cookies["blokrun_csrf"]
        refused = await http.post("/api/runs/r-1/resume", json={}, headers={"X-CSRF-Token": csrf})
        assert refused.status_code == 403 and "read-only" in refused.json()["error"]
    assert (await runner.inspect("r-1")).status == "failed"


async def test_a_token_is_required_on_every_request_when_set(runner: Runner) -> None:
    secret = "s3cret-token-0123456789"
    app = blokrun_app(runner, token=secret)
    async with client(app) as http:
        assert (await http.get("/")).status_code == 401
        assert (await http.get("/api/runs")).status_code == 401
        assert (await http.get("/", params={"token": "wrong-token-0123456"})).status_code == 401
        first = await http.get("/", params={"token": secret})
        assert first.status_code == 200
        assert (await http.get("/api/runs")).status_code == 200  # the cookie carries it now
        assert secret not in first.text
    async with client(app, headers={"Authorization": f"Bearer {secret}"}) as http:
        assert (await http.get("/api/counts")).status_code == 200


async def test_no_datasource_url_or_secret_reaches_a_page(
    tmp_path: Path, server_pool: ServerPool
) -> None:
    settings = server_pool.get("redis").settings("default")
    url = (settings.url or "").replace("redis://", "redis://:hunter2-pass@")
    async with Runner([DatasourceSettings(name="default", type="memory")]) as rt:
        await failed_run(rt)
        async with client(blokrun_app(rt)) as http:
            texts = [(await http.get(p)).text for p in ("/", "/runs/r-1", "/api/runs/r-1",
                                                       "/api/queue", "/api/gc")]  # fmt: skip
    assert not any("hunter2" in t or "redis://" in t for t in texts), url


async def test_static_assets_are_served_from_the_package(runner: Runner) -> None:
    async with client(blokrun_app(runner)) as http:
        css = await http.get("/static/app.css")
        js = await http.get("/static/app.js")
    assert css.status_code == 200 and "timeline" in css.text
    assert js.status_code == 200 and "textContent" in js.text and "innerHTML" not in js.text


def test_blokrun_ui_refuses_a_public_address_without_a_token(tmp_path: Path) -> None:
    import subprocess
    import sys

    from tests.integration.test_cli import REPO, cli_env

    out = subprocess.run(
        [sys.executable, "-m", "blokrun", "ui", "--host", "0.0.0.0", "--port", "1"],
        cwd=REPO, env=cli_env(tmp_path), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 2
    assert "BLOKRUN_UI_TOKEN" in out.stderr and "not loopback" in out.stderr
    short = subprocess.run(
        [sys.executable, "-m", "blokrun", "ui", "--host", "0.0.0.0"],
        cwd=REPO, env=cli_env(tmp_path, BLOKRUN_UI_TOKEN="short"), capture_output=True,
        text=True, timeout=60,
    )  # fmt: skip
    assert short.returncode == 2 and "at least 16 characters" in short.stderr


def test_blokrun_ui_serves_the_dashboard_on_loopback(tmp_path: Path) -> None:
    import socket
    import subprocess
    import sys
    import time

    from tests.integration.test_cli import REPO, cli_env

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "blokrun", "ui", "--port", str(port), "--read-only"],
        cwd=REPO, env=cli_env(tmp_path), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                page = httpx.get(f"http://127.0.0.1:{port}/", timeout=2)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline and proc.poll() is None
                time.sleep(0.1)
        assert page.status_code == 200 and "no runs yet" in page.text
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=20)
    assert f"blokrun ui: http://127.0.0.1:{port}/ (read-only)" in err


async def test_the_queue_and_the_workers_seen_recently() -> None:
    import anyio

    from blokrun.workers import Worker

    settings = [
        DatasourceSettings(name="default", type="memory"),
        DatasourceSettings(name="q", type="memory"),
    ]
    async with Runner(settings, queue_datasource="q", lease_ttl=3) as rt:
        gate = {"name": "gated", "steps": [{"name": "wait", "node": f"{NODE}:wait_gate"}]}
        rid = await rt.submit(gate, request_id="g-1")
        await rt.submit(flow(), {"total": 0}, request_id="queued-1")
        worker = Worker(rt, await rt.queue(), concurrency=1, claim_ttl=3, name="w-one")
        stop = anyio.Event()
        async with anyio.create_task_group() as tg, client(blokrun_app(rt)) as http:
            tg.start_soon(worker.serve, stop)
            await wfnodes.wait_for_gate_waiters(1)
            with anyio.fail_after(5):  # the worker tells what it runs with every heartbeat
                while not (queue := (await http.get("/api/queue")).json())["workers"][0]["running"]:  # noqa: ASYNC110 (polls the API)
                    await anyio.sleep(0.05)
            page = (await http.get("/")).text
            wfnodes.GATE.set()
            assert (await rt.wait(rid)).status == "completed"
            stop.set()
    assert queue["configured"] and queue["waiting"] == 1 and queue["claimed"] == 1
    [seen] = queue["workers"]
    assert seen["name"] == "w-one" and seen["running"] == ["g-1"] and seen["concurrency"] == 1
    assert "1 waiting · 1 claimed · 0 parked" in page and "w-one" in page


async def test_gc_preview_deletes_nothing(runner: Runner) -> None:
    await runner.run(flow(), {"total": 0}, request_id="old-1")
    async with client(blokrun_app(runner)) as http:
        page = await http.get("/gc")
        assert page.status_code == 200 and "nothing was" in page.text
        assert (await http.get("/api/gc")).json()["dry_run"] is True
    assert (await runner.inspect("old-1")).status == "completed"


async def test_loopback_serving_answers_loopback_host_names_only(runner: Runner) -> None:
    """DNS rebinding: a page on evil.example resolving to 127.0.0.1 gets nothing."""
    app = blokrun_app(runner, allowed_hosts=["127.0.0.1", "localhost"])
    async with client(app) as http:
        evil = await http.get("/api/runs", headers={"Host": "evil.example:8765"})
        good = await http.get("/api/runs", headers={"Host": "127.0.0.1:8765"})
    assert evil.status_code == 400 and good.status_code == 200


async def test_statuses_are_read_per_run_shown(runner: Runner) -> None:
    await failed_run(runner)
    await runner.run(flow("other"), {"total": 0}, request_id="r-2")
    async with client(blokrun_app(runner)) as http:
        got = (await http.get("/api/statuses", params=[("id", "r-1"), ("id", "r-2"),
                                                         ("id", "nope")])).json()  # fmt: skip
        many = await http.get("/api/statuses", params=[("id", f"x{i}") for i in range(201)])
    assert got["r-1"]["status"] == "failed" and got["r-1"]["step"] == "ship"
    assert got["r-2"]["status"] == "completed" and "nope" not in got
    assert many.status_code == 400


async def test_a_failed_runs_traceback_is_stored_and_shown(runner: Runner) -> None:
    await failed_run(runner)
    head = await runner.head("r-1")
    assert head is not None and head.trace is not None
    assert "Traceback (most recent call last)" in head.trace
    assert "RuntimeError: ship failed on purpose" in head.trace
    assert "wfnodes.py" in head.trace  # the node's own frame
    async with client(blokrun_app(runner)) as http:
        html = (await http.get("/runs/r-1")).text
        detail = (await http.get("/api/runs/r-1")).json()
    assert "<details class=trace><summary>traceback</summary>" in html
    assert detail["trace"] == head.trace
    await runner.resume("r-1")
    done = await runner.head("r-1")
    assert done is not None and done.trace is None  # a completed run carries none


async def test_workers_on_redis_are_one_hash_read_not_a_keyspace_scan(
    server_pool: ServerPool,
) -> None:
    """On Redis the workers' records are fields of one hash: the dashboard reads them with
    one HGETALL whatever the store holds; a dead worker's field is dropped once expired."""
    from blokrun.workers.presence import WORKERS_HASH, forget, read_workers, tell

    settings = server_pool.get("redis").settings("default", prefix=f"wp-{uuid4().hex[:8]}/")
    async with Runner([settings]) as rt:
        ds = rt.datasources["default"]
        await tell(ds, "w-live", concurrency=2, running=["r1"], parked=[], ttl=30)
        await tell(ds, "w-dead", concurrency=2, running=[], parked=["r2"], ttl=0.05)
        assert not [k for k in await ds.keys() if "worker" in k]  # no key per worker
        await anyio.sleep(0.1)
        seen = await read_workers(ds)
        assert [w.name for w in seen] == ["w-live"] and seen[0].running == ["r1"]
        client = ds.store.client()  # type: ignore[attr-defined]
        assert await client.hkeys(settings.prefix + WORKERS_HASH) == [b"w-live"]  # dropped
        await forget(ds, "w-live")
        assert await read_workers(ds) == []
