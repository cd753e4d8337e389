"""Filesystem store: one file per key, written atomically, one thread hop per operation.

Layout: every key is a file directly in the datasource folder. A key maps to a safe file
name by percent-encoding every byte outside ``[A-Za-z0-9_.-]`` (and a leading ``.``), so a
key or request id can never leave the folder (``../../etc/passwd`` becomes
``%2E.%2F%2E.%2Fetc%2Fpasswd``). The encoding keeps prefixes, so ``keys(prefix)`` filters
names without opening files. A name longer than 200 bytes is stored as ``~<sha256>`` and
its key kept in the file header.

A write goes to a temp file (``.tmp-*``, never a valid key name), is fsynced, renamed over
the target with ``os.replace`` and the folder is fsynced: a reader sees the old or the new
bytes, never a torn file, and a completed save survives a machine crash. Setting
``DATASOURCE_<NAME>_FSYNC=false`` trades that last guarantee for speed.

File format: ``b"BKF1"``, expiry (float64 big-endian, Unix seconds, 0 = none), key length
(uint16) and the key (only for hashed names), then the data. Expiry is enforced on read.
We measured aiofiles at 2-3x the cost of one ``anyio.to_thread`` hop per operation (it
takes one hop per call), so plain ``os`` calls run inside a single hop.

Leases (:class:`~blokrun.datasources.protocol.LeaseStore`): a lease key maps to ``<name>``
with the same encoding as a key file, and the lease has two files in the folder whose names
start with ``.``, which no key file name does, so ``keys()`` and ``size()`` never list them
(no sub-folder: the folder holds only files):

* ``.lock-<name>``: empty, locked with ``flock``. It is never replaced, so every process
  locks the same inode. Only :meth:`FilesystemStore.delete_lease` unlinks it, while holding
  the exclusive lock; whoever then gets a lock on the unlinked inode sees ``st_nlink == 0``
  and starts over on the path (a fresh inode), so two processes can never both believe they
  hold the lock on "the" lease.
* ``.lease-<name>``: the state, JSON ``{"owner", "token", "expires_at"}`` (wall clock
  ``time.time()``), replaced by temp file + fsync + rename under the exclusive lock, so it
  is never torn, not even by a crash, and the token never goes back (a new lease file's
  token is the clock in microseconds: ``next_token``). It is read
  without a lock (``read_lease``): a rename is atomic.

``acquire_lease`` / ``renew_lease`` / ``release_lease`` / ``delete_lease`` take the
exclusive lock. ``save_batch_fenced`` takes the shared lock, reads the token, compares it,
and only then writes every entry the normal atomic way before it unlocks: a takeover needs
the exclusive lock, so it waits for an in-flight fenced write, and a fenced write started
after a takeover sees the new token (``atomic_fencing``). Only ``acquire_lease`` creates a
lock file; the other calls treat a missing one as "no lease" (the state file is written
only after its lock file exists and deleted before it). Lock waits poll (``LOCK_NB`` with
a short back-off) up to the driver's ``timeout`` and then raise
:class:`~blokrun.errors.DatasourceUnavailable`, so a holder frozen (``SIGSTOP``) in the
middle of a fenced write cannot hang the others.

``flock`` locks belong to an open file, not to a process (unlike ``fcntl``/``lockf`` record
locks), so two stores in one process and threads exclude each other too. It is reliable for
**processes on one machine on a local filesystem**. On NFS, SMB/CIFS and other network or
FUSE filesystems, ``flock`` may be local to one client, emulated, or not honoured at all:
leases there are **not** safe, and two machines sharing a folder must not rely on them.
With ``FSYNC=false`` lease files are not fsynced either: a machine crash may then lose the
latest token, which is harmless only because every holder on that machine died with it.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import secrets
import struct
import time
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import orjson

from blokrun.datasources.fs_index import SqliteIndex
from blokrun.datasources.index import split_index
from blokrun.datasources.protocol import Capabilities, LeaseState, StoreHealth, next_token
from blokrun.errors import DatasourceError, DatasourceUnavailable

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Sequence

    from blokrun.datasources.index import IndexQuery, IndexRow
    from blokrun.datasources.protocol import Entry
    from blokrun.datasources.settings import DatasourceSettings

__all__ = ["FilesystemStore", "create", "decode_name", "encode_name"]

_MAGIC = b"BKF1"
_HEADER = struct.Struct(">4sdH")
_SAFE = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-")
_MAX_NAME = 200
_LOCK = ".lock-"
_STATE = ".lease-"
_CAPS = Capabilities(
    native_ttl=False,
    native_batch=True,
    atomic_batch=False,
    self_timed=True,
    leases=True,
    atomic_fencing=True,
)


def encode_name(key: str) -> str:
    """The file name for ``key``: reversible, prefix-preserving, never a path."""
    raw = key.encode("utf-8")
    out = []
    for i, b in enumerate(raw):
        if b in _SAFE and not (i == 0 and b == 0x2E):
            out.append(chr(b))
        else:
            out.append(f"%{b:02X}")
    return "".join(out)


def decode_name(name: str) -> str:
    """Inverse of :func:`encode_name`."""
    out = bytearray()
    i = 0
    while i < len(name):
        c = name[i]
        if c == "%":
            out.append(int(name[i + 1 : i + 3], 16))
            i += 3
        else:
            out.append(ord(c))
            i += 1
    return out.decode("utf-8")


def _hashed(key: str) -> str:
    return "~" + hashlib.sha256(key.encode("utf-8")).hexdigest()


class FilesystemStore:
    """A folder of files; see the module docstring."""

    __slots__ = ("_clock", "_connected", "_dir_fd", "_fsync", "_index", "_root", "_timeout")

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        fsync: bool = True,
        timeout: float = 5.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._root = Path(root)
        self._clock = clock  # wall-clock seconds: TTLs and lease expiry (tests pass a fake)
        self._fsync = fsync
        self._timeout = timeout  # bounds a wait for a lease lock
        self._connected = False
        self._dir_fd: int | None = None
        #: the run index (blokrun.datasources.fs_index), opened on first use
        self._index = SqliteIndex(self._root, fsync=fsync, timeout=timeout)

    @property
    def capabilities(self) -> Capabilities:
        return _CAPS

    @property
    def is_connected(self) -> bool:
        return self._connected

    @property
    def root(self) -> Path:
        return self._root

    async def connect(self) -> None:
        if self._connected:
            return
        await anyio.to_thread.run_sync(self._connect_sync)
        self._connected = True

    def _connect_sync(self) -> None:
        try:
            self._root.mkdir(parents=True, exist_ok=True)
            probe = self._root / f".tmp-probe-{secrets.token_hex(4)}"
            probe.write_bytes(b"")
            probe.unlink()
            self._dir_fd = os.open(self._root, os.O_RDONLY)
        except OSError as exc:
            raise DatasourceUnavailable(
                f"folder {str(self._root)!r} is not writable: {exc.strerror or exc}"
            ) from exc

    async def close(self) -> None:
        self._index.close()
        if self._dir_fd is not None:
            os.close(self._dir_fd)
            self._dir_fd = None
        self._connected = False

    # -- sync helpers, each called inside one thread hop ------------------------------------

    def _path_for(self, key: str) -> tuple[Path, bool]:
        name = encode_name(key)
        if len(name) > _MAX_NAME:
            return self._root / _hashed(key), True
        return self._root / name, False

    def _write_one(self, key: str, data: bytes, ttl: float | None) -> None:
        path, hashed = self._path_for(key)
        key_bytes = key.encode("utf-8") if hashed else b""
        expires = 0.0 if ttl is None else self._clock() + ttl
        header = _HEADER.pack(_MAGIC, expires, len(key_bytes)) + key_bytes
        self._replace(path, header + data)

    def _replace(self, path: Path, blob: bytes) -> None:
        """Write ``blob`` to a temp file next to ``path``, fsync, rename it over ``path``."""
        tmp = path.parent / f".tmp-{secrets.token_hex(8)}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # vars may be secret
        try:
            try:
                view = memoryview(blob)
                while view:
                    n = os.write(fd, view)
                    view = view[n:]
                if self._fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise

    def _sync_dir(self) -> None:
        if self._fsync and self._dir_fd is not None:
            os.fsync(self._dir_fd)

    def _read_file(self, path: Path, now: float) -> tuple[str | None, bytes] | None:
        """``(stored key or None, data)`` of a live file, ``None`` if absent or expired."""
        try:
            with open(path, "rb") as fh:
                blob = fh.read()
        except FileNotFoundError:
            return None
        if len(blob) < _HEADER.size:
            raise DatasourceError(f"file {path.name!r} is truncated (no header)")
        magic, expires, klen = _HEADER.unpack_from(blob)
        if magic != _MAGIC:
            raise DatasourceError(f"file {path.name!r} is not a blokrun file")
        if expires and expires <= now:
            # Not unlinked here: a writer may have replaced the file since we read it.
            return None
        start = _HEADER.size + klen
        stored = blob[_HEADER.size : start].decode("utf-8") if klen else None
        return stored, blob[start:]

    def _load_one(self, key: str, now: float) -> bytes | None:
        path, hashed = self._path_for(key)
        found = self._read_file(path, now)
        if found is None:
            return None
        stored, data = found
        if hashed and stored != key:  # a sha256 collision would land here
            return None
        return data

    def _save_sync(self, entries: Sequence[Entry]) -> None:
        entries, rows = split_index(entries)
        if rows:  # pending and durable before the files: see blokrun.datasources.fs_index
            self._index.write(rows, pending=True)
        for key, data, ttl in entries:
            self._write_one(key, data, ttl)
        self._sync_dir()
        if rows:
            self._index.confirm(rows)

    def _load_many(self, keys: Sequence[str]) -> dict[str, bytes]:
        now = self._clock()
        out: dict[str, bytes] = {}
        for key in keys:
            data = self._load_one(key, now)
            if data is not None:
                out[key] = data
        return out

    def _delete_many(self, keys: Sequence[str]) -> int:
        n = 0
        for key in keys:
            try:
                os.unlink(self._path_for(key)[0])
                n += 1
            except FileNotFoundError:
                pass
        if n:
            self._sync_dir()
        return n

    def _list(self, prefix: str) -> list[str]:
        now = self._clock()
        encoded = encode_name(prefix)
        out: list[str] = []
        with os.scandir(self._root) as it:
            for entry in it:
                name = entry.name
                if name.startswith("."):  # .tmp-*, .lock-*, .lease-*: never a key's file
                    continue
                if name.startswith("~"):
                    found = self._read_file(Path(entry.path), now)
                    if found is not None and found[0] is not None and found[0].startswith(prefix):
                        out.append(found[0])
                    continue
                if not name.startswith(encoded):
                    continue
                if self._is_live(entry.path, now):
                    out.append(decode_name(name))
        return out

    @staticmethod
    def _is_live(path: str, now: float) -> bool:
        try:
            with open(path, "rb") as fh:
                head = fh.read(_HEADER.size)
        except FileNotFoundError:
            return False
        if len(head) < _HEADER.size:
            return True  # corrupt but present: let load() report it
        expires = _HEADER.unpack(head)[1]
        return not (expires and expires <= now)

    # -- the contract ------------------------------------------------------------------------

    async def save(self, key: str, data: bytes, ttl: float | None = None) -> None:
        await anyio.to_thread.run_sync(self._save_sync, [(key, data, ttl)])

    async def load(self, key: str) -> bytes | None:
        return await anyio.to_thread.run_sync(self._load_one, key, self._clock())

    async def exists(self, key: str) -> bool:
        return await self.load(key) is not None

    async def delete(self, key: str) -> bool:
        return await anyio.to_thread.run_sync(self._delete_many, [key]) > 0

    async def save_batch(self, entries: Sequence[Entry]) -> None:
        await anyio.to_thread.run_sync(self._save_sync, list(entries))

    async def load_batch(self, keys: Sequence[str]) -> dict[str, bytes]:
        return await anyio.to_thread.run_sync(self._load_many, list(keys))

    async def delete_batch(self, keys: Sequence[str]) -> int:
        return await anyio.to_thread.run_sync(self._delete_many, list(keys))

    async def describe(self) -> StoreHealth:
        """The folder: there, writable, free space, filesystem type (``blokrun doctor``)."""
        from blokrun.datasources.health import folder_health

        return await anyio.to_thread.run_sync(lambda: folder_health(self._root, fsync=self._fsync))

    async def keys(self, prefix: str = "") -> AsyncIterator[str]:
        for key in await anyio.to_thread.run_sync(self._list, prefix):
            yield key

    async def size(self) -> int:
        return len(await anyio.to_thread.run_sync(self._list, ""))

    # -- leases: sync helpers, each called inside one thread hop ----------------------------

    @staticmethod
    def _lease_name(key: str) -> str:
        name = encode_name(key)
        return _hashed(key) if len(name) > _MAX_NAME else name

    def _lock(self, name: str, *, exclusive: bool, create: bool) -> int | None:
        """An fd that holds ``flock`` on the lease's lock file (close it to unlock).

        ``None`` if the lock file does not exist and ``create`` is false: no lease.
        """
        path = self._root / (_LOCK + name)
        flags = os.O_RDWR | os.O_CLOEXEC | (os.O_CREAT if create else 0)
        mode = (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB
        deadline: float | None = None
        delay = 0.0002
        while True:
            try:
                fd = os.open(path, flags, 0o600)
            except FileNotFoundError:
                if create:  # the folder itself is gone
                    raise
                return None
            try:
                while True:
                    try:
                        fcntl.flock(fd, mode)
                        break
                    except BlockingIOError:
                        now = time.monotonic()
                        if deadline is None:
                            deadline = now + self._timeout
                        elif now >= deadline:
                            raise DatasourceUnavailable(
                                f"lease {name!r} still locked by another holder after "
                                f"{self._timeout:g}s"
                            ) from None
                        time.sleep(delay)
                        delay = min(delay * 2, 0.005)
                if os.fstat(fd).st_nlink:
                    return fd
            except BaseException:
                os.close(fd)
                raise
            os.close(fd)  # delete_lease unlinked it while we waited: lock the new one

    def _read_state(self, name: str) -> LeaseState | None:
        try:
            with open(self._root / (_STATE + name), "rb") as fh:
                raw = fh.read()
        except FileNotFoundError:
            return None
        try:
            doc = orjson.loads(raw)
            owner, token, expires_at = doc["owner"], doc["token"], doc["expires_at"]
        except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
            raise DatasourceError(f"lease file {name!r} is corrupt: {exc}") from exc
        if (
            not isinstance(owner, str)
            or not isinstance(token, int)
            or isinstance(token, bool)
            or not isinstance(expires_at, int | float)
        ):
            raise DatasourceError(f"lease file {name!r} is corrupt: unexpected field types")
        return LeaseState(owner, token, float(expires_at))

    def _write_state(self, name: str, state: LeaseState) -> None:
        doc = {"owner": state.owner, "token": state.token, "expires_at": state.expires_at}
        self._replace(self._root / (_STATE + name), orjson.dumps(doc))
        self._sync_dir()

    def _acquire_sync(self, key: str, owner: str, ttl: float) -> LeaseState:
        name = self._lease_name(key)
        fd = self._lock(name, exclusive=True, create=True)
        if fd is None:  # unreachable: create=True opens or raises
            raise DatasourceError(f"lease {name!r}: no lock file")
        try:
            now = self._clock()
            current = self._read_state(name)
            if current is not None and current.live(now) and current.owner != owner:
                return current
            state = LeaseState(owner, next_token(current.token if current else None), now + ttl)
            self._write_state(name, state)
            return state
        finally:
            os.close(fd)

    def _renew_sync(self, key: str, owner: str, token: int, ttl: float) -> bool:
        name = self._lease_name(key)
        fd = self._lock(name, exclusive=True, create=False)
        if fd is None:
            return False
        try:
            current = self._read_state(name)
            if current is None or current.token != token:
                return False
            self._write_state(name, LeaseState(owner, token, self._clock() + ttl))
            return True
        finally:
            os.close(fd)

    def _release_sync(self, key: str, token: int) -> None:
        name = self._lease_name(key)
        fd = self._lock(name, exclusive=True, create=False)
        if fd is None:
            return
        try:
            current = self._read_state(name)
            if current is not None and current.token == token:
                self._write_state(name, LeaseState(current.owner, token, 0.0))
        finally:
            os.close(fd)

    def _fenced(self, lease_key: str, token: int, action: Callable[[], object]) -> bool:
        """``action()`` iff ``token`` is the latest of ``lease_key``, under the lease's
        shared lock, held until the action is done: no takeover between."""
        name = self._lease_name(lease_key)
        fd = self._lock(name, exclusive=False, create=False)
        if fd is None:
            return False
        try:
            current = self._read_state(name)
            if current is None or current.token != token:
                return False
            action()
            return True
        finally:
            os.close(fd)

    def _save_fenced_sync(self, entries: Sequence[Entry], lease_key: str, token: int) -> bool:
        return self._fenced(lease_key, token, lambda: self._save_sync(entries))

    def _delete_fenced_sync(self, keys: Sequence[str], lease_key: str, token: int) -> bool:
        return self._fenced(lease_key, token, lambda: self._delete_many(list(keys)))

    def _delete_lease_sync(self, key: str, token: int | None) -> bool:
        name = self._lease_name(key)
        fd = self._lock(name, exclusive=True, create=False)
        if fd is None:
            return False
        try:
            if token is not None:
                current = self._read_state(name)
                if current is None or current.token != token:
                    return False
            try:
                os.unlink(self._root / (_STATE + name))
                removed = True
            except FileNotFoundError:
                removed = False
            # Unlinked while we hold it: a waiter on this inode sees st_nlink == 0 and
            # retries on the path, so no two processes hold "the" lock on different inodes.
            os.unlink(self._root / (_LOCK + name))
            self._sync_dir()
            return removed
        finally:
            os.close(fd)

    # -- leases: the contract ----------------------------------------------------------------

    async def acquire_lease(self, key: str, owner: str, ttl: float) -> LeaseState:
        return await anyio.to_thread.run_sync(self._acquire_sync, key, owner, ttl)

    async def renew_lease(self, key: str, owner: str, token: int, ttl: float) -> bool:
        return await anyio.to_thread.run_sync(self._renew_sync, key, owner, token, ttl)

    async def release_lease(self, key: str, owner: str, token: int) -> None:
        await anyio.to_thread.run_sync(self._release_sync, key, token)

    async def save_batch_fenced(self, entries: Sequence[Entry], lease_key: str, token: int) -> bool:
        return await anyio.to_thread.run_sync(
            self._save_fenced_sync, list(entries), lease_key, token
        )

    async def read_lease(self, key: str) -> LeaseState | None:
        return await anyio.to_thread.run_sync(self._read_state, self._lease_name(key))

    async def delete_batch_fenced(self, keys: Sequence[str], lease_key: str, token: int) -> bool:
        return await anyio.to_thread.run_sync(
            self._delete_fenced_sync, list(keys), lease_key, token
        )

    async def delete_lease(self, key: str, token: int | None = None) -> bool:
        return await anyio.to_thread.run_sync(self._delete_lease_sync, key, token)

    # -- the run index (blokrun.datasources.fs_index) ---------------------------------------

    async def index_query(self, space: str, query: IndexQuery) -> list[IndexRow]:
        return await anyio.to_thread.run_sync(self._index.query, space, query)

    async def index_counts(self, space: str) -> dict[str, int]:
        return await anyio.to_thread.run_sync(self._index.counts, space)

    async def index_fix(self, space: str, expected: IndexRow, actual: IndexRow | None) -> bool:
        return await anyio.to_thread.run_sync(self._index.fix, space, expected, actual)

    async def index_fill(
        self, space: str, rows: Sequence[IndexRow], *, built: bool = False
    ) -> None:
        await anyio.to_thread.run_sync(self._index.fill, space, list(rows), built)

    async def index_built(self, space: str) -> bool:
        return await anyio.to_thread.run_sync(self._index.built, space)

    async def index_remove(
        self, space: str, request_ids: Sequence[str], *, fence: tuple[str, int] | None = None
    ) -> bool:
        return await anyio.to_thread.run_sync(
            self._index_remove_sync, space, list(request_ids), fence
        )

    def _index_remove_sync(
        self, space: str, request_ids: list[str], fence: tuple[str, int] | None
    ) -> bool:
        if fence is None:
            self._index.remove(space, request_ids)
            return True
        return self._fenced(*fence, lambda: self._index.remove(space, request_ids))


def create(settings: DatasourceSettings) -> FilesystemStore:
    if not settings.path:
        raise DatasourceError("a filesystem datasource needs a path (DATASOURCE_<NAME>_PATH)")
    return FilesystemStore(settings.path, fsync=settings.fsync, timeout=settings.timeout)
