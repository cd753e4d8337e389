"""The dashboard in a real headless Chromium: the runs list and its filter, a failed run's
timeline and state, resuming it from the page until it completes, answering an await-input
step with its form -- and an XSS probe in a run's vars that stays inert."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from blokrun import Runner, StepFailed
from blokrun.config import DatasourceSettings
from blokrun.web import blokrun_app
from tests.browser.conftest import browser_page, screenshot, served
from tests.integration import wfnodes

NODE = "tests.integration.wfnodes"
EVIL = '<script>alert("xss")</script>"><img src=x onerror=alert("img")>'


def order(name: str = "order") -> dict[str, Any]:
    return {
        "name": name,
        "steps": [
            {"name": "load", "node": "set", "inputs": {"note": EVIL, "items": [1, 2, 3]}},
            {"name": "charge", "node": f"{NODE}:add", "inputs": {"n": 5}},
            {"name": "ship", "node": f"{NODE}:add", "inputs": {"n": 7}},
        ],
    }


def approval() -> dict[str, Any]:
    return {
        "name": "approval",
        "steps": [
            {"name": "ask", "node": "await-input", "inputs": {"prompt": "ok?", "schema": {
                "type": "object", "required": ["amount"],
                "properties": {"amount": {"type": "number"}}}}},
            {"name": "after", "node": "echo", "inputs": {"got": "${ctx.vars.ask.amount}"}},
        ],
    }  # fmt: skip


async def test_a_user_finds_a_failed_run_resumes_it_and_answers_an_input(tmp_path: Path) -> None:
    settings = DatasourceSettings(name="default", type="filesystem", path=str(tmp_path / "ck"))
    async with Runner([settings]) as runner:
        wfnodes.FAIL_AT.add("ship")
        with pytest.raises(StepFailed):
            await runner.run(order(), {"total": 0}, request_id="order-7")
        wfnodes.FAIL_AT.clear()
        await runner.run(order("other"), {"total": 0}, request_id="other-1")
        asked = await runner.run(approval(), request_id="ask-1")
        assert asked.token is not None

        async with served(blokrun_app(runner)) as base, browser_page() as (page, dialogs):
            await page.goto(base + "/")
            rows = page.locator("#runs tbody tr")
            assert await rows.count() == 3
            await screenshot(page, "runs")
            await page.select_option("select[name=status]", "failed")
            await page.click("form.filters button")
            assert await rows.count() == 1
            await page.click("text=order-7")
            assert "order-7" in await page.title()
            assert await page.locator("#status").inner_text() == "failed"
            bars = page.locator(".timeline .bar")
            assert await bars.count() == 3  # load, charge, and the failed ship
            assert "ship failed on purpose" in await page.locator("pre.error").inner_text()
            state = await page.locator(".state").inner_text()
            assert '<script>alert(\\"xss\\")</script>' in state  # shown as text
            assert "<img src=x onerror=alert(" in state
            await screenshot(page, "run-failed")
            await page.click("button[value=resume]")
            await page.wait_for_selector("p.notice")
            assert "resume: completed" in await page.locator("p.notice").inner_text()
            assert await page.locator("#status").inner_text() == "completed"
            await screenshot(page, "run")
            await page.goto(base + "/runs/ask-1")
            await page.fill("input[name='in.amount']", "42")
            await page.fill("input[name=token]", asked.token)
            await page.click("form.answer button")
            await page.wait_for_selector("p.notice")
            assert await page.locator("#status").inner_text() == "completed"
            assert dialogs == []  # the XSS probe never ran
        final = await runner.inspect("order-7")
    assert final.status == "completed"
    assert [s for r, s in wfnodes.CALLS if r == "order-7"] == ["charge", "ship", "ship"]


async def test_the_runs_table_follows_a_run_live(tmp_path: Path) -> None:
    """The open runs list shows a run's new status within a refresh (2 s), no reload."""
    settings = DatasourceSettings(name="default", type="filesystem", path=str(tmp_path / "ck"))
    async with Runner([settings]) as runner:
        wfnodes.FAIL_AT.add("ship")
        with pytest.raises(StepFailed):
            await runner.run(order(), {"total": 0}, request_id="live-1")
        wfnodes.FAIL_AT.clear()
        async with served(blokrun_app(runner)) as base, browser_page() as (page, dialogs):
            await page.goto(base + "/")
            cell = page.locator("#runs tbody tr td.status")
            assert await cell.inner_text() == "failed"
            await runner.resume("live-1")
            await page.wait_for_function(
                "document.querySelector('#runs tbody tr td.status').textContent === 'completed'",
                timeout=5000,
            )
            assert dialogs == []
