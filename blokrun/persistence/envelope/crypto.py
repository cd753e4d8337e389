"""AES-256-GCM encryption of record payloads, under named keys so keys can be rotated.

A :class:`Keyring` holds keys by id: the active one encrypts new records, the others only
open old ones (rotation: a new active key, the previous one kept for reading; old keys
without an active key open encrypted records and write plain ones, the way back from
encryption). The record names its key by id in its header (:mod:`.format`).

Each seal uses a fresh random 96-bit nonce; random nonces are safe for about 2**32 seals per
key, so rotate keys long before that. The authenticated data is the record's header up to
the crc (magic, version, flags, kind, key id): flipping the compression bit, changing the
kind or pointing the record at another key fails authentication.

``cryptography`` is imported only when keys are configured. Messages and reprs never
contain key material. The AES-GCM objects are built once per key and are immutable (each
call works on its own cipher context), so one Keyring is safe to share between threads.
"""

from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING, Final

from blokrun.errors import ConfigError

if TYPE_CHECKING:
    from collections.abc import Mapping

    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    from blokrun.persistence.envelope.format import Fail

__all__ = [
    "ENCRYPTION_KEY_ENV",
    "ENCRYPTION_OLD_KEYS_ENV",
    "REQUIRE_ENCRYPTION_ENV",
    "KEY_BYTES",
    "KEY_ID_RULE",
    "Keyring",
    "is_key_id",
]

#: The variables that configure the keys (parsed by :mod:`blokrun.config`), named in the
#: errors here.
ENCRYPTION_KEY_ENV: Final = "BLOKRUN_ENCRYPTION_KEY"
ENCRYPTION_OLD_KEYS_ENV: Final = "BLOKRUN_ENCRYPTION_OLD_KEYS"
REQUIRE_ENCRYPTION_ENV: Final = "BLOKRUN_REQUIRE_ENCRYPTION"

KEY_BYTES: Final = 32
KEY_ID_RULE: Final = "1-64 characters from A-Z a-z 0-9 _ . -"
_KEY_ID_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_NONCE: Final = 12
_TAG: Final = 16


def is_key_id(text: str) -> bool:
    """Whether ``text`` may name a key (:data:`KEY_ID_RULE`)."""
    return _KEY_ID_RE.fullmatch(text) is not None


class UnknownKey(Exception):
    """The record names a key this keyring does not hold (``key_id``)."""

    def __init__(self, key_id: str, message: str) -> None:
        super().__init__(message)
        self.key_id = key_id


class Keyring:
    """Encrypts with the ``active`` key (if any) of ``keys`` (ids to 32-byte keys); opens
    records of any of them."""

    __slots__ = ("_active", "_ciphers")

    def __init__(self, keys: Mapping[str, bytes] | None, active: str | None) -> None:
        self._ciphers: dict[str, AESGCM] = {}
        self._active: tuple[str, bytes, AESGCM] | None = None
        keys = dict(keys or {})
        for kid, material in keys.items():
            if not isinstance(kid, str) or not is_key_id(kid):
                raise ConfigError(f"invalid encryption key id: expected {KEY_ID_RULE}")
            if not isinstance(material, bytes | bytearray) or len(material) != KEY_BYTES:
                raise ConfigError(
                    f"encryption key {kid!r}: expected exactly {KEY_BYTES} bytes (AES-256)"
                )
        if active is not None and active not in keys:
            raise ConfigError(
                f"active key {active!r} is not one of the configured keys "
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
        if active is not None:
            self._active = (active, active.encode("ascii"), self._ciphers[active])

    @property
    def active_id(self) -> bytes | None:
        """The id of the key that encrypts new records (ASCII), or ``None``: records are
        sealed in clear."""
        return None if self._active is None else self._active[1]

    def describe(self) -> str:
        """``aes-256-gcm key 'k2' (+1 old)``, ``not encrypted (opens records of 1 old key)``
        or ``not encrypted``; never key material."""
        if self._active is not None:
            old = len(self._ciphers) - 1
            return f"aes-256-gcm key {self._active[0]!r}" + (f" (+{old} old)" if old else "")
        if self._ciphers:
            n = len(self._ciphers)
            return f"not encrypted (opens records of {n} old key{'s' if n > 1 else ''})"
        return "not encrypted"

    def encrypt(self, data: bytes, header: bytes) -> tuple[bytes, bytes]:
        """``(nonce, ciphertext + tag)`` of ``data`` under the active key, authenticating
        ``header``."""
        assert self._active is not None
        nonce = os.urandom(_NONCE)
        return nonce, self._active[2].encrypt(nonce, data, header)

    def decrypt(self, key_id: bytes, header: bytes, body: bytes | memoryview, fail: Fail) -> bytes:
        """``body`` (``nonce + ciphertext + tag``) decrypted with the key ``key_id`` names,
        authenticating ``header``; anything wrong is ``fail(message)``."""
        try:
            kid = key_id.decode("ascii")
        except UnicodeDecodeError:
            kid = ""
        if not _KEY_ID_RE.fullmatch(kid):
            raise fail("invalid key id in the record header")
        if not self._ciphers:
            raise UnknownKey(
                kid,
                f"the record is encrypted (key id {kid!r}) and no encryption key is "
                f"configured: set {ENCRYPTION_KEY_ENV} (or {ENCRYPTION_OLD_KEYS_ENV}) "
                "to the key that wrote it",
            )
        cipher = self._ciphers.get(kid)
        if cipher is None:
            known = ", ".join(repr(k) for k in self._ciphers)
            raise UnknownKey(
                kid,
                f"the record is encrypted with key id {kid!r}, which is not configured "
                f"(configured: {known}): add that key to {ENCRYPTION_OLD_KEYS_ENV}",
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
