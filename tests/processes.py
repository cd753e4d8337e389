"""Child processes a test starts are reaped whatever happens in the test.

A process left running when an assertion fails outlives its test: its pipes and its
``Popen`` are collected later, inside *another* test, whose pytest run then fails on
"subprocess ... is still running" (an unraisable ResourceWarning) -- one failure becomes
two, the second far from its cause.
"""

from __future__ import annotations

import subprocess
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Iterator

__all__ = ["reap", "reaped"]


def reap(proc: subprocess.Popen[Any]) -> None:
    """Kill ``proc`` if it still runs, wait for it, close its pipes."""
    if proc.poll() is None:
        proc.kill()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:  # pragma: no cover - a process that ignores SIGKILL
        pass
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()


@contextmanager
def reaped(*procs: subprocess.Popen[Any]) -> Iterator[None]:
    """Run the block; then every one of ``procs`` is reaped (see :func:`reap`)."""
    try:
        yield
    finally:
        for proc in procs:
            reap(proc)
