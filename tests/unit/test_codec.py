"""The stored envelope and the value codec: values come back as they went in, unstorable
values name their path and type, and damaged or foreign bytes are a RecordError -- never a
traceback."""

from __future__ import annotations

import datetime as dt
import math
import struct
import uuid
import zlib
from decimal import Decimal
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from blokrun.errors import (
    BlokrunError,
    DatasourceError,
    FormatVersionError,
    RecordError,
    ValueNotStorable,
)
from blokrun.persistence.codec import (
    MAGIC,
    Kind,
    decode_foreign,
    dumps_value,
    find_unstorable,
    loads_value,
)
from blokrun.persistence.envelope import FORMAT_VERSION, Envelope
from blokrun.persistence.records import (
    DEFAULT_ENVELOPE,
    CheckpointRecord,
    DefinitionRecord,
    HeadRecord,
    RunRecord,
    decode_record,
    encode_checkpoint,
    encode_record,
    new_request_id,
    validate_request_id,
)
from blokrun.spec.loader import definition_hash

UTC2 = dt.timezone(dt.timedelta(hours=2))
HEADER = struct.Struct(">3sBBBBI")  # v2 with no key id
PLAIN = Envelope(compression="none")
encode = PLAIN.seal
decode = PLAIN.open


def roundtrip(value: Any) -> Any:
    return loads_value(dumps_value(value))


def raw_record(
    payload: bytes,
    *,
    magic: bytes = MAGIC,
    version: int = FORMAT_VERSION,
    flags: int = 0,
    kind: int = Kind.VALUE,
    crc: int | None = None,
) -> bytes:
    crc = zlib.crc32(payload) if crc is None else crc
    return HEADER.pack(magic, version, flags, kind, 0, crc) + payload


def not_storable(value: Any, path: str = "vars") -> ValueNotStorable:
    with pytest.raises(ValueNotStorable) as info:
        dumps_value(value, path=path)
    return info.value


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize(
    "value",
    [
        None,
        True,
        False,
        0,
        -1,
        2**63,
        -(2**63),
        2**64 - 1,
        1.5,
        -0.0,
        1e300,
        "",
        "héllo ☃ \u0000 \U0001f600",
        [],
        {},
        [1, "a", None, [2, [3]]],
        {"a": {"b": [1, {"c": None}]}, "": 0, "with space": 1},
    ],
)
def test_json_types_round_trip(value: Any) -> None:
    out = roundtrip(value)
    assert out == value
    assert type(out) is type(value)


@pytest.mark.parametrize(
    "value",
    [
        dt.datetime(2024, 1, 2, 3, 4, 5, 123456),
        dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.UTC),
        dt.datetime(2024, 1, 2, 3, 4, 5, 6, tzinfo=UTC2),
        dt.date(2024, 2, 29),
        dt.time(23, 59, 59, 999999),
        dt.time(3, 4, tzinfo=UTC2),
        Decimal("1.10"),
        Decimal("-0"),
        Decimal("1E+3"),
        Decimal("3.141592653589793238462643383279"),
        b"",
        bytes(range(256)),
        {1, 2, 3},
        set(),
        frozenset({"a", "b"}),
        frozenset(),
    ],
)
def test_tagged_types_round_trip(value: Any) -> None:
    out = roundtrip(value)
    assert out == value
    assert type(out) is type(value)
    if isinstance(value, Decimal):
        assert str(out) == str(value)  # precision and exponent kept
    if isinstance(value, dt.datetime | dt.time):
        assert out.tzinfo == value.tzinfo
        assert out.utcoffset() == value.utcoffset()


def test_aware_and_naive_datetimes_stay_apart() -> None:
    naive = dt.datetime(2024, 1, 2, 3, 4, 5)
    aware = naive.replace(tzinfo=dt.UTC)
    out = roundtrip({"naive": naive, "aware": aware})
    assert out["naive"].tzinfo is None
    assert out["aware"].tzinfo is not None
    assert out == {"naive": naive, "aware": aware}


def test_datetime_is_not_taken_for_a_date() -> None:
    out = roundtrip([dt.datetime(2024, 1, 2), dt.date(2024, 1, 2)])
    assert [type(x) for x in out] == [dt.datetime, dt.date]


def test_uuid_is_stored_as_its_string_form_as_documented() -> None:
    value = uuid.UUID("12345678-1234-5678-1234-567812345678")
    out = roundtrip({"id": value})
    assert out == {"id": str(value)}


@pytest.mark.parametrize("value", [bytearray(b"ab\x00"), memoryview(b"ab\x00")])
def test_bytes_like_come_back_as_bytes(value: Any) -> None:
    out = roundtrip(value)
    assert out == b"ab\x00"
    assert type(out) is bytes


def test_tuple_comes_back_as_list() -> None:
    assert roundtrip((1, (2, 3), "x")) == [1, [2, 3], "x"]
    assert roundtrip({"t": ()}) == {"t": []}


def test_nested_mix_round_trips() -> None:
    value = {
        "report": {
            "rows": [
                {"when": dt.datetime(2024, 5, 1, 12, tzinfo=dt.UTC), "amount": Decimal("9.99")},
                {"when": dt.date(2024, 5, 2), "blob": b"\x00\x01", "tags": {"x", "y"}},
            ],
            "seen": frozenset({dt.date(2024, 1, 1), dt.date(2024, 1, 2)}),
            "at": dt.time(8, 30),
            "meta": [None, True, 1, 2.5, "s"],
        }
    }
    assert roundtrip(value) == value


def test_set_items_are_sorted_when_possible() -> None:
    assert dumps_value({3, 1, 2}) == b'{"$blokrun":"set","v":[1,2,3]}'
    assert roundtrip({1, "a"}) == {1, "a"}  # unsortable mix is still stored


def test_set_of_tuples_round_trips() -> None:
    value = {"pairs": {(1, 2), (3, 4)}}
    assert roundtrip(value) == value


@pytest.mark.parametrize(
    "value",
    [
        {"$blokrun": "set", "v": [1], "extra": 1},
        {"$blokrun": "set"},
        {"$blokrun": "set", "value": [1]},
        {"$blokrun": "no-such-type", "v": 1},
        {"$blokrun": None, "v": 1},
        {"$blokrun": 5, "v": 1},
        {"$blokrun": ["set"], "v": 1, "w": 2},
    ],
)
def test_tag_lookalike_dicts_stay_dicts(value: dict[str, Any]) -> None:
    out = roundtrip({"x": value})
    assert out == {"x": value}
    assert isinstance(out["x"], dict)


@pytest.mark.parametrize("tag", [["set"], {"a": 1}])
def test_unhashable_tag_value_stays_a_dict(tag: Any) -> None:
    value = {"x": {"$blokrun": tag, "v": 1}}
    assert roundtrip(value) == value


@pytest.mark.parametrize(
    "value", [{"$blokrun": "set", "v": [1]}, {"$blokrun": "date", "v": "tomorrow"}]
)
def test_exact_tag_shaped_user_dict_round_trips(value: dict[str, Any]) -> None:
    assert roundtrip({"x": value}) == {"x": value}


def test_str_and_int_subclasses_are_stored_as_plain_values() -> None:
    import enum

    class Colour(enum.StrEnum):
        RED = "red"

    class Size(enum.IntEnum):
        BIG = 3

    assert roundtrip({"c": Colour.RED, "s": Size.BIG}) == {"c": "red", "s": 3}


def test_loads_value_without_tags() -> None:
    assert loads_value(b'{"a": [1, 2]}') == {"a": [1, 2]}


# --------------------------------------------------------------------------- unstorable values


class Opaque:
    pass


def test_object_names_path_and_type() -> None:
    value = {"report": {"rows": [{}, {}, {}, {"when": Opaque()}]}}
    err = not_storable(value["report"], path="vars.report")
    assert err.path == "vars.report.rows[3].when"
    assert err.type_name == "Opaque"
    assert str(err).startswith("vars.report.rows[3].when: ")
    assert "(type Opaque)" in str(err)
    assert "expected JSON types" in str(err)


def test_default_path_is_vars() -> None:
    err = not_storable({"report": {"rows": [0, 1, 2, {"when": object()}]}})
    assert err.path == "vars.report.rows[3].when"
    assert err.type_name == "object"


@pytest.mark.parametrize(
    ("value", "path", "type_name"),
    [
        (dt.timedelta(seconds=1), "vars", "timedelta"),
        ({"f": lambda: None}, "vars.f", "function"),
        ({"a b": {"c": Opaque()}}, "vars['a b'].c", "Opaque"),
        ([1, [2, {3j}]], "vars[1][1][0]", "complex"),
        ({"s": {Opaque()}}, "vars.s[0]", "Opaque"),
        ((0, Opaque()), "vars[1]", "Opaque"),
    ],
)
def test_unstorable_paths(value: Any, path: str, type_name: str) -> None:
    err = not_storable(value)
    assert (err.path, err.type_name) == (path, type_name)
    assert str(err).startswith(f"{path}: ")


@pytest.mark.parametrize(("key", "type_name"), [(1, "int"), (None, "NoneType"), ((1,), "tuple")])
def test_non_str_dict_key(key: Any, type_name: str) -> None:
    err = not_storable({"report": {key: "x"}})
    assert err.path == "vars.report"
    assert err.type_name == type_name
    assert f"dict key {key!r} is not a string" in str(err)


def test_circular_list() -> None:
    rows: list[Any] = [1]
    rows.append(rows)
    err = not_storable({"report": {"rows": rows}})
    assert err.path == "vars.report.rows[1]"
    assert err.type_name == "list"
    assert "circular reference" in str(err)


def test_circular_dict() -> None:
    node: dict[str, Any] = {}
    node["self"] = node
    err = not_storable({"tree": node})
    assert err.path == "vars.tree.self"
    assert err.type_name == "dict"
    assert "circular reference" in str(err)


def test_shared_but_not_circular_is_fine() -> None:
    shared = [1, 2]
    assert roundtrip({"a": shared, "b": shared}) == {"a": [1, 2], "b": [1, 2]}
    assert find_unstorable({"a": shared, "b": [shared, shared]}) is None


def test_int_too_large() -> None:
    err = not_storable({"report": {"rows": [0, 1, 2, {"n": 2**64}]}})
    assert err.path == "vars.report.rows[3].n"
    assert err.type_name == "int"
    assert "storable range" in str(err)


def test_negative_int_too_large_names_its_path() -> None:
    err = not_storable({"report": {"n": -(2**63) - 1}})
    assert err.path == "vars.report.n"
    assert err.type_name == "int"


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_float_is_not_storable(bad: float) -> None:
    err = not_storable({"report": {"rows": [0, 1, 2, {"when": bad}]}})
    assert err.path == "vars.report.rows[3].when"
    assert err.type_name == "float"


def test_find_unstorable_reports_nan() -> None:
    err = find_unstorable({"report": {"rows": [0, 1, 2, {"when": math.nan}]}})
    assert err is not None
    assert err.path == "vars.report.rows[3].when"
    assert err.type_name == "float"
    assert "NaN" in str(err)


def test_find_unstorable_reports_inf() -> None:
    err = find_unstorable({"x": math.inf})
    assert err is not None
    assert err.path == "vars.x"


def test_find_unstorable_returns_none_for_storable() -> None:
    value = {"a": [1, dt.date(2024, 1, 1), {Decimal(1)}, b"x", (1, 2)], "b": None}
    assert find_unstorable(value) is None
    assert find_unstorable(value, path="ctx") is None


def test_find_unstorable_custom_root() -> None:
    err = find_unstorable([Opaque()], path="vars.load")
    assert err is not None
    assert err.path == "vars.load[0]"


def test_value_not_storable_is_a_blokrun_error() -> None:
    assert issubclass(ValueNotStorable, BlokrunError)


# --------------------------------------------------------------------------- envelope


@pytest.mark.parametrize("kind", list(Kind))
def test_every_kind_round_trips(kind: Kind) -> None:
    got_kind, payload = decode(encode(kind, b"[]"))
    assert got_kind is kind
    assert payload == b"[]"


def test_magic_is_neither_json_nor_utf8() -> None:
    with pytest.raises(UnicodeDecodeError):
        MAGIC.decode("utf-8")


def test_flipped_payload_byte_fails_checksum() -> None:
    raw = bytearray(encode(Kind.CHECKPOINT, dumps_value({"a": 1, "b": "hello"})))
    raw[-3] ^= 0x01
    with pytest.raises(RecordError) as info:
        decode(bytes(raw), datasource="cache", key="r1-load")
    assert "checksum mismatch" in str(info.value)
    assert "datasource 'cache'" in str(info.value)
    assert "key 'r1-load'" in str(info.value)
    assert (info.value.datasource, info.value.key) == ("cache", "r1-load")


def test_flipped_crc_byte_fails_checksum() -> None:
    raw = bytearray(encode(Kind.VALUE, b"{}"))
    raw[7] ^= 0xFF
    with pytest.raises(RecordError, match="checksum mismatch"):
        decode(bytes(raw))


def test_truncated_payload() -> None:
    raw = encode(Kind.CHECKPOINT, dumps_value({"a": list(range(20))}))
    with pytest.raises(RecordError, match="corrupt or truncated"):
        decode(raw[:-5])


@pytest.mark.parametrize("length", [0, 1, 3, 9])
def test_truncated_header(length: int) -> None:
    raw = encode(Kind.CHECKPOINT, b"{}")[:length]
    with pytest.raises(RecordError, match="not a blokrun record"):
        decode(raw, datasource="d", key="k")


@pytest.mark.parametrize("magic", [b"\xb1BX", b'{"a', b"\x00\x00\x00"])
def test_bad_magic(magic: bytes) -> None:
    with pytest.raises(RecordError) as info:
        decode(raw_record(b"{}", magic=magic), datasource="d", key="k")
    assert not isinstance(info.value, FormatVersionError)
    assert "not a blokrun record (bad magic" in str(info.value)


def test_newer_format_version() -> None:
    raw = raw_record(b"{}", version=FORMAT_VERSION + 1)
    with pytest.raises(FormatVersionError) as info:
        decode(raw, datasource="archive", key="r1-load")
    message = str(info.value)
    assert f"version {FORMAT_VERSION + 1}" in message
    assert "upgrade blokrun" in message
    assert "datasource 'archive'" in message
    assert "key 'r1-load'" in message
    assert isinstance(info.value, RecordError)
    assert isinstance(info.value, DatasourceError)


def test_newer_version_is_reported_before_checksum() -> None:
    raw = raw_record(b"future payload", version=200, flags=0x1F, crc=0)
    with pytest.raises(FormatVersionError, match="upgrade blokrun"):
        decode(raw)


@pytest.mark.parametrize("kind", [0, 9, 255])
def test_unknown_kind(kind: int) -> None:
    with pytest.raises(RecordError, match=f"unknown record kind {kind}") as info:
        decode(raw_record(b"{}", kind=kind), datasource="d", key="k")
    assert "key 'k'" in str(info.value)


# --------------------------------------------------------------------------- decode_foreign


def test_foreign_blokrun_record() -> None:
    value = {"when": dt.datetime(2024, 1, 1, tzinfo=dt.UTC), "tags": {"a"}}
    raw = encode(Kind.VALUE, dumps_value(value), bind="k")
    assert decode_foreign(raw, datasource="cache", key="k", envelope=DEFAULT_ENVELOPE) == value


def test_foreign_corrupt_blokrun_record() -> None:
    raw = bytearray(encode(Kind.VALUE, dumps_value({"a": 1}), bind="k"))
    raw[-2] ^= 0x10
    with pytest.raises(RecordError, match="checksum") as info:
        decode_foreign(bytes(raw), datasource="cache", key="k", envelope=DEFAULT_ENVELOPE)
    assert "datasource 'cache'" in str(info.value)


def test_foreign_blokrun_record_with_bad_payload() -> None:
    with pytest.raises(RecordError, match="payload is not valid JSON") as info:
        decode_foreign(
            encode(Kind.VALUE, b'{"a":', bind="k"),
            datasource="cache",
            key="k",
            envelope=DEFAULT_ENVELOPE,
        )
    assert "key 'k'" in str(info.value)


def test_foreign_newer_blokrun_record() -> None:
    raw = raw_record(b"{}", version=FORMAT_VERSION + 1)
    with pytest.raises(FormatVersionError, match="upgrade blokrun"):
        decode_foreign(raw, datasource="cache", key="k", envelope=DEFAULT_ENVELOPE)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b'{"a": [1, 2], "b": null}', {"a": [1, 2], "b": None}),
        (b"12", 12),
        (b'"quoted"', "quoted"),
        (b'{"d": {"$blokrun": "date", "v": "2024-01-02"}}', {"d": dt.date(2024, 1, 2)}),
    ],
)
def test_foreign_plain_json(raw: bytes, expected: Any) -> None:
    assert decode_foreign(raw, datasource="cache", key="k", envelope=DEFAULT_ENVELOPE) == expected


@pytest.mark.parametrize("raw", ["hello world", "héllo ☃", "{not json", ""])
def test_foreign_utf8_text(raw: str) -> None:
    out = decode_foreign(raw.encode(), datasource="cache", key="k", envelope=DEFAULT_ENVELOPE)
    assert out == raw
    assert type(out) is str


@pytest.mark.parametrize("raw", [b"\xff\xfe\x00\x01", b"\x89PNG\r\n\x1a\n\x00", b"\xb1B"])
def test_foreign_binary(raw: bytes) -> None:
    out = decode_foreign(raw, datasource="cache", key="k", envelope=DEFAULT_ENVELOPE)
    assert out == raw
    assert type(out) is bytes


# --------------------------------------------------------------------------- records


def head(**extra: Any) -> HeadRecord:
    fields: dict[str, Any] = {
        "request_id": "r1",
        "workflow": "wf",
        "version": "1",
        "definition_hash": "h" * 64,
        "status": "running",
        "started_at": 1.0,
        "updated_at": 2.0,
    }
    return HeadRecord(**(fields | extra))


def test_records_round_trip() -> None:
    records = [
        head(status="failed", error="boom", failed_step="load", seq=3),
        RunRecord(
            request_id="r1",
            workflow="wf",
            version="1",
            definition_hash="h",
            inputs={"day": dt.date(2024, 1, 2), "n": Decimal("1.5")},
            started_at=1.0,
            source="flow.json",
        ),
        DefinitionRecord(
            definition_hash=definition_hash({"name": "wf", "steps": []}),
            document={"name": "wf", "steps": []},
        ),
        CheckpointRecord(
            request_id="r1",
            workflow="wf",
            version="1",
            definition_hash="h",
            step="load",
            seq=1,
            done=["load"],
            vars={"load": {"rows": [1], "at": dt.datetime(2024, 1, 1, tzinfo=dt.UTC)}},
            started_at=1.0,
            time=2.0,
            duration=0.5,
        ),
    ]
    for record in records:
        assert decode_record(encode_record(record, bind="k"), type(record), bind="k") == record


_TEXT = st.text(max_size=20)
_FLOAT = st.floats(allow_nan=False, allow_infinity=False)


@settings(max_examples=200, deadline=None)
@given(
    error=st.none() | _TEXT,
    started=_FLOAT,
    updated=_FLOAT,
    seq=st.integers(0, 2**53),
    tags=st.dictionaries(_TEXT, _TEXT, max_size=3),
    context=st.dictionaries(_TEXT, _TEXT, max_size=3),
    step=st.none() | _TEXT,
)
def test_plain_records_are_stored_as_their_fields_under_stored_names(
    error: str | None,
    started: float,
    updated: float,
    seq: int,
    tags: dict[str, str],
    context: dict[str, str],
    step: str | None,
) -> None:
    """encode_record writes head, alias and timer records with msgspec (fast): the JSON
    must be what the stored field names and values say (as asdict + renames + orjson wrote
    it before), and decode back to the record."""
    from blokrun.persistence.codec import Kind
    from blokrun.persistence.records import AliasRecord, _as_stored

    rec = head(error=error, started_at=started, updated_at=updated, seq=seq, tags=tags,
               context=context, last_done=step)  # fmt: skip
    alias = AliasRecord(request_id="r1", incarnation=1, seq=seq, step=step or "s", key="k")
    for record in (rec, alias):
        raw = encode_record(record, bind="k")
        kind, payload = DEFAULT_ENVELOPE.open(raw, bind="k")
        assert kind in (Kind.HEAD, Kind.ALIAS)
        assert orjson.loads(payload) == orjson.loads(orjson.dumps(_as_stored(record)))
        assert decode_record(raw, type(record), bind="k") == record


def test_encode_checkpoint_matches_encode_record() -> None:
    fields: dict[str, Any] = {
        "request_id": "r1",
        "workflow": "wf",
        "version": "1",
        "definition_hash": "h",
        "step": "load",
        "seq": 4,
        "done": ["a", "load"],
        "vars": {"x": {1, 2}},
        "started_at": 1.0,
        "time": 2.0,
        "duration": 0.25,
        "attempt": 2,
        "base": 4,
        "key": "k",  # the record is sealed for the key it names
    }
    raw = encode_checkpoint(**fields)
    assert raw == encode_record(CheckpointRecord(**fields), bind="k")
    assert decode_record(raw, CheckpointRecord, bind="k").vars == {"x": {1, 2}}


def test_decode_record_wrong_expected_type() -> None:
    with pytest.raises(RecordError) as info:
        decode_record(
            encode_record(head(), bind="r1-load"),
            CheckpointRecord,
            datasource="d",
            key="r1-load",
            bind="r1-load",
        )
    message = str(info.value)
    assert "expected a CheckpointRecord, found a head record" in message
    assert "key 'r1-load'" in message


def test_decode_record_of_a_value_record() -> None:
    with pytest.raises(RecordError, match="expected a HeadRecord, found a value record"):
        decode_record(encode(Kind.VALUE, b"{}", bind="k"), HeadRecord, bind="k")


@pytest.mark.parametrize(
    ("payload", "names"),
    [
        (b'{"request_id": "r1"}', "workflow"),
        (
            b'{"request_id": "r1", "workflow": "w", "version": "1", "definition_hash": "h",'
            b' "status": "weird", "started_at": 1, "updated_at": 2}',
            "$.status",
        ),
        (
            b'{"request_id": 5, "workflow": "w", "version": "1", "definition_hash": "h",'
            b' "status": "running", "started_at": 1, "updated_at": 2}',
            "$.request_id",
        ),
        (b"[1, 2]", "expected `object`"),
        (b'{"a":', "unexpected end of data"),
    ],
)
def test_decode_record_invalid_payload(payload: bytes, names: str) -> None:
    with pytest.raises(RecordError) as info:
        decode_record(
            encode(Kind.HEAD, payload, bind="_head.r1"),
            HeadRecord,
            datasource="d",
            key="_head.r1",
            bind="_head.r1",
        )
    message = str(info.value)
    assert "stored HeadRecord is invalid" in message
    assert names.lower() in message.lower()
    assert "key '_head.r1'" in message


def test_decode_record_bad_tag_value() -> None:
    payload = (
        b'{"request_id": "r1", "workflow": "w", "version": "1", "definition_hash": "h",'
        b' "inputs": {"d": {"$blokrun": "date", "v": "not a date"}}, "started_at": 1}'
    )
    with pytest.raises(RecordError, match="stored RunRecord is invalid"):
        decode_record(encode(Kind.RUN, payload, bind="k"), RunRecord, bind="k")


@pytest.mark.parametrize(
    "tag", [b'{"$blokrun": "set", "v": 5}', b'{"$blokrun": "decimal", "v": "nope"}']
)
def test_decode_record_malformed_tag_is_a_record_error(tag: bytes) -> None:
    payload = (
        b'{"request_id": "r1", "workflow": "w", "version": "1", "definition_hash": "h",'
        b' "inputs": {"x": ' + tag + b'}, "started_at": 1}'
    )
    with pytest.raises(RecordError, match="stored RunRecord is invalid"):
        decode_record(encode(Kind.RUN, payload, bind="k"), RunRecord, bind="k")


def test_decode_record_corrupt() -> None:
    raw = bytearray(encode_record(head(), bind="k"))
    raw[12] ^= 0x01
    with pytest.raises(RecordError, match="checksum mismatch"):
        decode_record(bytes(raw), HeadRecord, bind="k")


# --------------------------------------------------------------------------- request ids


def test_new_request_ids_are_valid_and_unique() -> None:
    ids = {new_request_id() for _ in range(200)}
    assert len(ids) == 200
    for rid in ids:
        assert validate_request_id(rid) == rid
        assert len(rid) == 22


@pytest.mark.parametrize("rid", ["", "_blokrun.head.x", "-x", "a b", "a/b", "x" * 201, 5, None])
def test_invalid_request_ids(rid: Any) -> None:
    with pytest.raises(ValueError, match="invalid request id"):
        validate_request_id(rid)


def test_request_id_with_trailing_newline_is_invalid() -> None:
    with pytest.raises(ValueError, match="invalid request id"):
        validate_request_id("abc\n")
