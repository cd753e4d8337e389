"""Compression of record payloads (zlib or zstd), and decompression that refuses bombs.

A payload of at least ``threshold`` bytes is compressed, and the compressed form is kept only
when it is smaller, so incompressible data is stored as is.

Levels: zstd 1 and zlib 1. On JSON checkpoints (lists of dicts of numbers and short
strings) zstd 1 stores the least of the levels tried, even less than zstd's default level 3,
in much less time; the negative levels are a little faster but store markedly more bytes,
which costs more than it saves on any networked datasource. zstd's multi-threaded mode was
no faster, so it stays off. zlib 1 is zlib's fastest level and still several times slower
than zstd 1: zlib is the fallback when ``zstandard`` is missing, not a recommendation. The
measurements, and the commands that repeat them: ``benchmarks/ENVELOPE.md``.

Decompression bombs: a zstd frame must declare its content size, and one declaring more
than ``2**15`` times its own size (more than any valid frame can expand to) is refused
before anything is allocated; deflate cannot expand much more than 1000 times, and a zlib
stream must end exactly where the payload does.

``zstandard`` is imported only when zstd is configured or a zstd record is opened.

Thread safety: ``zlib.compress``/``decompressobj`` keep no state between calls. zstandard's
``ZstdCompressor``/``ZstdDecompressor`` must not be used by two threads at the same time, so
each :class:`Compressor` keeps one pair per thread (a ``threading.local``, built on first use
in that thread); reusing them saves setting up a context on every call, a noticeable part of
sealing a small payload.
"""

from __future__ import annotations

import threading
import zlib
from typing import TYPE_CHECKING, Final, Literal

from blokrun.errors import ConfigError

if TYPE_CHECKING:
    from collections.abc import Callable
    from types import ModuleType

    import zstandard

    from blokrun.errors import RecordError

    Fail = Callable[[str], RecordError]


__all__ = [
    "COMPRESSION_ENV",
    "THRESHOLD_ENV",
    "Compression",
    "Compressor",
    "zstd_available",
]

#: The variables that configure compression (parsed by :mod:`blokrun.config`), named in
#: the errors here.
COMPRESSION_ENV: Final = "BLOKRUN_COMPRESSION"
THRESHOLD_ENV: Final = "BLOKRUN_COMPRESSION_THRESHOLD"

Compression = Literal["none", "zlib", "zstd"]

_NAMES: Final = ("none", "zlib", "zstd")
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


class _ZstdContexts(threading.local):
    """One compressor and one decompressor per thread (zstandard's are not thread safe)."""

    cctx: zstandard.ZstdCompressor | None = None
    dctx: zstandard.ZstdDecompressor | None = None


class Compressor:
    """Compresses payloads of at least ``threshold`` bytes with ``name`` at ``level``
    (default 1), and decompresses records of any compression."""

    __slots__ = ("_level", "_threshold", "_zstd", "_zstd_ctx", "name")

    def __init__(self, name: Compression, threshold: int, level: int | None = None) -> None:
        if name not in _NAMES:
            raise ConfigError(
                f"compression {name!r}: expected none, zlib or zstd", variable=COMPRESSION_ENV
            )
        if isinstance(threshold, bool) or not isinstance(threshold, int) or threshold < 0:
            raise ConfigError(
                f"compression threshold {threshold!r}: expected a whole number of bytes >= 0",
                variable=THRESHOLD_ENV,
            )
        self.name: Compression = name
        self._threshold = threshold
        self._level = _DEFAULT_LEVEL.get(name, 0) if level is None else level
        self._zstd: ModuleType | None = None
        self._zstd_ctx = _ZstdContexts()
        if name == "zlib" and not -1 <= self._level <= 9:
            raise ConfigError(f"zlib level {self._level}: expected -1 to 9")
        if name == "zstd":
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

    def describe(self) -> str:
        """``zstd>=4096B`` or ``no compression``."""
        if self.name == "none":
            return "no compression"
        return f"{self.name}>={self._threshold}B"

    def pack(self, payload: bytes) -> tuple[Compression, bytes]:
        """How ``payload`` is stored and its stored form: compressed when it is at least
        ``threshold`` bytes and that makes it smaller, else ``("none", payload)``."""
        if self.name != "none" and len(payload) >= self._threshold:
            packed = self._compress(payload)
            if len(packed) < len(payload):
                return self.name, packed
        return "none", payload

    def _compress(self, payload: bytes) -> bytes:
        if self.name == "zlib":
            return zlib.compress(payload, self._level)
        assert self._zstd is not None
        ctx = self._zstd_ctx
        if ctx.cctx is None:
            ctx.cctx = self._zstd.ZstdCompressor(level=self._level, write_content_size=True)
        return ctx.cctx.compress(payload)

    def unpack(self, name: Compression, body: bytes | memoryview, fail: Fail) -> bytes:
        """``body`` decompressed from ``name``; anything wrong with it is ``fail(message)``."""
        if name == "zlib":
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
