"""Every key a run's records are stored under, in one place.

Internal records start with ``_blokrun.``; request ids never start with ``_`` (see
:func:`blokrun.persistence.records.validate_request_id`), so no internal key can collide
with a checkpoint key rendered from the default pattern ``<request_id>-<step>``.

* ``_blokrun.head.<id>``  the run's head record (status, latest checkpoint)
* ``_blokrun.run.<id>``   the run record written once at start (inputs, identity)
* ``_blokrun.def.<sha256>``  a workflow definition, content-addressed
* ``_blokrun.lease.<id>`` the run's lease (kept by the datasource's lease store)
* ``_blokrun.slot.<workflow>.<i>``  a worker's per-workflow concurrency slot
* ``_blokrun.blob.<sha256>``  a large value stored once, by reference
* the key pattern (``persistence.keyPattern``) for checkpoints, rendered by
  :func:`checkpoint_key`
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any

from blokrun.errors import DatasourceError
from blokrun.expressions import render_key

if TYPE_CHECKING:
    from collections.abc import Mapping

    from blokrun.spec.loader import Workflow

__all__ = [
    "BLOB_PREFIX",
    "DEFINITION_PREFIX",
    "HEAD_PREFIX",
    "INTERNAL_PREFIXES",
    "LEASE_PREFIX",
    "RUN_PREFIX",
    "SLOT_PREFIX",
    "KeyScope",
    "blob_key",
    "checkpoint_key",
    "definition_key",
    "head_key",
    "lease_key",
    "run_key",
    "scan_prefix",
]

HEAD_PREFIX = "_blokrun.head."
RUN_PREFIX = "_blokrun.run."
DEFINITION_PREFIX = "_blokrun.def."
LEASE_PREFIX = "_blokrun.lease."
SLOT_PREFIX = "_blokrun.slot."
BLOB_PREFIX = "_blokrun.blob."
#: Keys under these prefixes are never checkpoints.
INTERNAL_PREFIXES = (HEAD_PREFIX, RUN_PREFIX, DEFINITION_PREFIX, BLOB_PREFIX)


def head_key(request_id: str) -> str:
    return HEAD_PREFIX + request_id


def run_key(request_id: str) -> str:
    return RUN_PREFIX + request_id


def definition_key(definition_hash: str) -> str:
    return DEFINITION_PREFIX + definition_hash


def lease_key(request_id: str) -> str:
    return LEASE_PREFIX + request_id


def blob_key(sha256: str) -> str:
    return BLOB_PREFIX + sha256


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
            "date": time.strftime("%Y-%m-%d", time.gmtime(started_at)),
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


def checkpoint_key(  # noqa: PLR0917 - the pattern's inputs, in the order they read
    wf: Workflow,
    request_id: str,
    started_at: float,
    step: str,
    attempt: int,
    vars: Mapping[str, Any],
) -> str:
    """The key pattern's key; from the second attempt on, ``~<attempt>`` is appended so a
    re-run step is recorded beside its earlier checkpoint, not over it (history)."""
    key = render_key(wf.key_template, KeyScope.of(wf, request_id, started_at, step, vars))
    return key if attempt <= 1 else f"{key}~{attempt}"


def scan_prefix(wf: Workflow | None, request_id: str) -> str:
    """The literal start of every checkpoint key of a run, for the fallback scan.

    The key pattern is rendered for two very different start times and cut at the step
    name: parts that depend on the time (``${ctx.date}``) end the prefix, so it holds
    whatever the run's start was. Scanned records are matched by request id anyway.
    """
    if wf is None:
        return f"{request_id}-"
    sentinel = "\x00"
    rendered = [
        render_key(wf.key_template, KeyScope.of(wf, request_id, started, sentinel, {})).split(
            sentinel, 1
        )[0]
        for started in (0.0, 2_000_000_000.0)
    ]
    return os.path.commonprefix(rendered)  # noqa: RUF071 - a character prefix is meant
