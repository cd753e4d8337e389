"""Every key a run's records are stored under, in one place.

A run's records live under internal keys that **cannot collide** between runs: a request id
holds only ``A-Z a-z 0-9 . _ ~ : -`` and never starts with ``_`` (see
:func:`blokrun.persistence.records.validate_request_id`), and the parts after it are
separated by ``/``, which no request id holds -- so ``job`` + ``2-c`` and ``job-2`` + ``c``,
or ``job``'s sequence 12 and ``job-1``'s sequence 2, name different keys.

* ``_blokrun.head.<id>``  the run's head record (status, incarnation, latest checkpoint)
* ``_blokrun.run.<id>/<incarnation>``  the run record of an incarnation (inputs, identity)
* ``_blokrun.ckpt.<id>/<incarnation>/<seq>``  a checkpoint (seq zero-padded to 10 digits,
  so a listing sorts by sequence)
* ``_blokrun.items.<id>/<incarnation>/<step>/<attempt>.<n>``  results of items of a map
  step, stored as they complete (``n``-th batch of attempt ``attempt``); deleted once the
  step's own checkpoint holds them all
* ``_blokrun.timer.<id>/<incarnation>/<step>``  when a timer step (``sleep``,
  ``wait-until``) wakes up, stored before it starts waiting
* ``_blokrun.def.<sha256>``  a workflow definition, content-addressed
* ``_blokrun.lease.<id>`` the run's lease (kept by the datasource's lease store)
* ``_blokrun.slot.<workflow>.<i>``  a worker's per-workflow concurrency slot
* ``_blokrun.blob.<sha256>``  a large value stored once, by reference
* ``_blokrun.blobref.<id>/<sha256>``  run ``<id>`` refers to that blob (gc's marks)
* the key pattern (``persistence.keyPattern``, default ``<id>-<step>``): the step's
  **alias**, a pointer to its latest checkpoint, rendered by :func:`alias_key` when the step
  is checkpointed. Aliases of two runs can collide; the first run that wrote one owns it.
"""

from __future__ import annotations

import functools
import time
from typing import TYPE_CHECKING, Any

from blokrun.errors import DatasourceError
from blokrun.expressions import render_key
from blokrun.spec.model import DEFAULT_KEY_PATTERN

if TYPE_CHECKING:
    from collections.abc import Mapping

    from blokrun.spec.loader import Workflow

__all__ = [
    "BLOBREF_PREFIX",
    "BLOB_PREFIX",
    "CHECKPOINT_PREFIX",
    "DEFINITION_PREFIX",
    "HEAD_PREFIX",
    "INTERNAL_PREFIX",
    "ITEMS_PREFIX",
    "LEASE_PREFIX",
    "RUN_PREFIX",
    "SLOT_PREFIX",
    "TIMER_PREFIX",
    "KeyScope",
    "alias_key",
    "blob_key",
    "blobref_key",
    "checkpoint_key",
    "definition_key",
    "head_key",
    "items_key",
    "items_prefix",
    "lease_key",
    "parse_checkpoint_key",
    "run_key",
    "run_keys_prefix",
    "timer_key",
    "timers_prefix",
    "runs_checkpoints_prefix",
]

INTERNAL_PREFIX = "_blokrun."
HEAD_PREFIX = "_blokrun.head."
RUN_PREFIX = "_blokrun.run."
CHECKPOINT_PREFIX = "_blokrun.ckpt."
DEFINITION_PREFIX = "_blokrun.def."
ITEMS_PREFIX = "_blokrun.items."
TIMER_PREFIX = "_blokrun.timer."
LEASE_PREFIX = "_blokrun.lease."
SLOT_PREFIX = "_blokrun.slot."
BLOB_PREFIX = "_blokrun.blob."
BLOBREF_PREFIX = "_blokrun.blobref."
_SEQ_DIGITS = 10


def head_key(request_id: str) -> str:
    return HEAD_PREFIX + request_id


def run_key(request_id: str, incarnation: int) -> str:
    return f"{RUN_PREFIX}{request_id}/{incarnation}"


def run_keys_prefix(request_id: str) -> str:
    """The prefix of every run record of ``request_id`` (all incarnations)."""
    return f"{RUN_PREFIX}{request_id}/"


def checkpoint_key(request_id: str, incarnation: int, seq: int) -> str:
    return f"{CHECKPOINT_PREFIX}{request_id}/{incarnation}/{seq:0{_SEQ_DIGITS}d}"


def runs_checkpoints_prefix(request_id: str, incarnation: int | None = None) -> str:
    """The prefix of the checkpoints of ``request_id`` (of one incarnation, or all)."""
    base = f"{CHECKPOINT_PREFIX}{request_id}/"
    return base if incarnation is None else f"{base}{incarnation}/"


def parse_checkpoint_key(key: str) -> tuple[str, int, int] | None:
    """``(request id, incarnation, seq)`` of a checkpoint key, or ``None``."""
    if not key.startswith(CHECKPOINT_PREFIX):
        return None
    rid, sep, rest = key[len(CHECKPOINT_PREFIX) :].partition("/")
    inc, sep2, seq = rest.partition("/")
    if not (sep and sep2 and inc.isdigit() and seq.isdigit() and len(seq) == _SEQ_DIGITS):
        return None
    return rid, int(inc), int(seq)


def items_key(request_id: str, incarnation: int, step: str, attempt: int, n: int) -> str:
    return f"{ITEMS_PREFIX}{request_id}/{incarnation}/{step}/{attempt:06d}.{n:08d}"


def items_prefix(request_id: str, incarnation: int | None = None, step: str | None = None) -> str:
    """The prefix of the map items of ``request_id`` (of one incarnation and step, or all)."""
    base = f"{ITEMS_PREFIX}{request_id}/"
    if incarnation is None:
        return base
    return f"{base}{incarnation}/" if step is None else f"{base}{incarnation}/{step}/"


def timer_key(request_id: str, incarnation: int, step: str) -> str:
    return f"{TIMER_PREFIX}{request_id}/{incarnation}/{step}"


def timers_prefix(request_id: str) -> str:
    """The prefix of the timer records of ``request_id`` (every incarnation)."""
    return f"{TIMER_PREFIX}{request_id}/"


def blobref_key(request_id: str, sha256: str) -> str:
    return f"{BLOBREF_PREFIX}{request_id}/{sha256}"


def definition_key(definition_hash: str) -> str:
    return DEFINITION_PREFIX + definition_hash


def lease_key(request_id: str) -> str:
    return LEASE_PREFIX + request_id


def blob_key(sha256: str) -> str:
    return BLOB_PREFIX + sha256


@functools.lru_cache(maxsize=256)
def _day(started_at: float) -> str:
    """The UTC date of a run's start (every step of a run asks: formatted once)."""
    return time.strftime("%Y-%m-%d", time.gmtime(started_at))


class KeyScope:
    """The expression scope of key patterns: ``ctx.request.id``, ``stepName``, dates,
    the workflow's identity and the run's vars."""

    __slots__ = ("_ctx", "_step")

    def __init__(
        self,
        *,
        request_id: str,
        started_at: float,
        workflow: str,
        version: str,
        definition_hash: str,
        step: str,
        vars: Mapping[str, Any],
    ) -> None:
        self._step = step
        self._ctx = {
            "request": {"id": request_id, "started_at": started_at},
            "workflow": {"name": workflow, "version": version, "hash": definition_hash},
            "vars": vars,
            "timestamp": int(started_at * 1000),
            "date": _day(started_at),
            "step": step,
            "idempotency_key": f"{request_id}:{step}",
        }

    @classmethod
    def of(
        cls, wf: Workflow, request_id: str, started_at: float, step: str, vars: Mapping[str, Any]
    ) -> KeyScope:
        return cls(
            request_id=request_id,
            started_at=started_at,
            workflow=wf.name,
            version=wf.version,
            definition_hash=wf.definition_hash,
            step=step,
            vars=vars,
        )

    def lookup_root(self, name: str) -> Any:
        if name == "stepName":
            return self._step
        return self._ctx

    async def call_datasource(self, name: Any, key: Any) -> Any:
        raise DatasourceError("ctx.datasource cannot be used in a key")


def alias_key(
    wf: Workflow, request_id: str, started_at: float, step: str, vars: Mapping[str, Any]
) -> str:
    """The step's alias: the key pattern rendered for this run and step (its vars included,
    as they are when the step is checkpointed)."""
    if wf.key_pattern == DEFAULT_KEY_PATTERN:  # what rendering it gives, without the scope
        return f"{request_id}-{step}"
    return render_key(wf.key_template, KeyScope.of(wf, request_id, started_at, step, vars))
