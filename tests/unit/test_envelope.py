"""The sealed envelope (format v2): every record opens back to its payload; corruption,
tampering, wrong or missing keys and foreign bytes are a RecordError naming the datasource and
key -- never a traceback, never key material.

``python -m tests.unit.test_envelope`` measures seal/open of a 10 MB JSON payload for every
compression with and without encryption; ``--levels`` compares compression levels.
"""

from __future__ import annotations

import base64
import hashlib
import os
import random
import re
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from blokrun.config import envelope_from_env
from blokrun.errors import ConfigError, FormatVersionError, RecordError
from blokrun.persistence.codec import MAGIC, Kind
from blokrun.persistence.envelope import (
    COMPRESSION_ENV,
    ENCRYPTION_KEY_ENV,
    ENCRYPTION_OLD_KEYS_ENV,
    FORMAT_VERSION,
    THRESHOLD_ENV,
    Envelope,
)

V1 = struct.Struct(">3sBBBI")
V2 = struct.Struct(">3sBBBB")
KEY1 = bytes(range(32))
KEY2 = bytes(range(100, 132))
KEY3 = hashlib.sha256(b"three").digest()
COMPRESSIONS = ["none", "zlib", "zstd"]
COMPRESSED_FLAG = {"none": 0, "zlib": 1 << 2, "zstd": 2 << 2}
ENCRYPTED = 1 << 4


def b64(key: bytes) -> str:
    return base64.b64encode(key).decode("ascii")


def envelope(compression: Any = "zstd", *, encrypt: bool = False, **kw: Any) -> Envelope:
    if encrypt:
        kw.setdefault("keys", {"k1": KEY1, "k2": KEY2})
        kw.setdefault("active_key", "k1")
    return Envelope(compression=compression, **kw)


def compressible(size: int = 20_000) -> bytes:
    rows = [{"id": i, "name": f"user-{i % 50}", "ok": i % 3 == 0} for i in range(size // 30)]
    return orjson.dumps(rows)[:size]


def v1_record(kind: int, payload: bytes, flags: int = 0, version: int = 1) -> bytes:
    """Exactly what codec.encode wrote before format v2."""
    return V1.pack(MAGIC, version, flags, kind, zlib.crc32(payload)) + payload


def parts(raw: bytes) -> tuple[bytes, int, bytes]:
    """(header before the crc, crc, stored payload) of a v2 record."""
    end = V2.size + raw[6]
    return raw[:end], struct.unpack_from(">I", raw, end)[0], raw[end + 4 :]


def rebuild(header: bytes, stored: bytes) -> bytes:
    """A v2 record with a correct crc (what someone tampering with it would write)."""
    return header + struct.pack(">I", zlib.crc32(stored)) + stored


# --------------------------------------------------------------------------- binding


@pytest.mark.parametrize("encrypt", [False, True])
def test_a_record_opens_only_under_the_key_it_was_sealed_for(encrypt: bool) -> None:
    env = envelope("zstd", encrypt=encrypt)
    raw = env.seal(Kind.CHECKPOINT, compressible(), bind="_blokrun.ckpt.job/1/3")
    assert env.open(raw, bind="_blokrun.ckpt.job/1/3")[1] == compressible()
    for elsewhere in ("_blokrun.ckpt.job/1/4", "_blokrun.ckpt.job-2/1/3", "job-2-c", ""):
        err = open_error_bound(env, raw, elsewhere)
        assert "written under another key" in str(err), (elsewhere, str(err))
        if encrypt:  # a forger who recomputes the crc for the new key: the AEAD refuses
            head, _, stored = parts(raw)
            forged = head + struct.pack(">I", zlib.crc32(stored, zlib.crc32(elsewhere.encode())))
            err = open_error_bound(env, forged + stored, elsewhere)
            assert "authentication failed" in str(err)


@pytest.mark.parametrize("encrypt", [False, True])
def test_a_bound_record_cannot_be_downgraded_to_an_unbound_format(encrypt: bool) -> None:
    env = envelope("none", encrypt=encrypt)
    raw = bytearray(env.seal(Kind.CHECKPOINT, b'{"a":1}', bind="k/1/1"))
    raw[3] = 2  # a format without binding: refused where a binding is expected
    err = open_error_bound(env, bytes(raw), "k/1/1")
    assert "not bound" in str(err) or "authentication failed" in str(err)


def open_error_bound(env: Envelope, raw: bytes, bind: str) -> RecordError:
    with pytest.raises(RecordError) as info:
        env.open(raw, datasource="ds", key=bind or "rec", bind=bind)
    return info.value


def flip(raw: bytes, index: int, mask: int = 0x01) -> bytes:
    return raw[:index] + bytes([raw[index] ^ mask]) + raw[index + 1 :]


def open_error(env: Envelope, raw: bytes) -> RecordError:
    with pytest.raises(RecordError) as info:
        env.open(raw, datasource="ds", key="rec")
    assert info.value.datasource == "ds"
    assert info.value.key == "rec"
    return info.value


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("encrypt", [False, True], ids=["plain", "aes"])
@pytest.mark.parametrize("compression", COMPRESSIONS)
@pytest.mark.parametrize("kind", list(Kind), ids=lambda k: k.name.lower())
def test_round_trip_every_kind_compression_and_encryption(
    kind: Kind, compression: str, encrypt: bool
) -> None:
    env = envelope(compression, encrypt=encrypt)
    for payload in (b"", b'{"a":1}', compressible(), os.urandom(6000)):
        raw = env.seal(kind, payload)
        assert raw[:3] == MAGIC
        assert raw[3] == FORMAT_VERSION == 3
        assert raw[5] == kind
        assert bool(raw[4] & ENCRYPTED) is encrypt
        assert env.open(raw) == (kind, payload)
        assert type(env.open(raw)[1]) is bytes


@pytest.mark.parametrize("compression", ["zlib", "zstd"])
def test_compresses_from_the_threshold_up(compression: str) -> None:
    env = envelope(compression, threshold=1000)
    below, at = compressible(999), compressible(1000)
    raw_below, raw_at = env.seal(Kind.VALUE, below), env.seal(Kind.VALUE, at)
    assert raw_below[4] == 0 and raw_below.endswith(below)
    assert raw_at[4] == COMPRESSED_FLAG[compression]
    assert len(raw_at) < len(at)
    assert env.open(raw_below)[1] == below
    assert env.open(raw_at)[1] == at


@pytest.mark.parametrize("encrypt", [False, True], ids=["plain", "aes"])
@pytest.mark.parametrize("compression", ["zlib", "zstd"])
def test_incompressible_data_stays_uncompressed(compression: str, encrypt: bool) -> None:
    env = envelope(compression, threshold=0, encrypt=encrypt)
    payload = os.urandom(50_000)
    raw = env.seal(Kind.CHECKPOINT, payload)
    assert raw[4] & COMPRESSED_FLAG["zstd"] | raw[4] & COMPRESSED_FLAG["zlib"] == 0
    assert env.open(raw) == (Kind.CHECKPOINT, payload)


def test_compression_none_never_compresses() -> None:
    env = envelope("none", threshold=0)
    payload = compressible()
    raw = env.seal(Kind.RUN, payload)
    assert raw[4] == 0 and raw.endswith(payload)


def test_any_envelope_opens_any_compression_and_plain_records() -> None:
    payload = compressible()
    records = [envelope(c).seal(Kind.HEAD, payload) for c in COMPRESSIONS]
    for reader in (envelope("none"), envelope("zlib"), envelope("zstd", encrypt=True)):
        for raw in records:
            assert reader.open(raw) == (Kind.HEAD, payload)


def test_unencrypted_layout_matches_the_documented_format() -> None:
    payload = compressible(100)
    raw = envelope("none").seal(Kind.DEFINITION, payload)
    assert raw == V2.pack(MAGIC, 3, 0, 4, 0) + struct.pack(">I", zlib.crc32(payload)) + payload


def test_encrypted_layout_matches_the_documented_format() -> None:
    raw = envelope("none", encrypt=True).seal(Kind.HEAD, b"hello")
    header, crc, stored = parts(raw)
    assert header == V2.pack(MAGIC, 3, ENCRYPTED, 2, 2) + b"k1"
    assert crc == zlib.crc32(stored)
    assert len(stored) == 12 + 5 + 16  # nonce + ciphertext + tag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    assert AESGCM(KEY1).decrypt(stored[:12], stored[12:], header) == b"hello"


def test_nonce_differs_between_two_seals_of_the_same_payload() -> None:
    env = envelope(encrypt=True)
    a, b = env.seal(Kind.VALUE, b"same"), env.seal(Kind.VALUE, b"same")
    assert parts(a)[2][:12] != parts(b)[2][:12]
    assert a != b
    assert env.open(a) == env.open(b) == (Kind.VALUE, b"same")


# --------------------------------------------------------------------------- format v1


@pytest.mark.parametrize("kind", list(Kind), ids=lambda k: k.name.lower())
def test_v1_records_still_open(kind: Kind) -> None:
    payload = b'{"vars":{"x":1}}'
    for env in (envelope("none"), envelope("zstd", encrypt=True)):
        assert env.open(v1_record(kind, payload)) == (kind, payload)
    assert envelope().open(v1_record(kind, b"")) == (kind, b"")


def test_damaged_v1_records_are_refused() -> None:
    env = envelope()
    good = v1_record(Kind.RUN, b'{"a":1}')
    assert "checksum mismatch" in str(open_error(env, flip(good, len(good) - 1)))
    assert "flags" in str(open_error(env, v1_record(Kind.RUN, b"{}", flags=4)))
    assert "kind" in str(open_error(env, v1_record(99, b"{}")))
    for cut in range(len(good) - 1):
        open_error(env, good[:cut])


# --------------------------------------------------------------------------- corruption


@pytest.mark.parametrize("encrypt", [False, True], ids=["plain", "aes"])
@pytest.mark.parametrize("compression", COMPRESSIONS)
def test_flipped_byte_anywhere_in_the_payload_is_a_checksum_error(
    compression: str, encrypt: bool
) -> None:
    env = envelope(compression, threshold=0, encrypt=encrypt)
    raw = env.seal(Kind.CHECKPOINT, compressible(300))
    header, _, stored = parts(raw)
    for index in range(len(header), len(raw)):  # crc and stored payload
        err = open_error(env, flip(raw, index, 0x40))
        assert "checksum mismatch: the record is corrupt or truncated" in str(err)
    assert len(stored) > 20


@pytest.mark.parametrize("encrypt", [False, True], ids=["plain", "aes"])
@pytest.mark.parametrize("compression", COMPRESSIONS)
def test_truncated_records_are_refused(compression: str, encrypt: bool) -> None:
    env = envelope(compression, threshold=0, encrypt=encrypt)
    raw = env.seal(Kind.HEAD, compressible(500))
    for cut in [*range(0, 16), len(raw) // 2, len(raw) - 17, len(raw) - 1]:
        open_error(env, raw[:cut])


def test_garbage_is_not_a_blokrun_record() -> None:
    env = envelope()
    for raw in (b"", b"{}", b'{"a": 1, "b": 2}', b"\xb1B", b"\xb1BX" + bytes(20)):
        assert "not a blokrun record" in str(open_error(env, raw))


def test_newer_format_version_says_to_upgrade() -> None:
    raw = bytearray(envelope().seal(Kind.HEAD, b"{}"))
    raw[3] = FORMAT_VERSION + 1
    with pytest.raises(FormatVersionError) as info:
        envelope().open(bytes(raw), datasource="ds", key="rec")
    assert "upgrade blokrun" in str(info.value)
    assert (info.value.datasource, info.value.key) == ("ds", "rec")


def test_version_zero_and_unknown_flags_are_refused() -> None:
    env = envelope()
    raw = env.seal(Kind.HEAD, b"{}")
    assert "version 0" in str(open_error(env, raw[:3] + b"\x00" + raw[4:]))
    for bad_flags in (0x20, 0x40, 0x80, 0x01, 0x02, 0b1100):
        header, _, stored = parts(raw)
        tampered = header[:4] + bytes([bad_flags]) + header[5:]
        open_error(env, rebuild(tampered, stored))


def test_key_id_without_encryption_flag_is_refused() -> None:
    env = envelope("none", encrypt=True)
    header, _, stored = parts(env.seal(Kind.HEAD, b"{}"))
    plain = header[:4] + bytes([header[4] & ~ENCRYPTED]) + header[5:]
    open_error(env, rebuild(plain, stored))
    no_id = V2.pack(MAGIC, 3, ENCRYPTED, int(Kind.HEAD), 0)
    open_error(env, rebuild(no_id, stored))


@pytest.mark.parametrize("compression", ["zlib", "zstd"])
def test_undecompressable_payload_is_a_record_error(compression: str) -> None:
    env = envelope(compression)
    header = V2.pack(MAGIC, 3, COMPRESSED_FLAG[compression], int(Kind.VALUE), 0)
    good = env.seal(Kind.VALUE, compressible())
    stored = parts(good)[2]
    for bad in (b"", b"garbage", stored[:-5], stored + b"trailing", os.urandom(100)):
        assert "decompression failed" in str(open_error(env, rebuild(header, bad)))


def test_zstd_frame_declaring_an_impossible_size_is_refused_without_allocating() -> None:
    import zstandard

    frame = zstandard.ZstdCompressor(level=1).compress(b"hello world" * 10)
    # Frame header descriptor: single segment, 8-byte content size of 2**60 bytes.
    forged = frame[:4] + bytes([0b1110_0000]) + struct.pack("<Q", 2**60) + frame[6:]
    header = V2.pack(MAGIC, 3, COMPRESSED_FLAG["zstd"], int(Kind.VALUE), 0)
    assert "decompression failed" in str(open_error(envelope(), rebuild(header, forged)))


# --------------------------------------------------------------------------- tampering


@pytest.mark.parametrize("compression", COMPRESSIONS)
def test_tampered_payload_with_recomputed_crc_fails_authentication(compression: str) -> None:
    env = envelope(compression, threshold=0, encrypt=True)
    raw = env.seal(Kind.CHECKPOINT, compressible(400))
    header, _, stored = parts(raw)
    for index in range(len(stored)):  # nonce, ciphertext and tag
        err = open_error(env, rebuild(header, flip(stored, index)))
        assert "authentication failed: the record was tampered with or the key is wrong" in str(err)


def test_tampered_header_of_an_encrypted_record_fails() -> None:
    env = envelope("zstd", threshold=0, encrypt=True)
    raw = env.seal(Kind.CHECKPOINT, compressible(2000))
    header, _, stored = parts(raw)
    assert header[4] & COMPRESSED_FLAG["zstd"]
    auth = "authentication failed"

    other_kind = header[:5] + bytes([Kind.HEAD]) + header[6:]
    assert auth in str(open_error(env, rebuild(other_kind, stored)))
    bad_kind = header[:5] + bytes([77]) + header[6:]
    assert "kind" in str(open_error(env, rebuild(bad_kind, stored)))

    for flags in (ENCRYPTED, ENCRYPTED | COMPRESSED_FLAG["zlib"]):
        other_flags = header[:4] + bytes([flags]) + header[5:]
        assert auth in str(open_error(env, rebuild(other_flags, stored)))

    # Pointing the record at the other configured key: the key is wrong for it.
    other_key = header[:7] + b"k2"
    assert auth in str(open_error(env, rebuild(other_key, stored)))
    # ... at a key id that is not configured.
    unknown = header[:7] + b"zz"
    assert "'zz'" in str(open_error(env, rebuild(unknown, stored)))
    # ... at a key id that is not ASCII.
    weird = header[:7] + b"\xff\x00"
    assert "key id" in str(open_error(env, rebuild(weird, stored)))
    longer = V2.pack(MAGIC, 3, header[4], header[5], 3) + b"k1x"
    assert "'k1x'" in str(open_error(env, rebuild(longer, stored)))


# --------------------------------------------------------------------------- keys


def test_wrong_key_is_refused() -> None:
    raw = envelope(encrypt=True).seal(Kind.RUN, b'{"secret":"data"}')
    impostor = Envelope(keys={"k1": KEY3}, active_key="k1")
    err = open_error(impostor, raw)
    assert "authentication failed: the record was tampered with or the key is wrong" in str(err)


def test_key_rotation_old_records_open_new_records_use_the_active_key() -> None:
    old_env = envelope_from_env({ENCRYPTION_KEY_ENV: f"k1:{b64(KEY1)}"})
    old_raw = old_env.seal(Kind.CHECKPOINT, b'{"step":1}')
    rotated = envelope_from_env(
        {ENCRYPTION_KEY_ENV: f"k2:{b64(KEY2)}", ENCRYPTION_OLD_KEYS_ENV: f"k1:{b64(KEY1)}"}
    )
    assert rotated.open(old_raw) == (Kind.CHECKPOINT, b'{"step":1}')
    new_raw = rotated.seal(Kind.CHECKPOINT, b'{"step":2}')
    assert parts(new_raw)[0][7:] == b"k2"
    assert rotated.open(new_raw) == (Kind.CHECKPOINT, b'{"step":2}')
    # The old deployment cannot read records of the new key, and says which key is missing.
    err = open_error(old_env, new_raw)
    assert "'k2'" in str(err) and ENCRYPTION_OLD_KEYS_ENV in str(err)
    # Without the old key in OLD_KEYS the old record is refused the same way.
    err = open_error(envelope_from_env({ENCRYPTION_KEY_ENV: f"k2:{b64(KEY2)}"}), old_raw)
    assert "'k1'" in str(err) and ENCRYPTION_OLD_KEYS_ENV in str(err)


def test_old_keys_only_decrypt_and_seal_in_clear() -> None:
    encrypted = envelope(encrypt=True).seal(Kind.VALUE, b"1")
    env = envelope_from_env({ENCRYPTION_OLD_KEYS_ENV: f"k1:{b64(KEY1)}"})
    assert not env.encrypted
    assert env.open(encrypted) == (Kind.VALUE, b"1")
    assert env.seal(Kind.VALUE, b"1")[4] & ENCRYPTED == 0


def test_encrypted_record_with_no_key_configured_says_what_to_set() -> None:
    raw = envelope(encrypt=True).seal(Kind.HEAD, b"{}")
    err = open_error(envelope(), raw)
    assert "encrypted" in str(err)
    assert ENCRYPTION_KEY_ENV in str(err)
    assert "'k1'" in str(err)


def test_key_without_id_gets_the_sha256_prefix_as_id() -> None:
    env = envelope_from_env({ENCRYPTION_KEY_ENV: b64(KEY1)})
    kid = hashlib.sha256(KEY1).hexdigest()[:8]
    assert parts(env.seal(Kind.HEAD, b"{}"))[0][7:] == kid.encode()
    assert f"'{kid}'" in env.describe()


def test_url_safe_and_unpadded_base64_keys_are_accepted() -> None:
    key = bytes([0xFB, 0xFF] * 16)  # base64 with + and /
    url_safe = base64.urlsafe_b64encode(key).decode().rstrip("=")
    env = envelope_from_env({ENCRYPTION_KEY_ENV: f"k:{url_safe}"})
    raw = env.seal(Kind.HEAD, b"{}")
    assert Envelope(keys={"k": key}).open(raw) == (Kind.HEAD, b"{}")


def test_errors_carry_the_datasource_and_key() -> None:
    with pytest.raises(RecordError) as info:
        envelope().open(b"nope", datasource="cache", key="run-1-step")
    assert "datasource 'cache'" in str(info.value)
    assert "key 'run-1-step'" in str(info.value)


# --------------------------------------------------------------------------- environment


def test_from_env_defaults() -> None:
    env = envelope_from_env({})
    assert not env.encrypted
    assert env.describe() == "zstd>=4096B, not encrypted"
    assert envelope_from_env({COMPRESSION_ENV: "", THRESHOLD_ENV: ""}).describe() == (
        "zstd>=4096B, not encrypted"
    )


def test_from_env_reads_compression_and_threshold() -> None:
    env = envelope_from_env({COMPRESSION_ENV: " ZLIB ", THRESHOLD_ENV: "10"})
    assert env.describe() == "zlib>=10B, not encrypted"
    raw = env.seal(Kind.VALUE, b"a" * 100)
    assert env.seal(Kind.VALUE, b"a" * 9)[4] == 0
    assert raw[4] == COMPRESSED_FLAG["zlib"]
    assert envelope_from_env({COMPRESSION_ENV: "none"}).describe() == (
        "no compression, not encrypted"
    )


SECRET_KEY = b64(KEY3)
SHORT_KEY = b64(KEY3[:16])


@pytest.mark.parametrize(
    ("environ", "variable", "expected"),
    [
        ({ENCRYPTION_KEY_ENV: "k1:" + SECRET_KEY[:-3] + "!!="}, ENCRYPTION_KEY_ENV, "base64"),
        ({ENCRYPTION_KEY_ENV: SECRET_KEY[:-2] + "*"}, ENCRYPTION_KEY_ENV, "base64"),
        ({ENCRYPTION_KEY_ENV: "k1:" + SHORT_KEY}, ENCRYPTION_KEY_ENV, "16 bytes"),
        ({ENCRYPTION_KEY_ENV: b64(KEY3 + KEY3)}, ENCRYPTION_KEY_ENV, "64 bytes"),
        ({ENCRYPTION_KEY_ENV: "k1:"}, ENCRYPTION_KEY_ENV, "0 bytes"),
        ({ENCRYPTION_KEY_ENV: "bad id:" + SECRET_KEY}, ENCRYPTION_KEY_ENV, "key id"),
        ({ENCRYPTION_KEY_ENV: "x" * 65 + ":" + SECRET_KEY}, ENCRYPTION_KEY_ENV, "key id"),
        ({ENCRYPTION_KEY_ENV: ":" + SECRET_KEY}, ENCRYPTION_KEY_ENV, "key id"),
        ({ENCRYPTION_KEY_ENV: SECRET_KEY + ":k1"}, ENCRYPTION_KEY_ENV, "key id"),
        (
            {ENCRYPTION_KEY_ENV: f"k1:{b64(KEY1)}", ENCRYPTION_OLD_KEYS_ENV: f"k1:{SECRET_KEY}"},
            ENCRYPTION_OLD_KEYS_ENV,
            "'k1'",
        ),
        (
            {ENCRYPTION_OLD_KEYS_ENV: f"a:{b64(KEY1)}, a:{SECRET_KEY}"},
            ENCRYPTION_OLD_KEYS_ENV,
            "entry 2",
        ),
        (
            {ENCRYPTION_OLD_KEYS_ENV: f"{SECRET_KEY},{SECRET_KEY}"},
            ENCRYPTION_OLD_KEYS_ENV,
            "already used",
        ),
        (
            {ENCRYPTION_OLD_KEYS_ENV: f"a:{b64(KEY1)},b:{SECRET_KEY[:20]}"},
            ENCRYPTION_OLD_KEYS_ENV,
            "entry 2",
        ),
        ({ENCRYPTION_OLD_KEYS_ENV: f"a b:{SECRET_KEY}"}, ENCRYPTION_OLD_KEYS_ENV, "key id"),
        ({COMPRESSION_ENV: "lz4"}, COMPRESSION_ENV, "none, zlib or zstd"),
        ({THRESHOLD_ENV: "-1"}, THRESHOLD_ENV, ">= 0"),
        ({THRESHOLD_ENV: "4k"}, THRESHOLD_ENV, "whole number"),
        ({THRESHOLD_ENV: "1.5"}, THRESHOLD_ENV, "whole number"),
    ],
)
def test_env_errors_name_their_variable_and_never_the_key(
    environ: dict[str, str], variable: str, expected: str
) -> None:
    with pytest.raises(ConfigError) as info:
        envelope_from_env(environ)
    err = info.value
    message = str(err)
    assert err.variable == variable
    assert variable in message
    assert expected in message, message
    for secret in (SECRET_KEY, SECRET_KEY[:12], SHORT_KEY[:12], SECRET_KEY[-12:]):
        assert secret not in message
        assert secret not in repr(err)
    assert err.__cause__ is None
    assert err.__context__ is None or err.__suppress_context__


def test_constructor_validates_without_echoing_keys() -> None:
    with pytest.raises(ConfigError, match="32 bytes") as info:
        Envelope(keys={"k": KEY1[:31]})
    assert KEY1[:8].hex() not in str(info.value) and repr(KEY1[:8]) not in str(info.value)
    with pytest.raises(ConfigError, match="key id"):
        Envelope(keys={"bad id": KEY1})
    with pytest.raises(ConfigError, match="'k9'"):
        Envelope(keys={"k1": KEY1}, active_key="k9")
    with pytest.raises(ConfigError, match="'k9'"):
        Envelope(active_key="k9")
    with pytest.raises(ConfigError) as info:
        Envelope(compression="lz4")  # type: ignore[arg-type]
    assert info.value.variable == COMPRESSION_ENV
    with pytest.raises(ConfigError) as info:
        Envelope(threshold=-1)
    assert info.value.variable == THRESHOLD_ENV
    with pytest.raises(ConfigError, match="level"):
        Envelope(compression="zlib", level=10)
    with pytest.raises(ConfigError, match="level"):
        Envelope(compression="zstd", level=23)


def test_describe_and_repr_contain_no_key_material() -> None:
    env = envelope_from_env(
        {ENCRYPTION_KEY_ENV: f"k2:{b64(KEY2)}", ENCRYPTION_OLD_KEYS_ENV: f"k1:{b64(KEY1)}"}
    )
    assert env.describe() == "zstd>=4096B, aes-256-gcm key 'k2' (+1 old)"
    assert repr(env) == "Envelope(zstd>=4096B, aes-256-gcm key 'k2' (+1 old))"
    for text in (env.describe(), repr(env), str(env)):
        for key in (KEY1, KEY2):
            for form in (b64(key), key.hex(), repr(key), b64(key)[:10], key.hex()[:10]):
                assert form not in text
    assert Envelope(keys={"a": KEY1}, active_key="a").describe().endswith("key 'a'")
    assert "1 old key" in Envelope(keys={"a": KEY1}).describe()


def test_missing_cryptography_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    raw = envelope(encrypt=True).seal(Kind.HEAD, b"{}")
    monkeypatch.setitem(sys.modules, "cryptography.hazmat.primitives.ciphers.aead", None)
    with pytest.raises(ConfigError) as info:
        envelope_from_env({ENCRYPTION_KEY_ENV: b64(KEY1)})
    assert "pip install 'blokrun[crypto]'" in str(info.value)
    assert info.value.variable == ENCRYPTION_KEY_ENV
    # Without keys the package is not needed, and encrypted records get a clear error.
    assert ENCRYPTION_KEY_ENV in str(open_error(Envelope(), raw))


def test_missing_zstandard(monkeypatch: pytest.MonkeyPatch) -> None:
    zstd_raw = envelope("zstd").seal(Kind.VALUE, compressible())
    monkeypatch.setitem(sys.modules, "zstandard", None)
    with pytest.raises(ConfigError) as info:
        envelope_from_env({COMPRESSION_ENV: "zstd"})
    assert info.value.variable == COMPRESSION_ENV
    assert COMPRESSION_ENV in str(info.value) and "zstandard" in str(info.value)
    assert envelope_from_env({}).describe().startswith("zlib>=")
    assert "zstandard" in str(open_error(Envelope(compression="zlib"), zstd_raw))


def test_the_envelope_reads_no_environment() -> None:
    """blokrun.config is the only module that reads the environment (envelope_from_env)."""
    import blokrun.persistence.envelope as package

    assert not hasattr(Envelope, "from_env")
    sources = sorted(Path(package.__file__).parent.glob("*.py"))
    assert [p.name for p in sources] == ["__init__.py", "compression.py", "crypto.py", "format.py"]
    for path in sources:
        assert not re.search(r"\benviron\b|getenv", path.read_text()), path


def test_optional_packages_are_imported_only_when_needed() -> None:
    code = (
        "import sys\n"
        "from blokrun.config import envelope_from_env\n"
        "from blokrun.persistence.envelope import Envelope\n"
        "from blokrun.persistence.codec import Kind\n"
        "def loaded(): return {m for m in ('zstandard', 'cryptography') if m in sys.modules}\n"
        "before = loaded()\n"
        "e = Envelope(compression='zlib', threshold=0)\n"
        "assert e.open(e.seal(Kind.VALUE, b'x' * 5000))[1] == b'x' * 5000\n"
        "e = envelope_from_env({'BLOKRUN_COMPRESSION': 'none'})\n"
        "assert e.open(e.seal(Kind.VALUE, b'x' * 5000))[1] == b'x' * 5000\n"
        "print(sorted(loaded() - before))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


# --------------------------------------------------------------------------- threads, speed


@pytest.mark.parametrize("compression", ["zlib", "zstd"])
def test_one_envelope_is_safe_to_share_between_threads(compression: str) -> None:
    env = envelope(compression, threshold=0, encrypt=True)
    errors: list[BaseException] = []

    def work(seed: int) -> None:
        rnd = random.Random(seed)
        try:
            for _ in range(40):
                payload = compressible(rnd.randrange(1000, 200_000))
                assert env.open(env.seal(Kind.CHECKPOINT, payload))[1] == payload
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


def realistic_json(target: int = 10_000_000, seed: int = 1) -> bytes:
    """A list of dicts with numbers and short strings, ~``target`` bytes of orjson."""
    rnd = random.Random(seed)
    words = ["pending", "done", "failed", "eu-west-1", "us-east-2", "retail", "sku", "order"]
    rows: list[dict[str, Any]] = []
    size = 0
    while size < target:
        row = {
            "id": len(rows),
            "user": f"user-{rnd.randrange(100_000)}",
            "status": rnd.choice(words),
            "amount": round(rnd.uniform(0, 10_000), 2),
            "qty": rnd.randrange(1, 50),
            "ts": 1_700_000_000 + rnd.randrange(10**7),
            "tags": rnd.sample(words, 3),
            "ok": rnd.random() < 0.5,
            "note": "".join(rnd.choice("abcdefghij klmnop") for _ in range(12)),
        }
        rows.append(row)
        size += len(orjson.dumps(row)) + 1
    return orjson.dumps({"rows": rows})


def best_ms(fn: Callable[[], object], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best * 1000


def test_ten_megabytes_seal_and_open_fast_with_the_defaults() -> None:
    """A guard against slow defaults (a high level, a per-call set-up); generous for CI."""
    payload = realistic_json()
    env = envelope("zstd", encrypt=True)
    raw = env.seal(Kind.CHECKPOINT, payload)
    assert len(raw) < len(payload) // 2
    assert best_ms(lambda: env.seal(Kind.CHECKPOINT, payload), 3) < 250
    assert best_ms(lambda: env.open(raw), 3) < 250


# --------------------------------------------------------------------------- properties


ENVELOPES = [
    envelope(c, threshold=t, encrypt=e)
    for c in COMPRESSIONS
    for t in (0, 64)
    for e in (False, True)
]


@settings(max_examples=300, deadline=None)
@given(
    payload=st.binary(max_size=3000) | st.text(max_size=2000).map(str.encode),
    kind=st.sampled_from(list(Kind)),
    env=st.sampled_from(ENVELOPES),
)
def test_property_open_of_seal_is_identity(payload: bytes, kind: Kind, env: Envelope) -> None:
    assert env.open(env.seal(kind, payload)) == (kind, payload)


def check_open(env: Envelope, raw: bytes) -> None:
    try:
        kind, payload = env.open(raw, datasource="ds", key="k")
    except FormatVersionError as exc:
        assert exc.key == "k"
    except RecordError as exc:
        assert exc.datasource == "ds" and exc.key == "k"
    else:
        assert isinstance(kind, Kind) and isinstance(payload, bytes)


@settings(max_examples=300, deadline=None)
@given(raw=st.binary(max_size=200), env=st.sampled_from(ENVELOPES))
def test_property_open_of_arbitrary_bytes_only_raises_record_errors(
    raw: bytes, env: Envelope
) -> None:
    check_open(env, raw)
    check_open(env, MAGIC + raw)


@st.composite
def forged_records(draw: st.DrawFn) -> bytes:
    """Plausible headers (any version, flags, kind, key id) with a correct crc, so the
    decryption and decompression paths see garbage too."""
    version = draw(st.sampled_from([1, 2, 2, 2, 3, 0, 255]))
    flags = draw(st.sampled_from([0, 4, 8, 12, 16, 20, 24, 32, 1])) | draw(
        st.sampled_from([0, 0, 0, 64])
    )
    kind = draw(st.sampled_from([1, 2, 3, 4, 5, 0, 9]))
    kid = draw(st.sampled_from([b"", b"k1", b"k2", b"zz", b"\xff", b"x" * 65]))
    stored = draw(st.binary(max_size=300))
    if draw(st.booleans()):  # a real compressed or sealed payload under a forged header
        source = draw(st.sampled_from(ENVELOPES))
        stored = parts(source.seal(Kind.VALUE, compressible(draw(st.integers(0, 3000)))))[2]
    if version == 1:
        return v1_record(kind, stored, flags=flags & draw(st.sampled_from([0, 0xFF])))
    return rebuild(V2.pack(MAGIC, version, flags, kind, len(kid)) + kid, stored)


@settings(max_examples=500, deadline=None)
@given(raw=forged_records(), env=st.sampled_from(ENVELOPES))
def test_property_open_of_forged_records_only_raises_record_errors(
    raw: bytes, env: Envelope
) -> None:
    check_open(env, raw)


@settings(max_examples=300, deadline=None)
@given(
    env=st.sampled_from(ENVELOPES),
    payload=st.binary(max_size=500),
    index=st.integers(0, 10_000),
    mask=st.integers(1, 255),
    cut=st.integers(0, 10_000),
)
def test_property_damaged_records_only_raise_record_errors(
    env: Envelope, payload: bytes, index: int, mask: int, cut: int
) -> None:
    raw = env.seal(Kind.CHECKPOINT, payload, bind="run-1/1/5")
    index %= len(raw)
    try:
        kind, _ = env.open(flip(raw, index, mask), bind="run-1/1/5")
    except RecordError:
        pass
    else:  # only the kind of a plain record is outside the crc (and encryption's AAD)
        assert not env.encrypted and index == 5 and kind != Kind.CHECKPOINT
    if cut < len(raw):
        with pytest.raises(RecordError):
            env.open(raw[:cut], bind="run-1/1/5")


# --------------------------------------------------------------------------- benchmark


def _bench_envelopes(repeat: int) -> None:
    payload = realistic_json()
    print(f"payload: {len(payload) / 1e6:.2f} MB orjson; best of {repeat}; load {os.getloadavg()}")
    print(f"{'compression':<12} {'encryption':<12} {'seal ms':>8} {'open ms':>8} {'stored MB':>10}")
    for compression in COMPRESSIONS:
        for encrypt in (False, True):
            env = envelope(compression, encrypt=encrypt)
            raw = env.seal(Kind.CHECKPOINT, payload)
            assert env.open(raw)[1] == payload
            seal = best_ms(partial(env.seal, Kind.CHECKPOINT, payload), repeat)
            opened = best_ms(partial(env.open, raw), repeat)
            print(
                f"{compression:<12} {'aes-256-gcm' if encrypt else 'off':<12} "
                f"{seal:8.1f} {opened:8.1f} {len(raw) / 1e6:10.2f}"
            )


def _bench_levels(repeat: int) -> None:
    payload = realistic_json()
    print(f"payload: {len(payload) / 1e6:.2f} MB orjson; best of {repeat}; load {os.getloadavg()}")
    print(f"{'codec':<10} {'seal ms':>8} {'open ms':>8} {'ratio':>7}")
    for compression, level in [
        ("zstd", -5),
        ("zstd", -1),
        ("zstd", 1),
        ("zstd", 2),
        ("zstd", 3),
        ("zlib", 1),
    ]:
        env = Envelope(compression=compression, level=level)  # type: ignore[arg-type]
        raw = env.seal(Kind.CHECKPOINT, payload)
        seal = best_ms(partial(env.seal, Kind.CHECKPOINT, payload), repeat)
        opened = best_ms(partial(env.open, raw), repeat)
        print(
            f"{compression + ' ' + str(level):<10} {seal:8.1f} {opened:8.1f} "
            f"{len(raw) / len(payload):7.3f}"
        )


if __name__ == "__main__":
    if "--levels" in sys.argv:
        _bench_levels(7)
    else:
        _bench_envelopes(7)
