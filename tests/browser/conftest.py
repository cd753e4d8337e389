"""Real-browser tests: Debian's headless Chromium driven by Playwright through its executable
path (no browser download; ``.ci/setup/chromium.sh`` installs both, ``make test`` runs it).

Two ways to write one, both ending in ``screenshot(page, name)``, which writes
``tests/browser/screenshots/<name>.png`` (look at it):

* Plain ``def`` tests, Playwright's sync API: the fixtures ``page`` (a fresh page in a fresh
  browser context, 1200x800; an uncaught JavaScript error on it fails the test), ``browser``
  (one headless Chromium for the session), ``playwright`` (the session's Playwright) and
  ``asgi_server`` (a factory: ``asgi_server(app)`` serves an ASGI app with uvicorn on a free
  loopback port in a background thread, its lifespan on, until the test ends, and returns
  its base URL). For an app that owns its state, e.g. one that opens its Runner in its
  lifespan::

      def test_the_runs_page(page: Page, asgi_server: ServeAsgi) -> None:
          page.goto(asgi_server(make_app()) + "/")
          page.click("text=order-7")
          expect(page.locator("#status")).to_have_text("failed")
          screenshot(page, "run-failed")

* ``async def`` tests, Playwright's async API: ``served(app)`` serves the app *in the test's
  own event loop* (so it can share a Runner the test opened) and ``browser_page()`` opens a
  page of a fresh Chromium, with the dialogs it opened; ``await screenshot(page, name)``.

Without /usr/bin/chromium or playwright the tests skip, saying how to install them; under
``BLOKRUN_TEST_SERVERS=required`` (``make test``) or ``CI=true`` they fail instead.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import re
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from contextlib import ExitStack, asynccontextmanager, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, overload

import anyio
import pytest

from tests.conftest import servers_required

if TYPE_CHECKING:
    from playwright.async_api import Page as AsyncPage
    from playwright.sync_api import Browser, Page, Playwright, ViewportSize

CHROMIUM = "/usr/bin/chromium"
#: As root in a container: no setuid sandbox to drop into, a /dev/shm that may be tiny, no GPU.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"]
VIEWPORT: ViewportSize = {"width": 1200, "height": 800}
SHOTS = Path(__file__).resolve().parent / "screenshots"
INSTALL = "install them with `bash .ci/setup/chromium.sh` (or `make servers`)"

#: ``asgi_server``'s type, for a test's signature: app in, base URL out.
ServeAsgi = Callable[[Any], str]


def missing_browser() -> str | None:
    """Why the browser tests cannot run here, or None when they can."""
    if not os.access(CHROMIUM, os.X_OK):
        return f"no headless Chromium at {CHROMIUM} (Debian's chromium package): {INSTALL}"
    if importlib.util.find_spec("playwright") is None:
        return f"the Python package playwright is not in this environment: {INSTALL}"
    return None


def require_browser() -> None:
    """Skip the test when there is no browser -- or fail it where servers are required."""
    why = missing_browser()
    if why is None:
        return
    if servers_required():
        pytest.fail(f"the browser tests cannot run: {why}", pytrace=False)
    pytest.skip(why)


# --- the sync API: fixtures -------------------------------------------------------------------


class _SyncDriver:
    """The session's Playwright (sync API) and the event loop it runs in a greenlet.

    Between two calls, the sync API leaves its loop marked as the thread's *running* loop.
    Left that way, every asyncio test after the first browser test would fail ("cannot be
    called from a running event loop"): the mark is set only while a browser test or a
    browser fixture runs (:meth:`active`), and cleared otherwise.
    """

    def __init__(self) -> None:
        from playwright.sync_api import sync_playwright

        self.playwright = sync_playwright().start()
        self._loop = asyncio.get_running_loop()  # the mark the sync API just left
        asyncio.events._set_running_loop(None)

    @contextmanager
    def active(self) -> Iterator[None]:
        previous = asyncio.events._get_running_loop()
        asyncio.events._set_running_loop(self._loop)
        try:
            yield
        finally:
            asyncio.events._set_running_loop(previous)

    def stop(self) -> None:
        with self.active():
            self.playwright.stop()


@pytest.fixture(scope="session")
def _sync_driver() -> Iterator[_SyncDriver]:
    require_browser()
    driver = _SyncDriver()
    yield driver
    driver.stop()


@pytest.fixture(autouse=True)
def _sync_api_active(request: pytest.FixtureRequest) -> Iterator[None]:
    """Around a test that uses the sync fixtures: the Playwright loop's mark (see _SyncDriver)."""
    if not {"playwright", "browser", "page"} & set(request.fixturenames):
        yield
        return
    driver: _SyncDriver = request.getfixturevalue("_sync_driver")
    with driver.active():
        yield


@pytest.fixture(scope="session")
def playwright(_sync_driver: _SyncDriver) -> Playwright:
    """The session's Playwright, sync API (``playwright.chromium``, ``playwright.devices``...)."""
    return _sync_driver.playwright


@pytest.fixture(scope="session")
def browser(_sync_driver: _SyncDriver) -> Iterator[Browser]:
    """One headless Chromium for the session: Debian's, through its executable path."""
    with _sync_driver.active():
        chromium = _sync_driver.playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
    yield chromium
    with _sync_driver.active():
        chromium.close()


@pytest.fixture
def page(browser: Browser, asgi_server: ServeAsgi) -> Iterator[Page]:
    """A page in a fresh browser context (no cookies or storage shared with other tests).

    An uncaught JavaScript error on it fails the test. It closes before any server that
    ``asgi_server`` started for the test stops (hence the dependency)."""
    context = browser.new_context(viewport=VIEWPORT)
    fresh = context.new_page()
    errors: list[str] = []
    fresh.on("pageerror", lambda exc: errors.append(f"{exc.name}: {exc.message}"))
    yield fresh
    context.close()
    if errors:
        pytest.fail("uncaught JavaScript errors on the page:\n" + "\n".join(errors), pytrace=False)


# --- serving an ASGI app ----------------------------------------------------------------------


def _wait_until_serving(server: Any, thread: threading.Thread, port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError(
                "the ASGI app did not start (did its lifespan startup fail? the log says)"
            )
        if time.monotonic() > deadline:
            raise RuntimeError(f"the ASGI app did not start within {timeout}s")
        time.sleep(0.01)
    with socket.create_connection(("127.0.0.1", port), timeout=timeout):
        pass


@contextmanager
def serve_in_thread(app: Any, *, timeout: float = 10.0) -> Iterator[str]:
    """Serve ``app`` with uvicorn (lifespan on) on a free loopback port in a background thread,
    with its own event loop, until the block ends; yields the base URL, once it accepts
    connections. For a module- or session-scoped server of your own; tests use the
    ``asgi_server`` fixture."""
    import uvicorn

    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))  # handed to uvicorn: no window for another to take the port
    port: int = listener.getsockname()[1]
    config = uvicorn.Config(
        app, lifespan="on", ws="none", log_config=None, access_log=False, log_level="warning"
    )
    server = uvicorn.Server(config)

    def run() -> None:
        try:
            server.run(sockets=[listener])
        except SystemExit:  # uvicorn's way out when the lifespan startup fails
            pass

    thread = threading.Thread(target=run, name=f"asgi-{port}", daemon=True)
    thread.start()
    try:
        _wait_until_serving(server, thread, port, timeout)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout)
        listener.close()
        if thread.is_alive():
            raise RuntimeError(f"the ASGI server on port {port} did not stop within {timeout}s")


@pytest.fixture
def asgi_server() -> Iterator[ServeAsgi]:
    """``asgi_server(app)``: serve an ASGI app for this test (see :func:`serve_in_thread`);
    its base URL, e.g. ``http://127.0.0.1:43121``. Every server started stops at teardown."""
    with ExitStack() as stack:
        yield lambda app: stack.enter_context(serve_in_thread(app))


# --- the async API: context managers ----------------------------------------------------------


@asynccontextmanager
async def browser_page() -> AsyncIterator[tuple[Any, list[str]]]:
    """A page of a fresh headless Chromium, and the list of every JavaScript dialog it
    opens (each dismissed): a test can show none did."""
    require_browser()
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=CHROMIUM_ARGS,
        )
        try:
            page = await browser.new_page(viewport=VIEWPORT)
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


# --- screenshots ------------------------------------------------------------------------------


@overload
def screenshot(page: Page, name: str) -> Path: ...
@overload
def screenshot(page: AsyncPage, name: str) -> Coroutine[Any, Any, Path]: ...
def screenshot(page: Page | AsyncPage, name: str) -> Path | Coroutine[Any, Any, Path]:
    """Write the whole page to ``tests/browser/screenshots/<name>.png``; the file's path.
    A sync page is shot at once; an async one when the result is awaited."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
        raise ValueError(f"a screenshot name is a plain file name without .png: {name!r}")
    SHOTS.mkdir(exist_ok=True)
    path = SHOTS / f"{name}.png"
    taken = page.screenshot(path=str(path), full_page=True)
    if isinstance(taken, bytes):
        return path

    async def written() -> Path:
        await taken
        return path

    return written()
