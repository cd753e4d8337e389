"""What a run stores, and under which keys.

Per run, on every checkpoint target:

* ``<keyPattern>`` (default ``<request_id>-<step>``): a :class:`CheckpointRecord` after each
  checkpointed step -- the vars as they were after that step, the steps done so far and a
  sequence number that grows across the whole life of the run (resumes included).
* ``_blokrun.head.<request_id>``: the :class:`HeadRecord` -- status and latest sequence, so
  finding a run's latest checkpoint is one read. It is written in the same batch as each
  checkpoint (one round trip on drivers with native batches), after it.
* ``_blokrun.run.<request_id>``: the :class:`RunRecord` written once at start: inputs,
  start time, workflow identity.
* ``_blokrun.def.<sha256>``: the workflow definition, content-addressed, so ``blokrun
  resume ID`` needs no file.

The keys themselves are made in :mod:`blokrun.persistence.keys`.
"""

from __future__ import annotations

import re
import secrets
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import msgspec
import orjson

from blokrun.errors import RecordError
from blokrun.persistence.codec import Kind, dumps_value, loads_value
from blokrun.persistence.envelope import Envelope
from blokrun.persistence.envelope.compression import zstd_available
from blokrun.types import RunStatus

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

#: Records sealed with no configuration: zstd (zlib without zstandard) above 4 KiB, no
#: encryption.
DEFAULT_ENVELOPE = Envelope(compression="zstd" if zstd_available() else "zlib")

__all__ = [
    "CheckpointRecord",
    "DefinitionRecord",
    "HeadRecord",
    "RunRecord",
    "RunStatus",
    "decode_record",
    "encode_checkpoint",
    "encode_record",
    "new_request_id",
    "validate_request_id",
]

_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._~:-]{0,199}$")


def new_request_id() -> str:
    """A URL-safe id with 128 random bits (22 characters)."""
    rid = secrets.token_urlsafe(16)
    # token_urlsafe may start with '-' or '_': keep ids in the documented alphabet.
    return rid if rid[0].isalnum() else "r" + rid[1:]


def validate_request_id(request_id: object) -> str:
    """Return ``request_id`` if it is usable, else raise ``ValueError`` saying what is expected."""
    if not isinstance(request_id, str) or not _REQUEST_ID_RE.fullmatch(request_id):
        shown = repr(request_id) if len(repr(request_id)) <= 80 else repr(request_id)[:77] + "..."
        raise ValueError(
            f"invalid request id {shown}: expected 1-200 characters from A-Z a-z 0-9 . _ ~ : -, "
            "starting with a letter or digit"
        )
    return request_id


class CheckpointRecord(msgspec.Struct, frozen=True, kw_only=True):
    request_id: str
    workflow: str
    version: str
    definition_hash: str
    step: str
    seq: int
    status: Literal["completed"] = "completed"
    done: list[str]
    vars: dict[str, Any]
    started_at: float
    time: float
    duration: float
    attempt: int = 1
    attempts: int = 1  # tries of this step (retries), within this run attempt
    snapshot: bool = True  # vars holds every top-level var; else only those that changed
    removed: list[str] = msgspec.field(default_factory=list)  # delta: vars deleted since
    base: int = 0  # seq of the snapshot this record's chain starts from
    chain: list[str] = msgspec.field(default_factory=list)  # keys: snapshot, then deltas
    key: str = ""  # where this record is stored
    refs: list[str] = msgspec.field(default_factory=list)  # vars stored by reference


class HeadRecord(msgspec.Struct, frozen=True, kw_only=True):
    request_id: str
    workflow: str
    version: str
    definition_hash: str
    status: RunStatus
    seq: int = 0
    step: str | None = None
    key: str | None = None
    started_at: float
    updated_at: float
    attempt: int = 1
    error: str | None = None
    failed_step: str | None = None
    high_seq: int = 0  # the highest sequence number used (history kept by time travel)
    recoveries: int = 0  # resumes after a failure, cancellation or crash (dead-letter count)
    waiting_step: str | None = None  # suspended: the await-input step
    token_hash: str | None = None  # suspended: sha256 of "<id>:<step>:<token>"


class RunRecord(msgspec.Struct, frozen=True, kw_only=True):
    request_id: str
    workflow: str
    version: str
    definition_hash: str
    inputs: dict[str, Any]
    started_at: float
    source: str | None = None


class DefinitionRecord(msgspec.Struct, frozen=True, kw_only=True):
    definition_hash: str
    document: dict[str, Any]
    source: str | None = None


T = TypeVar("T", bound=msgspec.Struct)
_FREE_FIELDS = frozenset({"vars", "inputs", "document"})

_KINDS: dict[type[msgspec.Struct], Kind] = {
    CheckpointRecord: Kind.CHECKPOINT,
    HeadRecord: Kind.HEAD,
    RunRecord: Kind.RUN,
    DefinitionRecord: Kind.DEFINITION,
}
_TYPES = {kind: cls for cls, kind in _KINDS.items()}


def encode_record(record: msgspec.Struct, envelope: Envelope = DEFAULT_ENVELOPE) -> bytes:
    kind = _KINDS[type(record)]
    if isinstance(record, HeadRecord):  # no user data inside: plain JSON, nothing to check
        return envelope.seal(kind, orjson.dumps(msgspec.structs.asdict(record)))
    return envelope.seal(kind, dumps_value(msgspec.structs.asdict(record)))


def encode_checkpoint(
    *,
    request_id: str,
    workflow: str,
    version: str,
    definition_hash: str,
    step: str,
    seq: int,
    done: list[str],
    vars: Mapping[str, Any] | orjson.Fragment,
    started_at: float,
    time: float,
    duration: float,
    attempt: int,
    attempts: int = 1,
    snapshot: bool = True,
    removed: Sequence[str] = (),
    base: int | None = None,
    chain: Sequence[str] = (),
    key: str = "",
    refs: Sequence[str] = (),
    envelope: Envelope = DEFAULT_ENVELOPE,
) -> bytes:
    """The hot path: a checkpoint record without building a Struct first.

    ``vars`` values may be ``orjson.Fragment`` (already serialised by the state writer);
    plain values are checked here.
    """
    if not isinstance(vars, orjson.Fragment) and not all(
        isinstance(v, orjson.Fragment) for v in vars.values()
    ):
        vars = {
            k: v
            if isinstance(v, orjson.Fragment)
            else orjson.Fragment(dumps_value(v, path=f"vars.{k}"))
            for k, v in vars.items()
        }
    payload = orjson.dumps(
        {
            "request_id": request_id,
            "workflow": workflow,
            "version": version,
            "definition_hash": definition_hash,
            "step": step,
            "seq": seq,
            "status": "completed",
            "done": done,
            "vars": vars,
            "started_at": started_at,
            "time": time,
            "duration": duration,
            "attempt": attempt,
            "attempts": attempts,
            "snapshot": snapshot,
            "removed": list(removed),
            "base": seq if base is None else base,
            "chain": list(chain),
            "key": key,
            "refs": list(refs),
        }
    )
    return envelope.seal(Kind.CHECKPOINT, payload)


def decode_record(
    raw: bytes,
    expected: type[T],
    *,
    datasource: str | None = None,
    key: str | None = None,
    envelope: Envelope = DEFAULT_ENVELOPE,
) -> T:
    """Decode and validate a stored record of type ``expected``."""
    kind, payload = envelope.open(raw, datasource=datasource, key=key)
    if _TYPES.get(kind) is not expected:
        raise RecordError(
            f"expected a {expected.__name__}, found a {kind.name.lower()} record",
            datasource=datasource,
            key=key,
        )
    try:
        obj = loads_value(payload)
        # The free-form JSON fields are not walked by msgspec (it would visit every value
        # of a 10 MB state): they are checked to be objects and put back as they are.
        free = {}
        if isinstance(obj, dict):
            for name in _FREE_FIELDS.intersection(obj):
                value = obj[name]
                if not isinstance(value, dict):
                    raise ValueError(f"field {name!r} must be an object")
                free[name] = value
                obj[name] = {}
        record = msgspec.convert(obj, expected)
        return msgspec.structs.replace(record, **free) if free else record
    except (msgspec.ValidationError, ValueError, TypeError, ArithmeticError) as exc:
        raise RecordError(
            f"stored {expected.__name__} is invalid: {exc}", datasource=datasource, key=key
        ) from None
