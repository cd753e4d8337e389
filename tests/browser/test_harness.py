"""The browser harness itself (tests/browser/conftest.py), on a tiny Starlette app: a page
served by uvicorn in a thread after its lifespan startup, a form whose script changes the
page, a hostile ``<script>`` shown escaped that never runs -- and the skip-or-fail rule when
Chromium is missing."""

from __future__ import annotations

import html
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from string import Template
from typing import TYPE_CHECKING

import pytest
from playwright.sync_api import Dialog, expect
from starlette.applications import Starlette
from starlette.responses import HTMLResponse
from starlette.routing import Route

from tests.browser import conftest as harness
from tests.browser.conftest import ServeAsgi, screenshot

if TYPE_CHECKING:
    from playwright.sync_api import Page
    from starlette.requests import Request

HOSTILE = "<script>alert(1)</script>"

PAGE = Template("""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>blokrun browser harness</title></head>
<body style="font-family: sans-serif; margin: 2rem; max-width: 40rem">
<h1>Browser harness</h1>
<p id="greeting">$greeting</p>
<form id="hello">
  <label>Name <input name="who" autocomplete="off"></label>
  <button type="submit">Say hello</button>
</form>
<p id="out" style="font-size: 1.4rem; color: #0a5">nothing yet</p>
<p>A hostile value, escaped: <code id="hostile" style="background: #fee">$hostile</code></p>
<script>
  document.getElementById("hello").addEventListener("submit", function (event) {
    event.preventDefault();
    var who = new FormData(event.target).get("who");
    document.getElementById("out").textContent = "hello, " + who + "!";
  });
</script>
</body></html>
""")


def harness_app() -> Starlette:
    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        app.state.greeting = "served by uvicorn, after the app's lifespan startup"
        yield

    async def home(request: Request) -> HTMLResponse:
        greeting = html.escape(request.app.state.greeting)
        return HTMLResponse(PAGE.substitute(greeting=greeting, hostile=html.escape(HOSTILE)))

    return Starlette(routes=[Route("/", home)], lifespan=lifespan)


def test_a_page_runs_its_own_script_and_never_the_escaped_one(
    page: Page, asgi_server: ServeAsgi
) -> None:
    dialogs: list[str] = []

    def record(dialog: Dialog) -> None:
        dialogs.append(dialog.message)
        dialog.dismiss()

    page.on("dialog", record)
    page.goto(asgi_server(harness_app()) + "/")
    expect(page.locator("#greeting")).to_have_text(
        "served by uvicorn, after the app's lifespan startup"
    )
    expect(page.locator("#hostile")).to_have_text(HOSTILE)  # shown as text...
    assert page.locator("script").count() == 1  # ...not parsed into an element

    page.fill("input[name=who]", "Ada")
    page.click("button[type=submit]")
    expect(page.locator("#out")).to_have_text("hello, Ada!")
    shot = screenshot(page, "harness")
    assert shot.read_bytes().startswith(b"\x89PNG")
    assert dialogs == []

    page.evaluate("alert('probe')")  # the listener does see a dialog when one opens
    assert dialogs == ["probe"]


def test_an_app_whose_startup_fails_is_reported_not_waited_for(asgi_server: ServeAsgi) -> None:
    def open_datasource() -> None:
        raise RuntimeError("no datasource")

    @asynccontextmanager
    async def broken(app: Starlette) -> AsyncIterator[None]:
        open_datasource()
        yield

    with pytest.raises(RuntimeError, match="did not start"):
        asgi_server(Starlette(lifespan=broken))


def test_without_chromium_a_browser_test_skips_or_fails_as_servers_do(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(harness, "CHROMIUM", "/nonexistent/chromium")
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.delenv("BLOKRUN_TEST_SERVERS", raising=False)
    with pytest.raises(pytest.skip.Exception, match=r"chromium\.sh"):
        harness.require_browser()
    monkeypatch.setenv("BLOKRUN_TEST_SERVERS", "required")
    with pytest.raises(pytest.fail.Exception, match="cannot run"):
        harness.require_browser()
