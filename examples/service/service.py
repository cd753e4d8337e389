"""An async service that embeds the blokrun Runner.

A tiny JSON-over-HTTP server (standard library only, to keep the example dependency-free;
use your framework of choice the same way):

    POST /runs                 {"workflow": "...", "inputs": {...}}: start a run in the
                               background -> 202 {"request_id": ...}
    GET  /runs/<id>            the run's stored status (head record)
    POST /runs/<id>/resume     resume a failed run in the background -> 202

The Runner is created once, entered with ``async with`` for the service's lifetime, and
runs execute in the service's own task group -- no thread, no global.

    python examples/service/service.py --port 8080
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

import anyio
import orjson
from anyio.abc import SocketStream, TaskGroup

from blokrun import BlokrunError, RunError, Runner, RunNotFound, new_request_id

HERE = Path(__file__).resolve().parent
log = logging.getLogger("service")


class Service:
    def __init__(self, runner: Runner, tg: TaskGroup, workflows_dir: Path = HERE) -> None:
        self.runner = runner
        self.tg = tg
        self.workflows_dir = workflows_dir
        self.outcomes: dict[str, str] = {}  # request id -> "running" | "completed" | error text

    async def _background(self, request_id: str, coro: Any) -> None:
        self.outcomes[request_id] = "running"
        try:
            await coro
            self.outcomes[request_id] = "completed"
        except RunError as exc:
            self.outcomes[request_id] = f"failed: {exc}"
            log.warning("run %s failed: %s", request_id, exc)

    async def handle(self, method: str, path: str, body: bytes) -> tuple[int, Any]:
        parts = [p for p in path.split("/") if p]
        if method == "POST" and parts == ["runs"]:
            return await self._start(body)
        if method == "GET" and len(parts) == 2 and parts[0] == "runs":
            return await self._status(parts[1])
        if method == "POST" and len(parts) == 3 and parts[0] == "runs" and parts[2] == "resume":
            return await self._resume(parts[1])
        return 404, {"error": f"no route for {method} {path}"}

    async def _start(self, body: bytes) -> tuple[int, Any]:
        try:
            doc = orjson.loads(body or b"{}")
        except orjson.JSONDecodeError as exc:
            return 400, {"error": f"invalid JSON body: {exc}"}
        name = str(doc.get("workflow", "workflow.json"))
        if "/" in name or name.startswith("."):
            return 400, {"error": "workflow must be a file name in the service's folder"}
        try:
            wf = self.runner.load(self.workflows_dir / name)
        except BlokrunError as exc:
            return 400, {"error": str(exc)}
        rid = doc.get("request_id") or new_request_id()
        self.tg.start_soon(
            self._background, rid, self.runner.run(wf, doc.get("inputs") or {}, request_id=rid)
        )
        return 202, {"request_id": rid}

    async def _status(self, rid: str) -> tuple[int, Any]:
        try:
            head = await self.runner.head(rid)
        except RunNotFound as exc:
            return 404, {"error": str(exc)}
        return 200, {
            "request_id": rid,
            "status": head.status if head else "unknown",
            "last_done": head.last_done if head else None,
            "failed_step": head.failed_step if head else None,
            "error": head.error if head else None,
            "in_this_process": self.outcomes.get(rid),
        }

    async def _resume(self, rid: str) -> tuple[int, Any]:
        try:
            head = await self.runner.head(rid)
        except RunNotFound as exc:
            return 404, {"error": str(exc)}
        if head is not None and head.status == "completed":
            return 409, {"error": f"run {rid} already completed"}
        if self.outcomes.get(rid) == "running":
            return 409, {"error": f"run {rid} is running in this process"}
        self.tg.start_soon(self._background, rid, self.runner.resume(rid))
        return 202, {"request_id": rid, "resuming": True}

    async def serve_client(self, stream: SocketStream) -> None:
        async with stream:
            try:
                with anyio.fail_after(30):
                    data = b""
                    while b"\r\n\r\n" not in data:
                        chunk = await stream.receive(65536)
                        data += chunk
                    head, _, body = data.partition(b"\r\n\r\n")
                    lines = head.decode("latin-1").split("\r\n")
                    method, path, _ = lines[0].split(" ", 2)
                    length = 0
                    for line in lines[1:]:
                        k, _, v = line.partition(":")
                        if k.strip().lower() == "content-length":
                            length = int(v.strip())
                    while len(body) < length:
                        body += await stream.receive(65536)
                    status, payload = await self.handle(method, path, body[:length])
            except (anyio.EndOfStream, ValueError, TimeoutError):
                status, payload = 400, {"error": "bad request"}
            out = orjson.dumps(payload)
            reason = {
                200: "OK",
                202: "Accepted",
                400: "Bad Request",
                404: "Not Found",
                409: "Conflict",
            }[status]
            await stream.send(
                f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(out)}\r\nConnection: close\r\n\r\n".encode()
                + out
            )


async def serve(
    port: int, *, task_status: Any = anyio.TASK_STATUS_IGNORED, runner: Runner | None = None
) -> None:
    """Serve until cancelled. ``task_status.started`` gets the bound port."""
    async with (
        runner or Runner.from_env(search_paths=[str(HERE)]) as rt,
        anyio.create_task_group() as tg,
    ):
        service = Service(rt, tg)
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=port)
        bound = listener.extra(anyio.abc.SocketAttribute.local_port)
        log.info("listening on 127.0.0.1:%d", bound)
        task_status.started(bound)
        async with listener:
            await listener.serve(service.serve_client, task_group=tg)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=8080)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    anyio.run(serve, args.port)


if __name__ == "__main__":
    main()
