"""Fan-out: a checkpoint goes to Redis, PostgreSQL and S3 at the same time.

On loopback the three servers answer in well under a millisecond except moto, so the sum
and the slowest target would be nearly equal and prove nothing. Each server is therefore put
behind a small TCP proxy on loopback that delays every client-to-server chunk by 30 ms (a
stand-in for network latency to a remote server); the servers themselves are the real ones.
One step's checkpoint then costs about the slowest target's time, not the sum.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest

from blokrun import Runner
from blokrun.config import DatasourceSettings
from tests.conftest import ServerPool

pytestmark = pytest.mark.server
DELAY = 0.03


class DelayProxy:
    """Forwards 127.0.0.1:<port> to an upstream, delaying each client->server chunk."""

    def __init__(self, upstream: tuple[str, int], delay: float) -> None:
        self.upstream = upstream
        self.delay = delay
        self.server: asyncio.Server | None = None
        self.tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float
    ) -> None:
        try:
            while data := await reader.read(65536):
                if delay:
                    await asyncio.sleep(delay)
                writer.write(data)
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        for task in (
            asyncio.create_task(self._pipe(reader, up_writer, self.delay)),
            asyncio.create_task(self._pipe(up_reader, writer, 0)),
        ):
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def close(self) -> None:
        assert self.server is not None
        self.server.close()
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.server.wait_closed()


def _swap_port(url: str, port: int) -> tuple[str, tuple[str, int]]:
    parts = urlsplit(url)
    assert parts.hostname and parts.port
    userinfo = parts.netloc.rpartition("@")[0]
    netloc = f"{userinfo + '@' if userinfo else ''}127.0.0.1:{port}"
    return urlunsplit(parts._replace(netloc=netloc)), (parts.hostname, parts.port)


async def proxied(settings: DatasourceSettings, proxies: list[DelayProxy]) -> DatasourceSettings:
    field = "endpoint_url" if settings.type == "s3" else "url"
    original = getattr(settings, field)
    _, upstream = _swap_port(original, 1)
    proxy = DelayProxy(upstream, DELAY)
    port = await proxy.start()
    proxies.append(proxy)
    new_url, _ = _swap_port(original, port)
    if field == "url":
        return dataclasses.replace(settings, url=new_url, timeout=30.0)
    return dataclasses.replace(settings, endpoint_url=new_url, timeout=30.0)


def workflow(targets: list[str], n: int) -> dict[str, Any]:
    return {
        "name": "fanout",
        "persistence": {"targets": targets},
        "steps": [
            {"name": f"s{i}", "node": "set", "inputs": {f"k{i}": "x" * 50}} for i in range(n)
        ],
    }


async def per_step(runner: Runner, targets: list[str], n: int = 6) -> float:
    wf = runner.load(workflow(targets, n))
    await runner.run(wf)  # warm-up: connections, definition written once
    samples = []
    for _ in range(3):
        t0 = time.perf_counter()
        await runner.run(wf)
        samples.append((time.perf_counter() - t0) / (n + 1))  # n checkpoints + the start record
    return sorted(samples)[1]


async def test_a_checkpoint_to_three_targets_costs_the_slowest_not_the_sum(
    server_pool: ServerPool,
) -> None:
    names = {"redis": "cache", "postgresql": "db", "s3": "storage"}
    proxies: list[DelayProxy] = []
    try:
        settings = [
            await proxied(server_pool.get(d).settings(n), proxies) for d, n in names.items()
        ]
        async with Runner(settings) as runner:
            alone = {name: await per_step(runner, [name]) for name in names.values()}
            together = await per_step(runner, list(names.values()))
    finally:
        for proxy in proxies:
            await proxy.close()
    slowest, total = max(alone.values()), sum(alone.values())
    detail = f"alone={ {k: round(v * 1000, 1) for k, v in alone.items()} } ms, together={together * 1000:.1f} ms"
    print(detail)
    assert min(alone.values()) >= DELAY, detail  # every target really pays the latency
    assert together < 0.7 * total, detail  # not the sum...
    assert together < 1.4 * slowest, detail  # ...about the slowest
