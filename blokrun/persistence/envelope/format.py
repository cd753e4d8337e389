"""The bytes of a stored record: header, format version, flags, key id and checksum.

Every record is ``header + crc32 + stored payload``; all integers are big-endian::

    offset 0  magic        b"\\xb1BK"
           3  version      3 (1 and 2 = older formats, still opened; newer ->
                           FormatVersionError)
           4  flags        bits 0-1 codec (0 = JSON), bits 2-3 compression (0 none, 1 zlib,
                           2 zstd), bit 4 encrypted; other bits must be 0
           5  kind         what the payload is (:class:`~blokrun.persistence.codec.Kind`)
           6  key-id len   0-64 (0 exactly when the record is not encrypted)
           7  key id       ASCII ``[A-Za-z0-9_.-]``, names the key that encrypted the record
         7+n  crc32        of the binding, then the stored payload
        11+n  stored       payload -> compressed (when it shrinks) -> encrypted
                           (``nonce(12) + ciphertext + tag(16)``)

**Binding** (v3). A record is sealed for the place it is stored: the *binding* (the key it is
stored under, as bytes) is fed to the crc32 before the payload and, when the record is
encrypted, authenticated with the header. The binding is not stored: the reader supplies the
key it read from, so a record copied under another key -- another run's, another sequence
number's -- fails its check there (a checksum mismatch in clear, an authentication failure
when encrypted: only encryption stops a deliberate forger, the crc catches mistakes).

The crc32 covers the stored payload, so plain corruption is reported as a checksum mismatch
before any decryption is tried. The header up to the crc (magic, version, flags, kind, key
id) plus the binding is what encryption authenticates (:mod:`.crypto`).

Version 2 records (the same layout, no binding) and version 1 records (``>3sBBBI``: magic,
version 1, flags 0, kind, crc32, then the payload) still open, without a binding check.
"""

from __future__ import annotations

import struct
import zlib
from typing import TYPE_CHECKING, Final

from blokrun.errors import FormatVersionError, RecordError
from blokrun.persistence.codec import MAGIC, Kind

if TYPE_CHECKING:
    from collections.abc import Callable

    from blokrun.persistence.envelope.compression import Compression

    #: Makes the error for what is wrong with the record being opened.
    Fail = Callable[[str], RecordError]
    #: What :func:`read` returns (a plain tuple: records are opened on every load).
    Stored = tuple[Kind, Compression, bytes, bytes | None, bytes | memoryview]

__all__ = ["FORMAT_VERSION", "header", "read", "record"]

FORMAT_VERSION: Final = 3
_MAX_KEY_ID: Final = 64

_V1 = struct.Struct(">3sBBBI")  # magic, version, flags, kind, crc32
_V2 = struct.Struct(">3sBBBB")  # magic, version, flags, kind, key-id length
_CRC = struct.Struct(">I")
_COMPRESSION_CODE: Final[dict[Compression, int]] = {"none": 0, "zlib": 1, "zstd": 2}
_COMPRESSION_NAME: Final = {code: name for name, code in _COMPRESSION_CODE.items()}
_COMPRESSION_SHIFT: Final = 2
_COMPRESSION_FLAGS: Final = {
    name: code << _COMPRESSION_SHIFT for name, code in _COMPRESSION_CODE.items()
}
_CODEC_MASK: Final = 0b0000_0011
_COMPRESSION_MASK: Final = 0b0000_1100
_ENCRYPTED: Final = 0b0001_0000
_KNOWN_FLAGS: Final = _CODEC_MASK | _COMPRESSION_MASK | _ENCRYPTED


def header(kind: Kind, compression: Compression, key_id: bytes = b"") -> bytes:
    """The header of a record of ``kind``, compressed with ``compression`` (``"none"``
    when stored as is), encrypted under ``key_id`` unless it is empty."""
    if not key_id:
        return _PLAIN.get((kind, compression)) or _plain(kind, compression)
    flags = _COMPRESSION_FLAGS[compression] | _ENCRYPTED
    return _V2.pack(MAGIC, FORMAT_VERSION, flags, kind, len(key_id)) + key_id


#: the header of every unencrypted record, by kind and compression (one per stored record
#: on the hot path: a lookup, not a pack)
def _plain(kind: int, compression: Compression) -> bytes:
    return _V2.pack(MAGIC, FORMAT_VERSION, _COMPRESSION_FLAGS[compression], kind, 0)


_PLAIN: Final = {(kind, name): _plain(kind, name) for kind in Kind for name in _COMPRESSION_FLAGS}


def record(head: bytes, payload: bytes, nonce: bytes = b"", bind: bytes = b"") -> bytes:
    """The record: ``head``, the crc32 of ``bind`` and the stored payload (``nonce +
    payload``), then the stored payload."""
    crc = zlib.crc32(payload, zlib.crc32(nonce, zlib.crc32(bind)))
    return b"".join((head, _CRC.pack(crc), nonce, payload))


def read(
    raw: bytes, fail: Fail, datasource: str | None, key: str | None, bind: bytes = b""
) -> Stored:
    """Check the header and checksum of ``raw`` (format v3, v2 or v1) as stored under the
    binding ``bind``: ``(kind, compression, key id, authenticated data, stored payload)``.

    The compression is how the (decrypted) payload is compressed; the key id (as stored, not
    yet checked) and the data encryption authenticates (header + binding) are ``b""`` and
    ``None`` when the record is not encrypted. Anything wrong is ``fail(message)``; a record
    of a newer format version is a :class:`FormatVersionError` carrying ``datasource`` and
    ``key``. Older versions carry no binding: ``bind`` is not checked for them.
    """
    if len(raw) < _V1.size or raw[:3] != MAGIC:
        raise fail("not a blokrun record (bad magic or truncated header)")
    version = raw[3]
    if version > FORMAT_VERSION:
        raise FormatVersionError(
            f"record format version {version} is newer than this blokrun understands "
            f"({FORMAT_VERSION}): upgrade blokrun",
            datasource=datasource,
            key=key,
        )
    if version < FORMAT_VERSION and bind:
        raise fail(
            f"record format version {version} is not bound to its key; version "
            f"{FORMAT_VERSION} is expected here"
        )
    if version == 1:
        return _read_v1(raw, fail)
    if version != FORMAT_VERSION and version != 2:  # noqa: PLR1714 - versions, not a set
        raise fail(f"unsupported record format version {version}")
    return _read_v2(raw, fail, bind)


def _flags(flags: int, id_len: int, fail: Fail) -> tuple[Compression, bool]:
    """The compression and whether the record is encrypted, from a v2+ header's flags."""
    if flags & ~_KNOWN_FLAGS:
        raise fail(f"unsupported record flags {flags:#04x}")
    if flags & _CODEC_MASK:
        raise fail(f"unsupported payload codec {flags & _CODEC_MASK}")
    code = (flags & _COMPRESSION_MASK) >> _COMPRESSION_SHIFT
    compression = _COMPRESSION_NAME.get(code)
    if compression is None:
        raise fail(f"unsupported compression {code}")
    encrypted = bool(flags & _ENCRYPTED)
    if encrypted and id_len == 0:
        raise fail("encrypted record without a key id")
    if not encrypted and id_len:
        raise fail("record has a key id but is not marked encrypted")
    if id_len > _MAX_KEY_ID:
        raise fail(f"key id length {id_len} is over {_MAX_KEY_ID}")
    return compression, encrypted


def _read_v2(raw: bytes, fail: Fail, bind: bytes) -> Stored:
    _, _, flags, kind_code, id_len = _V2.unpack_from(raw)
    compression, encrypted = _flags(flags, id_len, fail)
    header_end = _V2.size + id_len
    if len(raw) < header_end + _CRC.size:
        raise fail("not a blokrun record (truncated header)")
    (crc,) = _CRC.unpack_from(raw, header_end)
    view = memoryview(raw)
    payload = view[header_end + _CRC.size :]
    if zlib.crc32(payload, zlib.crc32(bind)) != crc:
        raise fail(
            "checksum mismatch: the record is corrupt or truncated, or was written under "
            "another key"
        )
    try:
        kind = Kind(kind_code)
    except ValueError:
        raise fail(f"unknown record kind {kind_code}") from None
    if not encrypted:
        return kind, compression, b"", None, payload
    aad = bytes(view[:header_end]) + bind
    return kind, compression, bytes(view[_V2.size : header_end]), aad, payload


def _read_v1(raw: bytes, fail: Fail) -> Stored:
    _, _, flags, kind_code, crc = _V1.unpack_from(raw)
    if flags != 0:
        raise fail(f"unsupported record flags {flags:#04x}")
    payload = raw[_V1.size :]
    if zlib.crc32(payload) != crc:
        raise fail("checksum mismatch: the record is corrupt or truncated")
    try:
        return Kind(kind_code), "none", b"", None, payload
    except ValueError:
        raise fail(f"unknown record kind {kind_code}") from None
