"""A job no worker can load ends (issue 13, class 10): its workflow names a module the
worker cannot import. It is handed back with a growing pause a bounded number of times, then
dead-lettered with its cause, which ``wait`` reports; nothing of the job is lost, so once the
cause is fixed ``resume ID --force`` runs it with its inputs. On the memory, Redis and
PostgreSQL queues."""

from __future__ import annotations

import logging
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import pytest

from blokrun import RunError, Runner
from blokrun.workers import serve
from blokrun.workers.worker import LOAD_ATTEMPTS

if TYPE_CHECKING:
    from tests.servers.base import ThrowawayServer

pytestmark = pytest.mark.parametrize("server", ["memory", "redis", "postgresql"], indirect=True)

MODULE = "blokrun_poison_nodes"


@pytest.fixture
def vanishing_module(tmp_path: Path) -> Iterator[Path]:
    """A node module importable while the job is submitted; the caller then removes it."""
    folder = tmp_path / "nodes"
    folder.mkdir()
    (folder / f"{MODULE}.py").write_text(
        "async def double(ctx, inputs):\n    return ctx.vars['n'] * 2\n"
    )
    sys.path.insert(0, str(folder))
    try:
        yield folder
    finally:
        if str(folder) in sys.path:
            sys.path.remove(str(folder))
        sys.modules.pop(MODULE, None)


def forget(folder: Path) -> None:
    """The worker runs where the module is not: its folder is gone from the path."""
    sys.path.remove(str(folder))
    sys.modules.pop(MODULE, None)


async def test_a_job_whose_module_cannot_be_imported_is_dead_lettered_with_its_cause(
    server: ThrowawayServer, vanishing_module: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rid = f"poison-{uuid.uuid4().hex[:8]}"
    doc = {"name": "poison", "steps": [{"name": "twice", "node": f"{MODULE}:double"}]}
    settings = server.settings("default", prefix=f"pj{uuid.uuid4().hex[:6]}.")
    caplog.set_level(logging.WARNING, logger="blokrun")
    async with Runner([settings], lease_ttl=1.5) as runner:
        await runner.submit(doc, {"n": 21}, request_id=rid)
        forget(vanishing_module)
        started = time.monotonic()
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: serve(runner, concurrency=2, grace=0.0))
            with anyio.fail_after(20), pytest.raises(RunError) as info:
                await runner.wait(rid)
            tg.cancel_scope.cancel()
        took = time.monotonic() - started
        message = str(info.value)
        assert "dead-lettered" in message and MODULE in message  # the cause, not a timeout
        assert f"after {LOAD_ATTEMPTS} deliveries" in message
        head = await runner.head(rid)
        assert head is not None and head.status == "dead"
        assert (await (await runner.queue()).stats()).waiting == 0  # acked, not looping
        lines = [r for r in caplog.records if rid in r.getMessage()]
        assert len(lines) <= LOAD_ATTEMPTS + 2, [r.getMessage() for r in lines]  # no storm
        assert took < 10, took
        # Fixed (the module is back): the command `wait` named runs it, with its inputs.
        sys.path.insert(0, str(vanishing_module))
        assert "resume" in message and "--force" in message
        result = await runner.resume(rid, force=True)
    assert result.status == "completed" and result.vars["twice"] == 42
