"""The dashboard as an ASGI app (Starlette): ``blokrun_app(runner)``.

Routes (relative to where it is mounted)::

    GET  /                      runs (filters: status, workflow, q, since; cursor paging)
    GET  /runs/{id}             a run: timeline, checkpoints, ?seq=N state, ?a=&b= diff
    GET  /gc                    what gc would delete (a dry run)
    POST /runs/{id}/resume      resume (from_step, set, dry_run) -- a form; redirects back
    POST /runs/{id}/input       answer an await-input step (in.<field> or input, token)
    GET  /api/runs, /api/runs/{id}, /api/runs/{id}/state?seq=, /api/runs/{id}/diff?a=&b=,
         /api/counts, /api/gc (a dry run), /api/queue
    POST /api/runs/{id}/resume, /api/runs/{id}/input   (JSON bodies)
    GET  /static/app.css, /static/app.js   (in the package: no CDN)

See :mod:`blokrun.web.security` for the token and CSRF rules and :mod:`blokrun.web.api`
for the error shapes.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import orjson
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from blokrun.errors import RunNotFound
from blokrun.web.api import actions, error_status, read
from blokrun.web.pages import esc, gc_page, layout, run_page, run_url, runs_page
from blokrun.web.security import CSRF_COOKIE, TOKEN_COOKIE, authorized, csrf_ok, new_csrf
from blokrun.web.views import counts, definition_steps, run_detail

if TYPE_CHECKING:
    from collections.abc import Sequence

    from starlette.requests import Request

    from blokrun.runner import Runner

__all__ = ["blokrun_app"]

log = logging.getLogger("blokrun.web")
STATIC = Path(__file__).resolve().parent / "static"


class _Json(JSONResponse):
    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, default=str)


def _problem(exc: BaseException) -> Response:
    status = error_status(exc)
    if status == 500:
        log.exception("dashboard: %s", exc)
    message = getattr(exc, "detail", None) or str(exc)
    return _Json({"error": message, "type": type(exc).__name__}, status_code=status)


class _Dashboard:
    """The handlers, holding the runner and the app's settings."""

    def __init__(self, runner: Runner, *, read_only: bool, token: str | None) -> None:
        self.runner = runner
        self.read_only = read_only
        self.token = token

    def guard(self, request: Request) -> Response | None:
        if not authorized(request, self.token):
            return _Json({"error": "a token is required", "type": "Unauthorized"}, 401)
        return None

    def finish(self, request: Request, response: Response) -> Response:
        """Keep the token (from ?token=) and a CSRF cookie on the browser."""
        if self.token is not None and request.query_params.get("token"):
            response.set_cookie(TOKEN_COOKIE, self.token, httponly=True, samesite="strict")
        if CSRF_COOKIE not in request.cookies:
            response.set_cookie(CSRF_COOKIE, request.state.csrf, httponly=True, samesite="strict")
        return response

    async def page(self, request: Request) -> Response:
        if (refused := self.guard(request)) is not None:
            return refused
        request.state.csrf = request.cookies.get(CSRF_COOKIE) or new_csrf()
        root = request.scope.get("root_path", "")
        params = dict(request.query_params)
        try:
            rid = request.path_params.get("rid")
            if request.url.path.endswith("/gc"):
                html = gc_page(await read(self.runner, "gc", None, params), root=root)
            else:
                html = await (self._run(request, rid, root) if rid else self._runs(params, root))
        except RunNotFound as exc:
            html = layout("not found", f"<p>{esc(exc)}</p>", root=root)
            return self.finish(request, HTMLResponse(html, status_code=404))
        except Exception as exc:  # a bad filter or checkpoint number: the message, 4xx
            status = error_status(exc)
            html = layout("error", f"<p class=error>{esc(exc)}</p>", root=root)
            return self.finish(request, HTMLResponse(html, status_code=status))
        return self.finish(request, HTMLResponse(html))

    async def _runs(self, params: dict[str, str], root: str) -> str:
        data = await read(self.runner, "runs", None, params)
        queue = await read(self.runner, "queue", None, params)
        return runs_page(data, await counts(self.runner), params, root=root, queue=queue)

    async def _run(self, request: Request, rid: str, root: str) -> str:
        params = request.query_params
        run = run_detail(await self.runner.inspect(rid))
        state = None
        if params.get("seq"):
            state = await read(self.runner, "state", rid, params)
        elif run["checkpoints"]:
            state = await read(self.runner, "state", rid, {"seq": run["checkpoints"][-1]["seq"]})
        diff = await read(self.runner, "diff", rid, params) if params.get("a") else None
        steps = {} if self.read_only else await definition_steps(self.runner, rid)
        return run_page(run, state, diff, csrf=request.state.csrf, steps=steps,
                              read_only=self.read_only, root=root,
                              notice=params.get("notice", ""))  # fmt: skip

    async def view(self, request: Request) -> Response:
        if (refused := self.guard(request)) is not None:
            return refused
        route = request.path_params.get("view") or (
            "run" if "rid" in request.path_params else "runs"
        )
        try:
            data = await read(self.runner, route, request.path_params.get("rid"),
                                  request.query_params)  # fmt: skip
        except Exception as exc:
            return _problem(exc)
        return _Json(data)

    async def act(self, request: Request) -> Response:
        if (refused := self.guard(request)) is not None:
            return refused
        is_form = "form" in request.headers.get("content-type", "")
        body: Any = await request.form() if is_form else await _json_body(request)
        if self.read_only:
            return _Json({"error": "the dashboard is read-only", "type": "Forbidden"}, 403)
        if not csrf_ok(request, body):
            return _Json({"error": "missing or wrong CSRF token", "type": "Forbidden"}, 403)
        rid, route = request.path_params["rid"], request.path_params["action"]
        values = _form_values(body) if is_form else body
        try:
            outcome = await actions(self.runner, route, rid, values)
        except Exception as exc:
            if not is_form:
                return _problem(exc)
            outcome = {"status": f"refused: {getattr(exc, 'detail', None) or exc}"}
        if not is_form:
            return _Json(outcome)
        back = run_url(request.scope.get("root_path", ""), rid)
        return RedirectResponse(f"{back}?notice={quote(_notice(route, outcome))}", 303)


async def _json_body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if not raw:
        return {}
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return {"$invalid": True}
    return body if isinstance(body, dict) else {"$invalid": True}


def _form_values(form: Any) -> dict[str, Any]:
    """A form's fields; ``in.<name>`` fields become the ``input`` object (values JSON when
    they parse -- ``3``, ``true`` -- else text)."""
    values: dict[str, Any] = {}
    answer: dict[str, Any] = {}
    for key, value in form.multi_items():
        if not isinstance(value, str):
            continue
        if key.startswith("in."):
            try:
                answer[key[3:]] = orjson.loads(value)
            except orjson.JSONDecodeError:
                answer[key[3:]] = value
        else:
            values[key] = value
    if answer:
        values["input"] = answer
    return values


def _notice(route: str, outcome: dict[str, Any]) -> str:
    if outcome.get("dry_run"):
        return (f"preview: after {outcome['after'] or 'the start'} it would skip "
                f"{', '.join(outcome['skip']) or 'nothing'} and run "
                f"{', '.join(outcome['run']) or 'nothing'}")  # fmt: skip
    return f"{route}: {outcome['status']}"


def blokrun_app(
    runner: Runner,
    *,
    read_only: bool = False,
    token: str | None = None,
    allowed_hosts: Sequence[str] | None = None,
) -> Starlette:
    """The dashboard over ``runner``'s datasources, as an ASGI app to serve (``blokrun ui``)
    or mount beside a service's own routes: ``app.mount("/runs", blokrun_app(runner))``.
    ``read_only`` hides and refuses every action; ``token`` is required on every request
    when given (see :mod:`blokrun.web.security`); ``allowed_hosts``: the ``Host`` headers
    it answers (``blokrun ui`` on loopback: loopback names only, so a web page cannot reach
    it through DNS rebinding). The runner must be started."""
    d = _Dashboard(runner, read_only=read_only, token=token)
    routes = [
        Route("/", d.page),
        Route("/runs/{rid}", d.page),
        Route("/gc", d.page),
        Route("/runs/{rid}/{action}", d.act, methods=["POST"]),
        Route("/api/runs", d.view),
        Route("/api/runs/{rid}", d.view),
        Route("/api/runs/{rid}/{view}", d.view),
        Route("/api/runs/{rid}/{action}", d.act, methods=["POST"]),
        Route("/api/{view}", d.view),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    middleware = []
    if allowed_hosts is not None:
        middleware.append(Middleware(TrustedHostMiddleware, allowed_hosts=list(allowed_hosts)))
    return Starlette(routes=routes, middleware=middleware)
