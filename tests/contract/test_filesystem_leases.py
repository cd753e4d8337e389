"""Filesystem leases across real OS processes (``flock`` on one machine, local disk).

The contract suite (``test_leases.py``) races stores inside one process; these tests race
separate interpreters on one folder, and check that a fenced write in flight (holding the
shared lock) and a takeover (needing the exclusive lock) never interleave.
"""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import anyio

from blokrun.datasources.filesystem import FilesystemStore, encode_name

ROOT = Path(__file__).resolve().parents[2]
LEASE = "_blokrun.lease.run-1"

RACER = """
import json, sys
import anyio
from blokrun.datasources.filesystem import FilesystemStore

async def main() -> None:
    store = FilesystemStore(sys.argv[1])
    await store.connect()
    print("ready", flush=True)
    sys.stdin.readline()
    out = []
    for i in range(int(sys.argv[3])):
        state = await store.acquire_lease(f"_blokrun.lease.run-{i}", sys.argv[2], 30)
        out.append([state.owner, state.token])
    print(json.dumps(out), flush=True)

anyio.run(main)
"""

#: Holds the shared lock mid-write: after the first entry it says "mid" and waits for a line.
FENCED_WRITER = """
import sys
import anyio
from blokrun.datasources.filesystem import FilesystemStore

class Paused(FilesystemStore):
    __slots__ = ()

    def _write_one(self, key, data, ttl):
        super()._write_one(key, data, ttl)
        if key == "a":
            print("mid", flush=True)
            sys.stdin.readline()

async def main() -> None:
    store = Paused(sys.argv[1])
    await store.connect()
    lease, token = sys.argv[2], int(sys.argv[3])
    ok = await store.save_batch_fenced([("a", b"child", None), ("b", b"child", None)], lease, token)
    print(ok, flush=True)
    sys.stdin.readline()
    ok = await store.save_batch_fenced([("a", b"late", None)], lease, token)
    print(ok, flush=True)

anyio.run(main)
"""


def _spawn(script: str, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-c", script, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env=env,
    )


def _reap(proc: subprocess.Popen[str]) -> int:
    """Wait for (or kill) a child and close its pipes."""
    try:
        rc = proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        rc = proc.wait()
    for pipe in (proc.stdin, proc.stdout):
        if pipe is not None:
            pipe.close()
    return rc


def _line(proc: subprocess.Popen[str]) -> str:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line, f"child exited early (rc={proc.wait()})"
    return line.strip()


def _send(proc: subprocess.Popen[str], text: str = "go") -> None:
    assert proc.stdin is not None
    proc.stdin.write(text + "\n")
    proc.stdin.flush()


def test_eight_processes_racing_for_a_lease_yield_one_winner(tmp_path: Path) -> None:
    n, rounds = 8, 20
    procs = [_spawn(RACER, str(tmp_path), f"p{i}", str(rounds)) for i in range(n)]
    try:
        for proc in procs:
            assert _line(proc) == "ready"
        for proc in procs:  # as close to "at once" as pipes allow
            _send(proc)
        results = [json.loads(_line(proc)) for proc in procs]
    finally:
        for proc in procs:
            _reap(proc)
    for r in range(rounds):
        states = {f"p{i}": tuple(results[i][r]) for i in range(n)}
        winners = [owner for owner, (holder, _) in states.items() if holder == owner]
        assert len(winners) == 1, (r, states)
        token = states[winners[0]][1]
        assert set(states.values()) == {(winners[0], token)}, (r, states)


async def test_a_takeover_waits_for_a_fenced_write_in_flight(tmp_path: Path) -> None:
    store = FilesystemStore(tmp_path, timeout=5)
    await store.connect()
    try:
        old = await store.acquire_lease(LEASE, "child", 0.2)
        proc = _spawn(FENCED_WRITER, str(tmp_path), LEASE, str(old.token))
        try:
            assert await anyio.to_thread.run_sync(_line, proc) == "mid"  # shared lock held
            await anyio.sleep(max(0.0, old.expires_at - time.time()) + 0.05)  # lease expired
            done: list[float] = []
            result = {}

            async def take_over() -> None:
                result["state"] = await store.acquire_lease(LEASE, "parent", 30)
                done.append(time.monotonic())

            async with anyio.create_task_group() as tg:
                tg.start_soon(take_over)
                await anyio.sleep(0.3)
                assert not done, "the takeover did not wait for the fenced write in flight"
                still = await store.read_lease(LEASE)
                assert still is not None and still.token == old.token
                released = time.monotonic()
                _send(proc)  # let the child finish its batch
                assert await anyio.to_thread.run_sync(_line, proc) == "True"
            new = result["state"]
            assert new.owner == "parent" and new.token > old.token
            assert done[0] >= released
            # The whole batch landed before the takeover; after it, the stale write is refused.
            assert await store.load_batch(["a", "b"]) == {"a": b"child", "b": b"child"}
            _send(proc)
            assert await anyio.to_thread.run_sync(_line, proc) == "False"
            assert await store.load("a") == b"child"
        finally:
            rc = _reap(proc)
        assert rc == 0
    finally:
        await store.close()


async def test_a_waiter_on_a_deleted_lock_file_starts_over(tmp_path: Path) -> None:
    """delete_lease unlinks the lock file while holding it. A waiter that then gets the
    old inode must start over on the path: if it acted on the old inode it would run at
    the same time as whoever holds the new lock file (two "exclusive" holders)."""
    store = FilesystemStore(tmp_path, timeout=5)
    await store.connect()
    lock_path = tmp_path / (".lock-" + encode_name(LEASE))
    fds: list[int] = []
    try:
        first = await store.acquire_lease(LEASE, "x", 30)
        await store.release_lease(LEASE, "x", first.token)
        old = os.open(lock_path, os.O_RDWR)  # play a delete_lease caught half-way
        fds.append(old)
        fcntl.flock(old, fcntl.LOCK_EX)
        done: list[float] = []
        result = {}

        async def waiter() -> None:
            result["a"] = await store.acquire_lease(LEASE, "A", 30)
            done.append(time.monotonic())

        async with anyio.create_task_group() as tg:
            tg.start_soon(waiter)
            await anyio.sleep(0.1)  # A now waits on the old inode
            os.unlink(tmp_path / (".lease-" + encode_name(LEASE)))
            os.unlink(lock_path)
            new = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)  # a newcomer, B, holds
            fds.append(new)  # the fresh lock file (it read "no lease", not yet written)
            fcntl.flock(new, fcntl.LOCK_EX)
            os.close(fds.pop(0))  # the delete finishes: A gets the old, unlinked inode
            await anyio.sleep(0.3)
            assert not done, "A acted on an unlinked lock file while B held the live one"
            os.close(fds.pop())
        assert result["a"].owner == "A"  # A took the lease on the live lock file
        await store.save("k", b"v")  # lease files are never listed as keys
        assert await store.size() == 1
        assert [k async for k in store.keys("")] == ["k"]
        assert await store.delete_lease(LEASE) is True
        assert os.listdir(tmp_path) == ["k"]  # both lease files gone
        assert await store.delete_lease(LEASE) is False
    finally:
        for fd in fds:
            os.close(fd)
        await store.close()
