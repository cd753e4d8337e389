"""The value codec, and the constants the stored envelope shares.

Records are sealed by :mod:`blokrun.persistence.envelope` (format version, compression,
encryption, checksum); ``MAGIC`` and :class:`Kind` live here so the envelope and the value
codec agree without importing each other.

Values are JSON (orjson) plus tagged types that JSON lacks, so they come back as they went
in: ``datetime``, ``date``, ``time``, ``Decimal``, ``bytes``, ``set`` and ``frozenset`` are
stored as ``{"$blokrun": "<type>", "v": ...}`` (a user dict that has a ``"$blokrun"`` key
is escaped as ``{"$blokrun": "dict", "v": {...}}``). Tuples are stored as lists (JSON has
no tuple; tuples inside a set come back as tuples). UUIDs are stored as their string form.
NaN, infinities, integers outside [-2**63, 2**64), non-string dict keys, circular
references and any other type raise :class:`~blokrun.errors.ValueNotStorable` with the path
of the offending value. No pickle, ever.
"""

from __future__ import annotations

import base64
import datetime as dt
import gc
import math
import sys
import sysconfig
import uuid
from contextlib import contextmanager
from decimal import Decimal
from enum import IntEnum
from typing import TYPE_CHECKING, Any, Protocol

import orjson

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

from blokrun.errors import RecordError, ValueNotStorable

__all__ = [
    "Kind",
    "bulk_decoding",
    "decode_foreign",
    "dumps_value",
    "find_unstorable",
    "loads_value",
]

MAGIC = b"\xb1BK"
_TAG = "$blokrun"
_TAG_BYTES = b'"$blokrun"'
_GC_PAUSE_BYTES = 1 << 20  # see bulk_decoding
#: Whether bulk_decoding moves what it built to the oldest generation: measured on CPython
#: 3.11-3.13 (generational collector); not on 3.14 (incremental) or free-threaded builds.
_PROMOTE = (
    sys.implementation.name == "cpython"
    and sys.version_info < (3, 14)
    and not sysconfig.get_config_var("Py_GIL_DISABLED")
)
_OPTS = (
    orjson.OPT_PASSTHROUGH_DATETIME
    | orjson.OPT_PASSTHROUGH_SUBCLASS
    | orjson.OPT_PASSTHROUGH_DATACLASS
)


class Opener(Protocol):
    """What opens a sealed record (:class:`blokrun.persistence.envelope.Envelope`)."""

    def open(
        self,
        raw: bytes,
        *,
        datasource: str | None = None,
        key: str | None = None,
        bind: str = "",
    ) -> tuple[Kind, bytes]: ...


class Kind(IntEnum):
    CHECKPOINT = 1
    HEAD = 2
    RUN = 3
    DEFINITION = 4
    VALUE = 5
    ALIAS = 6
    ITEMS = 7
    TIMER = 8


def _tag_set(obj: set[Any] | frozenset[Any]) -> Any:
    items = list(obj)
    try:
        items.sort()
    except TypeError:
        pass
    return {_TAG: "frozenset" if isinstance(obj, frozenset) else "set", "v": items}


#: What orjson cannot store natively, in the order to test (datetime is a date; str and int
#: subclasses -- enums -- are stored as the plain value).
_TAGGERS: tuple[tuple[type | tuple[type, ...], Callable[[Any], Any]], ...] = (
    (dt.datetime, lambda o: {_TAG: "datetime", "v": o.isoformat()}),
    (dt.date, lambda o: {_TAG: "date", "v": o.isoformat()}),
    (dt.time, lambda o: {_TAG: "time", "v": o.isoformat()}),
    (uuid.UUID, lambda o: {_TAG: "uuid", "v": str(o)}),
    (Decimal, lambda o: {_TAG: "decimal", "v": str(o)}),
    (
        (bytes, bytearray, memoryview),
        lambda o: {_TAG: "bytes", "v": base64.b64encode(bytes(o)).decode("ascii")},
    ),
    ((set, frozenset), _tag_set),
    (str, str),
    (bool, bool),
    (int, int),
    (float, float),
    (dict, dict),
    (list, list),
)


def _tag(obj: Any) -> Any:
    for types, encode in _TAGGERS:
        if isinstance(obj, types):
            return encode(obj)
    raise TypeError(type(obj).__name__)


_UNTAG: dict[str, Callable[[Any], Any]] = {
    "datetime": dt.datetime.fromisoformat,
    "date": dt.date.fromisoformat,
    "time": dt.time.fromisoformat,
    "uuid": uuid.UUID,
    "decimal": Decimal,
    "bytes": base64.b64decode,
    "set": lambda v: {_tuples(x) for x in v},
    "frozenset": lambda v: frozenset(_tuples(x) for x in v),
    "dict": lambda v: v,
}


def _tuples(obj: Any) -> Any:
    """Set members were tuples when they were lists (a list cannot be in a set)."""
    return tuple(_tuples(x) for x in obj) if isinstance(obj, list) else obj


def _untag(obj: Any) -> Any:
    if isinstance(obj, dict):
        tag = obj.get(_TAG)
        if isinstance(tag, str) and len(obj) == 2 and "v" in obj and tag in _UNTAG:
            value = obj["v"]
            if tag in ("set", "frozenset"):
                value = [_untag(x) for x in value]
            elif tag == "dict":
                return {k: _untag(v) for k, v in value.items()}
            return _UNTAG[tag](value)
        return {k: _untag(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_untag(x) for x in obj]
    return obj


def _unstorable_scalar(obj: Any, where: str) -> ValueNotStorable | None:
    if isinstance(obj, int) and not isinstance(obj, bool) and not -(2**63) <= obj < 2**64:
        return ValueNotStorable(
            "integer out of the storable range [-2**63, 2**64)", path=where, type_name="int"
        )
    if isinstance(obj, float) and not math.isfinite(obj):  # JSON would store null
        return ValueNotStorable(
            f"{obj} cannot be stored (JSON has no NaN or infinity)", path=where, type_name="float"
        )
    return None


def _unstorable_other(obj: Any, where: str) -> ValueNotStorable | None:
    try:
        _tag(obj)
    except TypeError:
        return ValueNotStorable(
            "cannot be stored (expected JSON types, datetime, date, time, UUID, "
            "Decimal, bytes, set)",
            path=where,
            type_name=type(obj).__name__,
        )
    return None


def _children(obj: Any, where: str) -> Any:
    """``(child, its path)`` of a container, or a ValueNotStorable for a non-string key."""
    if not isinstance(obj, dict):
        for i, v in enumerate(obj):
            yield v, f"{where}[{i}]"
        return
    for k, v in obj.items():
        if not isinstance(k, str):
            yield ValueNotStorable(
                f"dict key {k!r} is not a string", path=where, type_name=type(k).__name__
            )
            return
        yield v, (f"{where}.{k}" if k.isidentifier() else f"{where}[{k!r}]")


def find_unstorable(value: Any, path: str = "vars") -> ValueNotStorable | None:
    """The first value under ``value`` that cannot be stored, as an error naming its path."""
    seen: set[int] = set()

    def walk(obj: Any, where: str) -> ValueNotStorable | None:
        if obj is None or isinstance(obj, str | bool | int | float):
            return _unstorable_scalar(obj, where)
        if not isinstance(obj, dict | list | tuple | set | frozenset):
            return _unstorable_other(obj, where)
        if id(obj) in seen:
            return ValueNotStorable("circular reference", path=where, type_name=type(obj).__name__)
        seen.add(id(obj))
        try:
            for item in _children(obj, where):
                if isinstance(item, ValueNotStorable):
                    return item
                if (err := walk(*item)) is not None:
                    return err
        finally:
            seen.discard(id(obj))
        return None

    return walk(value, path)


def _has_tag_key(obj: Any) -> bool:
    if isinstance(obj, dict):
        return _TAG in obj or any(_has_tag_key(v) for v in obj.values())
    if isinstance(obj, list | tuple):
        return any(_has_tag_key(v) for v in obj)
    return False


def _escape(obj: Any) -> Any:
    if isinstance(obj, dict):
        inner = {k: _escape(v) for k, v in obj.items()}
        return {_TAG: "dict", "v": inner} if _TAG in obj else inner
    if isinstance(obj, list | tuple):
        return [_escape(v) for v in obj]
    return obj


def dumps_value(value: Any, *, path: str = "vars") -> bytes:
    """JSON bytes for ``value`` with tagged extra types; unstorable values name their path."""
    try:
        out = orjson.dumps(value, default=_tag, option=_OPTS)
    except (TypeError, orjson.JSONEncodeError) as exc:
        err = find_unstorable(value, path)
        if err is None:
            err = ValueNotStorable(str(exc), path=path, type_name=type(value).__name__)
        raise err from None
    # orjson writes NaN and infinities as null, and a user dict may look like a tag: only
    # then is the value walked (most states have neither).
    if b"null" in out or _TAG_BYTES in out:
        if (err := find_unstorable(value, path)) is not None:
            raise err
        if _TAG_BYTES in out and _has_tag_key(value):
            out = orjson.dumps(_escape(value), default=_tag, option=_OPTS)
    return out


@contextmanager
def bulk_decoding(size: int) -> Iterator[None]:
    """Around decoding ``size`` bytes of JSON: from 1 MiB, with the cyclic collector paused.

    Decoding builds many small containers (~200k for 10 MB of small records). With the
    collector on, each 700 new ones start a young collection that rescans them as they are
    built (``orjson.loads`` of 10 MB of records: ~235 ms instead of ~95 ms here); and were it
    merely turned back on after, the next allocation would scan them all again (~45 ms), and
    the middle generation's collection once more later. So the young generations are
    collected first (cheap: they hold a few thousand objects at most), the objects are built
    with the collector paused, and then moved as they are to the oldest generation
    (``gc.freeze()`` + ``gc.unfreeze()``), which only a full collection scans, as it would
    have once they had survived the young ones. JSON builds no reference cycles: what a
    decode builds is freed by reference counting whatever its generation. Measured in
    ``benchmarks/PROFILE.md`` (issue 18).

    Nothing is changed when the collector is already off (the program's choice, or a decode
    around this one), and nothing is moved when the program has frozen objects of its own
    (``gc.freeze()`` before forking: unfreezing would move them too) or on a collector this
    was not measured on (``_PROMOTE``).
    """
    if size < _GC_PAUSE_BYTES or not gc.isenabled():
        yield
        return
    promote = _PROMOTE and gc.get_freeze_count() == 0
    if promote:
        gc.collect(1)
    gc.disable()
    try:
        yield
    finally:
        if promote and gc.get_freeze_count() == 0:
            gc.freeze()
            gc.unfreeze()
        gc.enable()


def _has_tag_bytes(data: bytes) -> bool:
    """Whether ``data`` holds ``"$blokrun"``. Searching JSON for it as such scans 10 MB in
    ~4.5 ms here (its last byte, ``"``, is in JSON everywhere); most states hold no ``$``
    at all, which one ``memchr`` finds in ~0.1 ms, and the search starts from the first."""
    first = data.find(b"$")
    return first >= 0 and data.find(_TAG_BYTES, max(first - 1, 0)) >= 0


def loads_value(data: bytes) -> Any:
    with bulk_decoding(len(data)):
        obj = orjson.loads(data)
        if _has_tag_bytes(data):
            return _untag(obj)
    return obj


def decode_foreign(raw: bytes, *, datasource: str, key: str, envelope: Opener) -> Any:
    """Decode what ``ctx.datasource`` reads: a blokrun record, else JSON, else text, else bytes."""
    if raw[:3] == MAGIC:
        _, payload = envelope.open(raw, datasource=datasource, key=key, bind=key)
        try:
            return loads_value(payload)
        except (ValueError, TypeError, ArithmeticError) as exc:
            raise RecordError(
                f"payload is not valid JSON: {exc}", datasource=datasource, key=key
            ) from None
    try:
        return loads_value(raw)
    except (ValueError, TypeError, ArithmeticError):
        pass
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw
