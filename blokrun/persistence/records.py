"""What a run stores: the record structs, sealed in the envelope and bound to their keys.

Per run, on every checkpoint target (the keys are made in :mod:`blokrun.persistence.keys`):

* a :class:`CheckpointRecord` after each checkpointed step, under
  ``_blokrun.ckpt.<request id>/<incarnation>/<seq>`` -- the vars as they were after that
  step (a snapshot, or a delta on a chain), the steps done so far and a sequence number that
  grows across the whole life of the incarnation (resumes included);
* an :class:`AliasRecord` under the key pattern (default ``<request id>-<step>``): a
  pointer to the step's latest checkpoint, owned by the first run that wrote it;
* the :class:`HeadRecord` (``_blokrun.head.<request id>``): status, incarnation and latest
  sequence, written in the same batch as each checkpoint, after it;
* the :class:`RunRecord` (``_blokrun.run.<request id>/<incarnation>``) written at start:
  inputs, start time, workflow identity;
* the :class:`DefinitionRecord` (``_blokrun.def.<sha256>``), content-addressed, so ``blokrun
  resume ID`` needs no file.

Every record is sealed for the key it is stored under (``bind``): one found under another
key -- another run's, another sequence number's -- does not open. The fields that say whose
record it is (request id, incarnation, sequence) are checked against the key on top.
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
    "ALIAS_MAGIC",
    "LAYOUT",
    "AliasRecord",
    "CheckpointRecord",
    "DefinitionRecord",
    "HeadRecord",
    "ItemsRecord",
    "RunRecord",
    "RunStatus",
    "TimerRecord",
    "decode_record",
    "alias_holder",
    "alias_owner",
    "decode_alias",
    "encode_alias",
    "encode_checkpoint",
    "encode_record",
    "new_request_id",
    "validate_request_id",
]

#: The store layout this blokrun writes (heads say theirs; older ones are refused).
LAYOUT = 2
#: What an alias value starts with, before its owner and the sealed record.
ALIAS_MAGIC = b"\xb1BKA"

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
    #: "edited": not a run of the step, but its vars as edited before a resume (``--set``);
    #: "skipped": the step did not run (its ``when`` did not hold, or its branch not taken);
    #: "forked": the state a fork started from (copied from another run's checkpoint)
    status: Literal["completed", "edited", "skipped", "forked"] = "completed"
    done: list[str]
    vars: dict[str, Any]
    started_at: float
    time: float
    duration: float
    attempt: int = 1
    incarnation: int = 1
    attempts: int = 1  # tries of this step (retries), within this run attempt
    snapshot: bool = True  # vars holds every top-level var; else only those that changed
    removed: list[str] = msgspec.field(default_factory=list)  # delta: vars deleted since
    base: int = 0  # seq of the snapshot this record's chain starts from
    chain: list[str] = msgspec.field(default_factory=list)  # keys: snapshot, then deltas
    key: str = ""  # where this record is stored
    refs: list[str] = msgspec.field(default_factory=list)  # vars stored by reference
    alias: str | None = None  # the step's key under the key pattern


class AliasRecord(msgspec.Struct, frozen=True, kw_only=True):
    """A key-pattern key (``<request id>-<step>``): which checkpoint it names."""

    request_id: str
    incarnation: int
    seq: int
    step: str
    key: str  # the checkpoint record's key


class ItemsRecord(msgspec.Struct, frozen=True, kw_only=True):
    """Results of items of a map step, stored as they complete: ``[index, result]`` pairs,
    the ``n``-th batch of attempt ``attempt`` of the run that started at ``started_at``;
    ``of``: the fingerprint of the list the items were taken from (an index means nothing
    for another list)."""

    request_id: str
    incarnation: int
    started_at: float
    step: str
    attempt: int
    n: int
    of: str
    items: list[tuple[int, Any]]


class TimerRecord(msgspec.Struct, frozen=True, kw_only=True):
    """When timer step ``step`` of the run that started at ``started_at`` wakes up."""

    request_id: str
    incarnation: int
    started_at: float
    step: str
    wake_at: float


class HeadRecord(msgspec.Struct, frozen=True, kw_only=True):
    request_id: str
    workflow: str
    version: str
    definition_hash: str
    status: RunStatus
    seq: int = 0
    #: the last step whose checkpoint is stored (not where a failure happened: that is
    #: ``failed_step``; a suspended run waits at ``waiting_step``). Stored as "step".
    last_done: str | None = msgspec.field(default=None, name="step")
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
    incarnation: int = 1  # a restart (run --restart) starts a new one
    layout: int = 1  # the store layout that wrote it (1: before incarnations; refused)
    key_id: str | None = None  # the encryption key the run is sealed with (never downgraded)
    wake_at: float | None = None  # sleeping: when its timer step (waiting_step) wakes
    tags: dict[str, str] = msgspec.field(default_factory=dict)  # the user's, to filter runs on
    trace: str | None = None  # failed: the node's traceback (its last 8,000 characters)
    #: the attempt's trace context (W3C traceparent...), when a tracing hook gave one
    context: dict[str, str] = msgspec.field(default_factory=dict)
    #: gc is deleting the run (written under gc's lease before it deletes anything): no
    #: run or resume takes it any more, and the next gc finishes a collection cut short
    collecting: bool = False


class RunRecord(msgspec.Struct, frozen=True, kw_only=True):
    request_id: str
    workflow: str
    version: str
    definition_hash: str
    inputs: dict[str, Any]
    started_at: float
    source: str | None = None
    incarnation: int = 1
    #: a fork: the run and step it was forked from (``blokrun fork``)
    forked_from: str | None = None
    forked_at: str | None = None
    #: a child run (a sub-workflow step): the run that started it
    parent: str | None = None


class DefinitionRecord(msgspec.Struct, frozen=True, kw_only=True):
    definition_hash: str
    document: dict[str, Any]
    source: str | None = None
    #: absolute folders its ``module`` nodes were imported from (the workflow file's own, the
    #: runner's search paths): a resume from another folder or process finds them again
    search_paths: list[str] = msgspec.field(default_factory=list)


T = TypeVar("T", bound=msgspec.Struct)
_FREE_FIELDS = frozenset({"vars", "inputs", "document"})

_KINDS: dict[type[msgspec.Struct], Kind] = {
    CheckpointRecord: Kind.CHECKPOINT,
    HeadRecord: Kind.HEAD,
    RunRecord: Kind.RUN,
    DefinitionRecord: Kind.DEFINITION,
    AliasRecord: Kind.ALIAS,
    ItemsRecord: Kind.ITEMS,
    TimerRecord: Kind.TIMER,
}
_TYPES = {kind: cls for cls, kind in _KINDS.items()}


#: Fields stored under another name than their attribute's (``HeadRecord.last_done`` is
#: stored as "step", as it always was), by record type.
_RENAMED: dict[type[msgspec.Struct], dict[str, str]] = {
    cls: renamed
    for cls in _KINDS
    if (
        renamed := {
            f.name: f.encode_name for f in msgspec.structs.fields(cls) if f.name != f.encode_name
        }
    )
}


_JSON = msgspec.json.Encoder()


def _as_stored(record: msgspec.Struct) -> dict[str, Any]:
    fields = msgspec.structs.asdict(record)
    renamed = _RENAMED.get(type(record))
    if renamed:
        fields = {renamed.get(name, name): value for name, value in fields.items()}
    return fields


def encode_record(
    record: msgspec.Struct, envelope: Envelope = DEFAULT_ENVELOPE, *, bind: str
) -> bytes:
    """``record`` sealed for the key ``bind`` it will be stored under."""
    kind = _KINDS[type(record)]
    if isinstance(record, HeadRecord | AliasRecord | TimerRecord):  # no user data: plain JSON
        # msgspec writes the fields under their stored names, as _as_stored + orjson would
        # (6x faster; the same JSON: tests/unit/test_codec.py)
        return envelope.seal(kind, _JSON.encode(record), bind=bind)
    return envelope.seal(kind, dumps_value(_as_stored(record)), bind=bind)


def alias_owner(request_id: str) -> bytes:
    """The bytes every alias value of run ``request_id`` starts with (its owner)."""
    return ALIAS_MAGIC + request_id.encode() + b"\x00"


def alias_holder(raw: bytes) -> str | None:
    """The request id an alias value names as its owner; ``None`` if ``raw`` is no alias."""
    if not raw.startswith(ALIAS_MAGIC):
        return None
    owner, sep, _ = raw[len(ALIAS_MAGIC) :].partition(b"\x00")
    return owner.decode("utf-8", "replace") if sep else None


def encode_alias(record: AliasRecord, envelope: Envelope, *, key: str) -> bytes:
    """The value stored under alias ``key``: its owner in clear (so a store can refuse to
    let another run replace it without reading the record), then the sealed record."""
    return alias_owner(record.request_id) + encode_record(record, envelope, bind=key)


def decode_alias(
    raw: bytes, *, datasource: str | None, key: str, envelope: Envelope
) -> AliasRecord | None:
    """The alias stored under ``key``, or ``None`` when the value is not an alias."""
    if not raw.startswith(ALIAS_MAGIC):
        return None
    owner, sep, sealed = raw[len(ALIAS_MAGIC) :].partition(b"\x00")
    if not sep:
        raise RecordError("alias value without an owner", datasource=datasource, key=key)
    record = decode_record(
        sealed, AliasRecord, datasource=datasource, key=key, envelope=envelope, bind=key
    )
    if record.request_id.encode() != owner:
        raise RecordError(
            "the alias's owner does not match its record", datasource=datasource, key=key
        )
    return record


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
    incarnation: int = 1,
    attempts: int = 1,
    snapshot: bool = True,
    removed: Sequence[str] = (),
    base: int | None = None,
    chain: Sequence[str] = (),
    key: str = "",
    refs: Sequence[str] = (),
    alias: str | None = None,
    envelope: Envelope = DEFAULT_ENVELOPE,
    status: Literal["completed", "edited", "skipped", "forked"] = "completed",
) -> bytes:
    """The hot path: a checkpoint record without building a Struct first, sealed for its
    ``key`` (``status``: see :class:`CheckpointRecord`).

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
            "status": status,
            "done": done,
            "vars": vars,
            "started_at": started_at,
            "time": time,
            "duration": duration,
            "attempt": attempt,
            "incarnation": incarnation,
            "attempts": attempts,
            "snapshot": snapshot,
            "removed": list(removed),
            "base": seq if base is None else base,
            "chain": list(chain),
            "key": key,
            "refs": list(refs),
            "alias": alias,
        }
    )
    return envelope.seal(Kind.CHECKPOINT, payload, bind=key)


def decode_record(
    raw: bytes,
    expected: type[T],
    *,
    datasource: str | None = None,
    key: str | None = None,
    envelope: Envelope = DEFAULT_ENVELOPE,
    bind: str,
) -> T:
    """Decode and validate a stored record of type ``expected``, sealed for ``bind`` (the
    key it was read from)."""
    kind, payload = envelope.open(raw, datasource=datasource, key=key, bind=bind)
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
        if free:
            record = msgspec.structs.replace(record, **free)
        if isinstance(record, DefinitionRecord):
            _check_definition(record)
        return record
    except (msgspec.ValidationError, ValueError, TypeError, ArithmeticError) as exc:
        raise RecordError(
            f"stored {expected.__name__} is invalid: {exc}", datasource=datasource, key=key
        ) from None


def _check_definition(record: DefinitionRecord) -> None:
    """A stored definition's document must hash to the hash it is stored under: runs name
    their definition by that hash, and a resume drives the run with the document."""
    from blokrun.spec.loader import definition_hash

    if definition_hash(record.document) != record.definition_hash:
        raise ValueError(
            "its document does not hash to its definition_hash (changed after it was stored)"
        )
