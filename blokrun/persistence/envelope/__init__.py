"""The sealed envelope: every stored record compressed, optionally encrypted, checksummed.

:meth:`Envelope.seal` compresses the payload (:mod:`.compression`), encrypts it with
AES-256-GCM when an active key is configured (:mod:`.crypto`) and frames it with a header
naming its format version, kind, compression and key, and a crc32 (:mod:`.format`);
:meth:`Envelope.open` checks and undoes each step, and any bytes it cannot trust are a
:class:`~blokrun.errors.RecordError` naming the datasource and key, never a traceback and
never key material.

An Envelope reads no environment: :func:`blokrun.config.envelope_from_env` builds one from
``BLOKRUN_ENCRYPTION_KEY``, ``BLOKRUN_ENCRYPTION_OLD_KEYS``, ``BLOKRUN_COMPRESSION`` and
``BLOKRUN_COMPRESSION_THRESHOLD``. One Envelope may be used from many threads at once.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from blokrun.errors import KeyMissing, RecordError
from blokrun.persistence.codec import Kind
from blokrun.persistence.envelope.compression import (
    COMPRESSION_ENV,
    THRESHOLD_ENV,
    Compression,
    Compressor,
)
from blokrun.persistence.envelope.crypto import (
    ENCRYPTION_KEY_ENV,
    ENCRYPTION_OLD_KEYS_ENV,
    REQUIRE_ENCRYPTION_ENV,
    Keyring,
    UnknownKey,
)
from blokrun.persistence.envelope.format import FORMAT_VERSION, header, read, record

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = [
    "COMPRESSION_ENV",
    "ENCRYPTION_KEY_ENV",
    "ENCRYPTION_OLD_KEYS_ENV",
    "REQUIRE_ENCRYPTION_ENV",
    "FORMAT_VERSION",
    "THRESHOLD_ENV",
    "Compression",
    "Envelope",
]


class Envelope:
    """Seals record payloads: optional compression, optional AES-256-GCM, checksum, version.

    ``compression`` applies to payloads of at least ``threshold`` bytes, at ``level`` (the
    default suits checkpoints). ``keys`` maps key ids to 32-byte keys; ``active_key`` (one
    of them) encrypts new records, the others only open old ones. Without ``active_key``
    records are sealed in clear. Bad settings are a :class:`~blokrun.errors.ConfigError`.
    """

    __slots__ = ("_active_id", "_compressor", "_keyring")

    def __init__(
        self,
        *,
        compression: Compression = "zstd",
        threshold: int = 4096,
        keys: Mapping[str, bytes] | None = None,
        active_key: str | None = None,
        level: int | None = None,
    ) -> None:
        self._compressor = Compressor(compression, threshold, level)
        self._keyring = Keyring(keys, active_key)
        self._active_id = self._keyring.active_id

    @property
    def encrypted(self) -> bool:
        """Whether :meth:`seal` encrypts (an active key is configured)."""
        return self._active_id is not None

    @property
    def key_id(self) -> str | None:
        """The id of the key new records are encrypted with, or ``None``."""
        return None if self._active_id is None else self._active_id.decode("ascii")

    def describe(self) -> str:
        """One secret-free line: ``zstd>=4096B, aes-256-gcm key 'k2' (+1 old)``."""
        return f"{self._compressor.describe()}, {self._keyring.describe()}"

    def __repr__(self) -> str:
        return f"Envelope({self.describe()})"

    def seal(self, kind: Kind, payload: bytes, *, bind: str = "") -> bytes:
        """``payload`` as a stored record of ``kind`` (compressed and encrypted as configured),
        bound to ``bind`` -- the key it will be stored under (see :mod:`.format`)."""
        if type(kind) is not Kind:
            kind = Kind(kind)
        compression, data = self._compressor.pack(payload)
        key_id = self._active_id
        binding = bind.encode()
        if key_id is None:
            return record(header(kind, compression), data, bind=binding)
        head = header(kind, compression, key_id)
        nonce, sealed = self._keyring.encrypt(data, head + binding)
        return record(head, sealed, nonce, binding)

    def open(
        self,
        raw: bytes,
        *,
        datasource: str | None = None,
        key: str | None = None,
        bind: str = "",
    ) -> tuple[Kind, bytes]:
        """Check, decrypt and decompress ``raw``, sealed for the binding ``bind`` (the key it
        is stored under; see :meth:`seal`); return its kind and payload.

        Anything wrong with the bytes is a :class:`RecordError` (a record from a newer blokrun
        a :class:`~blokrun.errors.FormatVersionError`, one encrypted with a key this envelope
        lacks a :class:`~blokrun.errors.KeyMissing`) carrying ``datasource`` and ``key``.
        """

        def fail(message: str) -> RecordError:
            return RecordError(message, datasource=datasource, key=key)

        binding = (bind or "").encode()
        kind, compression, key_id, aad, body = read(raw, fail, datasource, key, binding)
        if aad is not None:
            try:
                body = self._keyring.decrypt(key_id, aad, body, fail)
            except UnknownKey as exc:
                raise KeyMissing(
                    str(exc), key_id=exc.key_id, datasource=datasource, key=key
                ) from None
        if compression != "none":
            body = self._compressor.unpack(compression, body, fail)
        return kind, bytes(body)
