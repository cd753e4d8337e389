"""Real-browser tests: Debian's headless Chromium driven by Playwright (no browser download).

``browser_page()`` opens a page in a fresh headless Chromium; ``served(app)`` serves an ASGI
app with uvicorn on a free loopback port *in the test's own event loop* (so the app shares
the test's Runner) and yields its base URL; ``screenshot(page, name)`` writes
``tests/browser/screenshots/<name>.png``. Without /usr/bin/chromium (``.ci/setup/chromium.sh``
installs it) the tests skip -- or fail under ``BLOKRUN_TEST_SERVERS=required`` (make test).
"""

from __future__ import annotations

import os
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest

CHROMIUM = "/usr/bin/chromium"
SHOTS = Path(__file__).resolve().parent / "screenshots"


def _require_chromium() -> None:
    if Path(CHROMIUM).exists():
        return
    why = (
        f"no headless Chromium at {CHROMIUM}: run .ci/setup/chromium.sh (apt-get install chromium)"
    )
    if os.environ.get("BLOKRUN_TEST_SERVERS") == "required":
        pytest.fail(why)
    pytest.skip(why)


@asynccontextmanager
async def browser_page() -> AsyncIterator[tuple[Any, list[str]]]:
    """A page of a fresh headless Chromium, and the list of every JavaScript dialog it
    opens (each dismissed): a test can show none did."""
    _require_chromium()
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"],
        )
        try:
            page = await browser.new_page(viewport={"width": 1200, "height": 800})
            dialogs: list[str] = []

            async def dismiss(dialog: Any) -> None:
                dialogs.append(dialog.message)
                await dialog.dismiss()

            page.on("dialog", dismiss)
            yield page, dialogs
        finally:
            await browser.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@asynccontextmanager
async def served(app: Any) -> AsyncIterator[str]:
    """Serve ``app`` on loopback in this event loop until the block ends; its base URL."""
    import uvicorn

    port = _free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    )
    async with anyio.create_task_group() as tg:
        tg.start_soon(server.serve)
        with anyio.fail_after(10):
            while not server.started:  # noqa: ASYNC110 (uvicorn offers no event)
                await anyio.sleep(0.01)
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            server.should_exit = True


async def screenshot(page: Any, name: str) -> Path:
    SHOTS.mkdir(exist_ok=True)
    path = SHOTS / f"{name}.png"
    await page.screenshot(path=str(path), full_page=True)
    return path
