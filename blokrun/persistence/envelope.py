"""The sealed envelope (format v2): compression, AES-256-GCM encryption, checksum, version.

Every record is ``header + crc32 + stored payload``; all integers are big-endian::

    offset 0  magic        b"\\xb1BK"
           3  version      2 (1 = the old format, still opened; newer -> FormatVersionError)
           4  flags        bits 0-1 codec (0 = JSON), bits 2-3 compression (0 none, 1 zlib,
                           2 zstd), bit 4 encrypted; other bits must be 0
           5  kind         what the payload is (:class:`~blokrun.persistence.codec.Kind`)
           6  key-id len   0-64 (0 exactly when the record is not encrypted)
           7  key id       ASCII ``[A-Za-z0-9_.-]``, names the key that encrypted the record
         7+n  crc32        of the stored payload
        11+n  stored       payload -> compressed (when it shrinks) -> encrypted
                           (``nonce(12) + ciphertext + tag(16)``)

:meth:`Envelope.seal` compresses payloads of at least ``threshold`` bytes and keeps the
compressed form only when it is smaller (so incompressible data is stored as is), then, when
an active key is configured, encrypts with AES-256-GCM under a fresh random 96-bit nonce.
The authenticated data is the header up to the crc (magic, version, flags, kind, key id):
flipping the compression bit, changing the kind or pointing the record at another key fails
authentication. The crc32 covers the stored payload, so plain corruption is reported as a
checksum mismatch before any decryption is tried. Random nonces are safe for about 2**32
seals per key: rotate keys long before that.

Version 1 records (``>3sBBBI``: magic, version 1, flags 0, kind, crc32, then the payload)
still open, so stores written before v2 stay readable.

An Envelope reads no environment: :func:`blokrun.config.envelope_from_env` builds one from
``BLOKRUN_ENCRYPTION_KEY``, ``BLOKRUN_ENCRYPTION_OLD_KEYS``, ``BLOKRUN_COMPRESSION`` and
``BLOKRUN_COMPRESSION_THRESHOLD``.

``cryptography`` is imported only when keys are configured and ``zstandard`` only when zstd
is configured or a zstd record is opened. Messages and reprs never contain key material.

Thread safety: one Envelope may be used from many threads at once. The AES-GCM objects are
built once per key and are immutable (each call works on its own cipher context), so they
are shared. ``zlib.compress``/``decompressobj`` keep no state between calls. zstandard's
``ZstdCompressor``/``ZstdDecompressor`` must not be used by two threads at the same time, so
each Envelope keeps one pair per thread (a ``threading.local``, built on first use in that
thread); reusing them saves the context set-up (~10 us of a 5 KB seal) on every call.

Levels: zstd 1 and zlib 1, measured on a 10 MB orjson list of dicts (ints, floats, short
strings) with ``python -m tests.unit.test_envelope --levels`` (2-core Xeon shared with other
work, load average ~1.1, best of 7)::

    codec      seal ms  open ms  ratio        codec      seal ms  open ms  ratio
    zstd -5      25.5     12.3   0.368        zstd 2       49.3     20.2   0.241
    zstd -1      29.7     11.9   0.302        zstd 3       80.6     14.7   0.245
    zstd 1       44.8     15.3   0.234        zlib 1      140.6     66.9   0.278

zstd 1 stores the least of all (on this data it even beats 3) at about half the time of
zstd 3; the negative levels save ~15 ms but store 30-60 % more bytes, which costs more than
that on any networked datasource. zstd's multi-threaded mode (``threads=2``) was no faster
here (47.6 vs 51.4 ms), so it stays off. zlib 1, the fastest zlib level, alone takes more
than the 100 ms budget of a 10 MB context: zlib is the fallback when zstandard is missing,
not a recommendation. Whole envelope, default levels (``python -m tests.unit.test_envelope``,
same machine, best of 7, ms; AES-GCM (OpenSSL, AES-NI) costs ~2.5 ms per 10 MB)::

    compression  encryption    seal    open   stored MB
    none         off            8.6     8.3    10.00
    none         aes-256-gcm    7.5     6.6    10.00
    zlib         off          151.1    59.6     2.78
    zlib         aes-256-gcm  143.9    68.0     2.78
    zstd         off           36.1    15.6     2.34
    zstd         aes-256-gcm   42.6    17.1     2.34

(Over four runs zstd seal ranged 36-49 ms and open 15-20 ms, encrypted or not.)
"""

from __future__ import annotations

import os
import re
import struct
import threading
import zlib
from typing import TYPE_CHECKING, Final, Literal

from blokrun.errors import ConfigError, FormatVersionError, RecordError
from blokrun.persistence.codec import MAGIC, Kind

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from types import ModuleType

    import zstandard
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    _Fail = Callable[[str], RecordError]

__all__ = [
    "COMPRESSION_ENV",
    "ENCRYPTION_KEY_ENV",
    "ENCRYPTION_OLD_KEYS_ENV",
    "FORMAT_VERSION",
    "KEY_BYTES",
    "KEY_ID_RULE",
    "THRESHOLD_ENV",
    "Compression",
    "Envelope",
    "is_key_id",
    "zstd_available",
]

FORMAT_VERSION: Final = 2
ENCRYPTION_KEY_ENV: Final = "BLOKRUN_ENCRYPTION_KEY"
ENCRYPTION_OLD_KEYS_ENV: Final = "BLOKRUN_ENCRYPTION_OLD_KEYS"
COMPRESSION_ENV: Final = "BLOKRUN_COMPRESSION"
THRESHOLD_ENV: Final = "BLOKRUN_COMPRESSION_THRESHOLD"

Compression = Literal["none", "zlib", "zstd"]

_V1 = struct.Struct(">3sBBBI")  # magic, version, flags, kind, crc32
_V2 = struct.Struct(">3sBBBB")  # magic, version, flags, kind, key-id length
_CRC = struct.Struct(">I")
_CODE: Final[dict[str, int]] = {"none": 0, "zlib": 1, "zstd": 2}
_NAME: Final = {code: name for name, code in _CODE.items()}
_COMPRESSION_SHIFT: Final = 2
_CODEC_MASK: Final = 0b0000_0011
_COMPRESSION_MASK: Final = 0b0000_1100
_ENCRYPTED: Final = 0b0001_0000
_KNOWN_FLAGS: Final = _CODEC_MASK | _COMPRESSION_MASK | _ENCRYPTED
_NONCE: Final = 12
_TAG: Final = 16
KEY_BYTES: Final = 32
KEY_ID_RULE: Final = "1-64 characters from A-Z a-z 0-9 _ . -"
_KEY_ID_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_DEFAULT_LEVEL: Final = {"zlib": 1, "zstd": 1}
_ZSTD_MIN_LEVEL: Final = -(1 << 17)
#: A zstd block of 4 bytes (RLE) expands to at most 128 KiB: no valid frame declares more.
_ZSTD_MAX_RATIO: Final = 1 << 15


def _import_zstd() -> ModuleType | None:
    try:
        import zstandard
    except ImportError:
        return None
    return zstandard


def zstd_available() -> bool:
    """Whether the ``zstandard`` package imports."""
    return _import_zstd() is not None


def is_key_id(text: str) -> bool:
    """Whether ``text`` may name a key (:data:`KEY_ID_RULE`)."""
    return _KEY_ID_RE.fullmatch(text) is not None


class _ZstdContexts(threading.local):
    """One compressor and one decompressor per thread (zstandard's are not thread safe)."""

    cctx: zstandard.ZstdCompressor | None = None
    dctx: zstandard.ZstdDecompressor | None = None


class Envelope:
    """Seals record payloads: optional compression, optional AES-256-GCM, checksum, version.

    ``keys`` maps key ids to 32-byte keys; ``active_key`` (one of them) encrypts new records,
    the others only open old ones. Without ``active_key`` records are sealed in clear.
    """

    __slots__ = (
        "_active",
        "_ciphers",
        "_compression",
        "_level",
        "_threshold",
        "_zstd",
        "_zstd_ctx",
    )

    def __init__(
        self,
        *,
        compression: Compression = "zstd",
        threshold: int = 4096,
        keys: Mapping[str, bytes] | None = None,
        active_key: str | None = None,
        level: int | None = None,
    ) -> None:
        if compression not in _CODE:
            raise ConfigError(
                f"compression {compression!r}: expected none, zlib or zstd",
                variable=COMPRESSION_ENV,
            )
        if isinstance(threshold, bool) or not isinstance(threshold, int) or threshold < 0:
            raise ConfigError(
                f"compression threshold {threshold!r}: expected a whole number of bytes >= 0",
                variable=THRESHOLD_ENV,
            )
        self._compression: Compression = compression
        self._threshold = threshold
        self._level = _DEFAULT_LEVEL.get(compression, 0) if level is None else level
        self._zstd: ModuleType | None = None
        self._zstd_ctx = _ZstdContexts()
        if compression == "zlib" and not -1 <= self._level <= 9:
            raise ConfigError(f"zlib level {self._level}: expected -1 to 9")
        if compression == "zstd":
            self._zstd = _import_zstd()
            if self._zstd is None:
                raise ConfigError(
                    f"{COMPRESSION_ENV}=zstd needs the 'zstandard' package: "
                    f"pip install zstandard (or set {COMPRESSION_ENV}=zlib)",
                    variable=COMPRESSION_ENV,
                )
            if not _ZSTD_MIN_LEVEL <= self._level <= self._zstd.MAX_COMPRESSION_LEVEL:
                raise ConfigError(
                    f"zstd level {self._level}: expected {_ZSTD_MIN_LEVEL} to "
                    f"{self._zstd.MAX_COMPRESSION_LEVEL}"
                )
        self._ciphers: dict[str, AESGCM] = {}
        self._active: tuple[str, bytes, AESGCM] | None = None
        keys = dict(keys or {})
        for kid, material in keys.items():
            if not isinstance(kid, str) or not _KEY_ID_RE.fullmatch(kid):
                raise ConfigError(f"invalid encryption key id: expected {KEY_ID_RULE}")
            if not isinstance(material, bytes | bytearray) or len(material) != KEY_BYTES:
                raise ConfigError(
                    f"encryption key {kid!r}: expected exactly {KEY_BYTES} bytes (AES-256)"
                )
        if active_key is not None and active_key not in keys:
            raise ConfigError(
                f"active key {active_key!r} is not one of the configured keys "
                f"({', '.join(repr(k) for k in sorted(keys)) or 'none'})"
            )
        if keys:
            try:
                from cryptography.hazmat.primitives.ciphers.aead import AESGCM
            except ImportError:
                raise ConfigError(
                    f"encryption is configured ({ENCRYPTION_KEY_ENV}) but the 'cryptography' "
                    "package is not installed: pip install 'blokrun[crypto]'",
                    variable=ENCRYPTION_KEY_ENV,
                ) from None
            self._ciphers = {kid: AESGCM(bytes(material)) for kid, material in keys.items()}
        if active_key is not None:
            self._active = (active_key, active_key.encode("ascii"), self._ciphers[active_key])

    @property
    def encrypted(self) -> bool:
        """Whether :meth:`seal` encrypts (an active key is configured)."""
        return self._active is not None

    def describe(self) -> str:
        """One secret-free line: ``zstd>=4096B, aes-256-gcm key 'k2' (+1 old)``."""
        if self._compression == "none":
            text = "no compression"
        else:
            text = f"{self._compression}>={self._threshold}B"
        if self._active is not None:
            old = len(self._ciphers) - 1
            text += f", aes-256-gcm key {self._active[0]!r}" + (f" (+{old} old)" if old else "")
        elif self._ciphers:
            n = len(self._ciphers)
            text += f", not encrypted (opens records of {n} old key{'s' if n > 1 else ''})"
        else:
            text += ", not encrypted"
        return text

    def __repr__(self) -> str:
        return f"Envelope({self.describe()})"

    # ------------------------------------------------------------------ seal

    def seal(self, kind: Kind, payload: bytes) -> bytes:
        """``payload`` as a stored record of ``kind`` (compressed and encrypted as configured)."""
        kind = Kind(kind)
        data = payload
        flags = 0
        if self._compression != "none" and len(payload) >= self._threshold:
            packed = self._compress(payload)
            if len(packed) < len(payload):
                data = packed
                flags = _CODE[self._compression] << _COMPRESSION_SHIFT
        if self._active is None:
            header = _V2.pack(MAGIC, FORMAT_VERSION, flags, kind, 0)
            return b"".join((header, _CRC.pack(zlib.crc32(data)), data))
        _, kid, cipher = self._active
        header = _V2.pack(MAGIC, FORMAT_VERSION, flags | _ENCRYPTED, kind, len(kid)) + kid
        nonce = os.urandom(_NONCE)
        sealed = cipher.encrypt(nonce, data, header)
        crc = zlib.crc32(sealed, zlib.crc32(nonce))
        return b"".join((header, _CRC.pack(crc), nonce, sealed))

    def _compress(self, payload: bytes) -> bytes:
        if self._compression == "zlib":
            return zlib.compress(payload, self._level)
        assert self._zstd is not None
        ctx = self._zstd_ctx
        if ctx.cctx is None:
            ctx.cctx = self._zstd.ZstdCompressor(level=self._level, write_content_size=True)
        return ctx.cctx.compress(payload)

    # ------------------------------------------------------------------ open

    def open(
        self, raw: bytes, *, datasource: str | None = None, key: str | None = None
    ) -> tuple[Kind, bytes]:
        """Check, decrypt and decompress ``raw``; return its kind and payload.

        Anything wrong with the bytes is a :class:`RecordError` (a record from a newer blokrun
        a :class:`FormatVersionError`) carrying ``datasource`` and ``key``.
        """

        def fail(message: str) -> RecordError:
            return RecordError(message, datasource=datasource, key=key)

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
        if version == 1:
            return self._open_v1(raw, fail)
        if version != FORMAT_VERSION:
            raise fail(f"unsupported record format version {version}")

        _, _, flags, kind_code, id_len = _V2.unpack_from(raw)
        if flags & ~_KNOWN_FLAGS:
            raise fail(f"unsupported record flags {flags:#04x}")
        if flags & _CODEC_MASK:
            raise fail(f"unsupported payload codec {flags & _CODEC_MASK}")
        compression = (flags & _COMPRESSION_MASK) >> _COMPRESSION_SHIFT
        if compression not in _NAME:
            raise fail(f"unsupported compression {compression}")
        encrypted = bool(flags & _ENCRYPTED)
        if encrypted and id_len == 0:
            raise fail("encrypted record without a key id")
        if not encrypted and id_len:
            raise fail("record has a key id but is not marked encrypted")
        if id_len > 64:
            raise fail(f"key id length {id_len} is over 64")
        header_end = _V2.size + id_len
        if len(raw) < header_end + _CRC.size:
            raise fail("not a blokrun record (truncated header)")
        (crc,) = _CRC.unpack_from(raw, header_end)
        view = memoryview(raw)
        body: bytes | memoryview = view[header_end + _CRC.size :]
        if zlib.crc32(body) != crc:
            raise fail("checksum mismatch: the record is corrupt or truncated")
        try:
            kind = Kind(kind_code)
        except ValueError:
            raise fail(f"unknown record kind {kind_code}") from None

        if encrypted:
            body = self._decrypt(view[:header_end], body, fail)
        if compression:
            body = self._decompress(compression, body, fail)
        return kind, bytes(body)

    @staticmethod
    def _open_v1(raw: bytes, fail: _Fail) -> tuple[Kind, bytes]:
        _, _, flags, kind_code, crc = _V1.unpack_from(raw)
        if flags != 0:
            raise fail(f"unsupported record flags {flags:#04x}")
        payload = raw[_V1.size :]
        if zlib.crc32(payload) != crc:
            raise fail("checksum mismatch: the record is corrupt or truncated")
        try:
            return Kind(kind_code), payload
        except ValueError:
            raise fail(f"unknown record kind {kind_code}") from None

    def _decrypt(self, header: memoryview, body: bytes | memoryview, fail: _Fail) -> bytes:
        try:
            kid = bytes(header[_V2.size :]).decode("ascii")
        except UnicodeDecodeError:
            kid = ""
        if not _KEY_ID_RE.fullmatch(kid):
            raise fail("invalid key id in the record header")
        if not self._ciphers:
            raise fail(
                f"the record is encrypted (key id {kid!r}) and no encryption key is "
                f"configured: set {ENCRYPTION_KEY_ENV} (or {ENCRYPTION_OLD_KEYS_ENV}) "
                "to the key that wrote it"
            )
        cipher = self._ciphers.get(kid)
        if cipher is None:
            known = ", ".join(repr(k) for k in self._ciphers)
            raise fail(
                f"the record is encrypted with key id {kid!r}, which is not configured "
                f"(configured: {known}): add that key to {ENCRYPTION_OLD_KEYS_ENV}"
            )
        if len(body) < _NONCE + _TAG:
            raise fail("encrypted payload is truncated (shorter than nonce and tag)")
        from cryptography.exceptions import InvalidTag

        try:
            return cipher.decrypt(body[:_NONCE], body[_NONCE:], header)
        except InvalidTag:
            raise fail(
                "authentication failed: the record was tampered with or the key is wrong"
            ) from None

    def _decompress(self, code: int, body: bytes | memoryview, fail: _Fail) -> bytes:
        if code == _CODE["zlib"]:
            try:
                inflater = zlib.decompressobj()
                out = inflater.decompress(body)
            except zlib.error as exc:
                raise fail(f"zlib decompression failed: {exc}") from None
            if not inflater.eof or inflater.unused_data:
                raise fail("zlib decompression failed: truncated or trailing data")
            return out
        zstd = self._zstd or _import_zstd()
        if zstd is None:
            raise fail(
                "the record is zstd-compressed and the 'zstandard' package is not installed: "
                "pip install zstandard"
            )
        ctx = self._zstd_ctx
        if ctx.dctx is None:
            ctx.dctx = zstd.ZstdDecompressor()
        try:
            size = zstd.frame_content_size(body)
            if size < 0 or size > len(body) * _ZSTD_MAX_RATIO:
                raise fail("zstd decompression failed: missing or impossible content size")
            return ctx.dctx.decompress(body, allow_extra_data=False)
        except (zstd.ZstdError, MemoryError) as exc:
            raise fail(f"zstd decompression failed: {type(exc).__name__} {exc}") from None
