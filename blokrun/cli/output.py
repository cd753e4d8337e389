"""What the CLI prints: live progress on a terminal, logs as text or JSON lines, results."""

from __future__ import annotations

import logging
import sys
import time
from typing import TYPE_CHECKING, Any, TextIO

import orjson

from blokrun.cli.exits import EXIT_OK, EXIT_SUSPENDED
from blokrun.execution.hooks import Hook

if TYPE_CHECKING:
    from blokrun.execution.events import RunEnded, RunStarted, StepFinished, StepStarted
    from blokrun.runner import RunResult

__all__ = ["JsonFormatter", "Progress", "configure_logging", "dump_json", "report"]

_RESERVED = frozenset(vars(logging.makeLogRecord({})))


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and any extra fields."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "time": round(record.created, 6),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _RESERVED and not key.startswith("_"):
                doc[key] = value
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(doc, default=str).decode()


class _TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        step = getattr(record, "step", None)
        where = f" [{step}]" if step else ""
        return f"{record.levelname.lower()}{where}: {record.getMessage()}"


def configure_logging(fmt: str, level: str | None, stream: TextIO) -> None:
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter() if fmt == "json" else _TextFormatter())
    root = logging.getLogger("blokrun")
    root.handlers[:] = [handler]
    root.propagate = False
    if level is not None:
        root.setLevel(level.upper())
    elif fmt == "json" or stream.isatty():
        root.setLevel(logging.INFO)
    else:
        root.setLevel(logging.WARNING)  # piped: quiet


def dump_json(value: Any, stream: TextIO) -> None:
    """Final vars on stdout: indented on a terminal, one line when piped."""
    opts = orjson.OPT_NON_STR_KEYS | (orjson.OPT_INDENT_2 if stream.isatty() else 0)
    stream.write(orjson.dumps(value, default=str, option=opts).decode() + "\n")
    stream.flush()


def report(result: RunResult) -> int:
    """Final vars on stdout (exit 0), or the suspension and how to continue (exit 3)."""
    if result.status != "suspended":
        dump_json(result.vars, sys.stdout)
        return EXIT_OK
    dump_json(
        {
            "request_id": result.request_id,
            "status": "suspended",
            "step": result.waiting_step,
            "prompt": result.prompt,
            "token": result.token,
        },
        sys.stdout,
    )
    sys.stderr.write(
        f"blokrun: run {result.request_id} is suspended at step {result.waiting_step!r}"
        f"{': ' + result.prompt if result.prompt else ''}. To continue:\n"
        f"  blokrun resume {result.request_id} --input '<JSON>' --token {result.token}\n"
    )
    return EXIT_SUSPENDED


class Progress(Hook):
    """``[i/n] step ... ok 0.12s`` on stderr, only when stderr is a terminal."""

    def __init__(self, stream: TextIO = sys.stderr) -> None:
        self._stream = stream
        self._t0 = 0.0
        self._run_t0 = 0.0

    async def on_run_start(self, event: RunStarted) -> None:
        self._run_t0 = time.perf_counter()
        total = len(event.workflow.steps)
        if event.done:
            self._stream.write(
                f"resuming {event.request_id}: {len(event.done)} of {total} steps already done\n"
            )
        else:
            self._stream.write(f"run {event.request_id}: {event.workflow.name} ({total} steps)\n")

    async def before_step(self, event: StepStarted) -> None:
        step = event.step
        self._t0 = time.perf_counter()
        self._stream.write(
            f"\r[{step.index + 1}/{len(event.workflow.steps)}] {step.name} ...\x1b[K"
        )
        self._stream.flush()

    async def after_step(self, event: StepFinished) -> None:
        step = event.step
        elapsed = time.perf_counter() - self._t0
        self._stream.write(
            f"\r[{step.index + 1}/{len(event.workflow.steps)}] {step.name} ok {elapsed:.2f}s"
            f" (total {time.perf_counter() - self._run_t0:.2f}s)\x1b[K\n"
        )
        self._stream.flush()

    async def on_run_end(self, event: RunEnded) -> None:
        if event.status != "completed":
            self._stream.write("\x1b[K\n")
