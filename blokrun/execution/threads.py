"""Plain ``def`` nodes run on daemon threads, so a node that overruns never holds the process.

anyio's worker threads are not daemons: a node abandoned at its timeout (or on cancellation)
keeps the interpreter from exiting until it returns -- ``time.sleep(10)`` behind a 0.5 s
timeout kept ``blokrun run`` alive for 10 s, and a node that hangs forever kept it forever.
Here the same call runs on a daemon thread: on timeout or cancellation the step stops waiting
(the thread cannot be interrupted: it runs on, and its result is thrown away), and the process
exits without waiting for it.

Threads are reused: an idle thread waits up to ``IDLE`` seconds for the next call, so a run of
many short sync steps does not start a thread per step. The pool belongs to the event loop
(an anyio ``RunVar``), like anyio's own; at most ``limit`` calls run at once (anyio's default
thread limiter, shared with ``anyio.to_thread``).
"""

from __future__ import annotations

import contextvars
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import anyio
import anyio.from_thread
import anyio.lowlevel
import anyio.to_thread

__all__ = ["IDLE", "run_in_daemon_thread"]

T = TypeVar("T")

#: Seconds an idle thread waits for more work before it ends.
IDLE = 10.0

#: (the call, then what tells the waiting task it is done)
_Work = tuple[Callable[[], None], Callable[[], None]]


class _Pool:
    """Daemon threads that take work from one queue; a new one starts when none is idle."""

    __slots__ = ("_idle", "_lock", "_work")

    def __init__(self) -> None:
        self._work: queue.SimpleQueue[_Work] = queue.SimpleQueue()
        self._idle = 0
        self._lock = threading.Lock()

    def submit(self, work: _Work) -> None:
        with self._lock:  # the put too: a thread giving up must see it (see _serve)
            start = not self._idle
            if not start:
                self._idle -= 1
            self._work.put(work)
        if start:
            threading.Thread(target=self._serve, name="blokrun node", daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                work = self._work.get(timeout=IDLE)
            except queue.Empty:
                with self._lock:
                    if self._work.empty():  # nothing came while we gave up: end
                        self._idle -= 1
                        return
                continue  # work arrived for the idle slot we still count
            call, notify = work
            call()
            with self._lock:  # idle before the caller hears: its next call reuses this thread
                self._idle += 1
            notify()


_POOL: anyio.lowlevel.RunVar[_Pool] = anyio.lowlevel.RunVar("blokrun_daemon_threads")


def _pool() -> _Pool:
    try:
        return _POOL.get()
    except LookupError:
        pool = _Pool()
        _POOL.set(pool)
        return pool


async def run_in_daemon_thread(fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` on a daemon thread, in a copy of the caller's context; its result or its
    exception. Cancelling the caller stops the wait at once; the thread is abandoned."""
    token = anyio.lowlevel.current_token()
    context = contextvars.copy_context()
    done = anyio.Event()
    outcome: list[Any] = []
    failure: list[BaseException] = []

    def call() -> None:
        try:
            outcome.append(context.run(fn, *args))
        except BaseException as exc:  # handed to the waiting task, raised there
            failure.append(exc)

    def notify() -> None:
        try:
            anyio.from_thread.run_sync(done.set, token=token)
        except RuntimeError:
            pass  # the event loop is gone: nobody waits for this result any more

    async with anyio.to_thread.current_default_thread_limiter():
        _pool().submit((call, notify))
        await done.wait()
    if failure:
        raise failure[0]
    result: T = outcome[0]
    return result
