"""Redis store: ``redis.asyncio`` (hiredis parser) over a bounded, blocking connection pool.

Design decisions:

* **Keys and values.** A key is stored as its UTF-8 bytes, a value as the raw bytes given;
  replies are never decoded (``decode_responses=False``). An injected client that decodes
  replies is refused, since it would hand back ``str`` instead of bytes.
* **TTL is native**: ``SET key value PX <ms>`` (rounded *up* to whole milliseconds, so a
  key never expires before it was asked to). Redis hides an expired key from
  ``GET``/``MGET``/``EXISTS``/``SCAN`` even before it reclaims the memory.
* **Batches are one round trip.** ``save_batch`` is one ``MULTI``/``EXEC``: an ``MSET`` of
  the entries without TTL, then ``SET key value PX ms`` for each entry with one. It is all
  or nothing (Redis discards the transaction if the connection drops before ``EXEC`` or a
  command is refused while queueing, e.g. out of memory), hence ``atomic_batch``.
  Atomicity is cheap here; what costs is redis-py's CPU per queued command, hence one
  ``MSET`` (figures: ``benchmarks/PROFILE.md``, "Design measurements"). ``load_batch`` is
  one ``MGET``, ``delete_batch`` one ``DEL``.
* **keys(prefix)** walks ``SCAN`` with ``MATCH <escaped prefix>*``, ``COUNT 1000`` and
  ``TYPE string`` (Redis 6+; lease hashes are not values), never ``KEYS``: the glob
  metacharacters ``* ? [ ] \\`` of the prefix are backslash-escaped so the prefix is
  literal, and every key is checked again with ``startswith``. SCAN may return a key twice
  while the server resizes its table, so returned keys are remembered to yield each once.
  Keys that are not UTF-8 cannot have been written by blokrun and are skipped.
* **size()** counts with SCAN, not ``DBSIZE``: the wrapper calls it only when the datasource
  has no prefix, i.e. it owns the whole database, but ``DBSIZE`` also counts keys that have
  expired and not been reclaimed yet (the contract forbids counting those) and keys some
  other program wrote that ``keys()`` would skip. Correct beats O(1) here.
* **Leases** are a hash (``owner``, ``token``, ``expires_ms``) at the lease key, with no
  Redis TTL, so the token count survives expiry and release; ``delete_lease`` drops it, and
  a new hash's token is the server clock in microseconds (``next_token``), above any token
  issued before the deletion or before the server lost its data.
  Each operation is one Lua script (``EVALSHA``, reloaded if the server lost it), atomic on
  the server and timed by its clock (``TIME``: allowed before writes since Redis 5 replicates
  script effects, the only mode in 7). ``save_batch_fenced`` is one script that compares
  the token, then writes every entry or none: fencing is atomic (``atomic_fencing``); one
  ``EVALSHA`` costs redis-py less than ``MULTI``/``MSET``/``EXEC`` (PROFILE.md). ``load``
  of a lease key is ``None`` (no value there). Limits:
  Redis Cluster would need the lease and the run's keys in one hash slot (a ``{tag}``);
  not supported. ``expires_at`` is server time, so ``live()`` on a host whose clock is
  skewed is off by the skew.
* **The hot path** (the scripts, ``load_batch``'s ``MGET``) skips redis-py's per-command
  machinery: the command is packed by hiredis (C) and its reply read straight off a pooled
  connection (``RedisStore._direct``), with redis-py's semantics kept (one resend on a
  dropped connection, a timeout or a cancellation closes the connection). The pool hands a
  free connection out without its condition when nobody waits (``_QuickPool``). Client CPU
  of a checkpoint: ``benchmarks/PROFILE.md``, "Issue 18, round three".
* **Bounded.** ``socket_connect_timeout`` and ``socket_timeout`` are the datasource timeout;
  the pool blocks at most that long for a free connection (``POOL_SIZE``, default 32) instead
  of failing a burst; one immediate retry on a dropped connection (every command here is
  idempotent; a repeated ``acquire_lease`` only re-takes our own lease with the next
  token), none on a timeout, so a dead server costs at most one timeout.
* **Errors.** Connection errors, timeouts and ``OSError`` become ``DatasourceUnavailable``
  naming ``host:port`` (or the socket path); a wrong password and every other Redis error
  become ``DatasourceError``. The password is scrubbed from any library message.
* **Durability** is not claimed: Redis acknowledges a write from memory, and whether it is
  fsynced (``appendfsync always``) is server configuration this driver cannot rely on.
"""

from __future__ import annotations

import asyncio
import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import parse_qs, quote, unquote, urlsplit

import anyio
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import (
    AuthenticationError,
    AuthorizationError,
    NoScriptError,
    RedisError,
    ResponseError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from blokrun.datasources import redis_index
from blokrun.datasources.index import decode_row, is_index_key
from blokrun.datasources.protocol import (
    OWNED_MARK,
    RELEASE_KEY,
    Capabilities,
    LeaseState,
    StoreHealth,
)
from blokrun.errors import DatasourceError, DatasourceUnavailable
from blokrun.redact import mask_url

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence

    from redis.commands.core import AsyncScript

    from blokrun.datasources.index import IndexQuery, IndexRow
    from blokrun.datasources.protocol import Entry, Group
    from blokrun.datasources.settings import DatasourceSettings

__all__ = ["DEFAULT_POOL_SIZE", "RedisStore", "create", "escape_glob"]

_hiredis_pack: Callable[[tuple[Any, ...]], bytes] | None
try:  # redis[hiredis]: the C packer (redis-py's asyncio connections pack in Python)
    from hiredis import pack_command as _hiredis_pack
except ImportError:  # pragma: no cover - hiredis is a dependency
    _hiredis_pack = None

DEFAULT_POOL_SIZE = 32
SCAN_COUNT = 1000
_CAPS = Capabilities(
    native_ttl=True,
    native_batch=True,
    atomic_batch=True,
    durable=False,
    self_timed=True,
    leases=True,
    atomic_fencing=True,
    group_commit=True,
    owned_writes=True,
    release_in_batch=True,
    lease_reads=True,
    lease_writes=True,
    lease_matches=True,
)
_GLOB = frozenset(b"*?[]\\")

# The lease scripts. A lease is a hash at KEYS[1]: owner, token, expires_ms (server clock,
# unix milliseconds), with no Redis TTL. Numbers are formatted with %d, so the stored fields
# are plain integers whatever float formatting the server gives a Lua number.
_NOW_MS = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# Takes the lease at KEYS[1] for ARGV[1] (ttl_ms ARGV[2]) when it is free, expired or already
# ARGV[1]'s; leaves held, token, expires as stored. The new token is the server clock in
# microseconds for a lease with no hash, else max(its token, that clock) + 1: it never goes
# back, not even once the hash was deleted (gc) or lost with the server's data, so a paused
# holder's old token is never issued again (LeaseStore's rules).
_TAKE = (
    _NOW_MS
    + """
local cur = redis.call('HMGET', KEYS[1], 'owner', 'token', 'expires_ms')
local token = tonumber(cur[2])
local expires = tonumber(cur[3]) or 0
local held = cur[1]
if not (held and held ~= ARGV[1] and expires > now) then
  held = ARGV[1]
  local us = tonumber(t[1]) * 1000000 + tonumber(t[2])
  if token then token = math.max(token, us) + 1 else token = us end
  expires = now + tonumber(ARGV[2])
  redis.call('HSET', KEYS[1], 'owner', held, 'token', string.format('%d', token),
             'expires_ms', string.format('%d', expires))
end
token = token or 0
"""
)
# ARGV: owner, ttl_ms. Returns {owner, token, expires_ms} as stored.
_ACQUIRE = _TAKE + "return {held, token, expires}\n"
# _ACQUIRE, then the values of KEYS[2..] (MGET: false where none, or not a string):
# {owner, token, expires_ms, value...}. A script runs alone, so the values are read after
# every write fenced by an earlier token.
_ACQUIRE_READING = (
    _TAKE
    + """
local reply = {held, token, expires}
if #KEYS > 1 then
  local values = redis.call('MGET', unpack(KEYS, 2))
  for i = 1, #KEYS - 1 do reply[3 + i] = values[i] end
end
return reply
"""
)

# ARGV: owner, token, ttl_ms. Returns 1 if renewed.
_RENEW = (
    _NOW_MS
    + """
if tonumber(redis.call('HGET', KEYS[1], 'token')) ~= tonumber(ARGV[2]) then return 0 end
redis.call('HSET', KEYS[1], 'owner', ARGV[1],
           'expires_ms', string.format('%d', now + tonumber(ARGV[3])))
return 1
"""
)

# KEYS: lease, then the keys to delete; ARGV: token. Deletes them iff the token is the
# latest; returns 1 if it did, 0 if the lease was lost.
_DELETE_FENCED = """
if tonumber(redis.call('HGET', KEYS[1], 'token')) ~= tonumber(ARGV[1]) then return 0 end
for i = 2, #KEYS, 1000 do
  redis.call('DEL', unpack(KEYS, i, math.min(i + 999, #KEYS)))
end
return 1
"""

# ARGV: token. Drops the lease hash iff the token is the latest; returns 1 if it did.
_DELETE_LEASE = """
if tonumber(redis.call('HGET', KEYS[1], 'token')) ~= tonumber(ARGV[1]) then return 0 end
redis.call('DEL', KEYS[1])
return 1
"""

# ARGV: token. Ends the lease now, keeping owner and token.
_RELEASE = """
if tonumber(redis.call('HGET', KEYS[1], 'token')) ~= tonumber(ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], 'expires_ms', '0')
return 1
"""

# KEYS: lease, then the entry keys; ARGV: token, then data and px ('' = no TTL) per entry.
# Nothing is written unless the token is the latest; then every SET runs (SET cannot fail
# on a key of another type, and once a script has written Redis does not stop it on OOM).
# An entry whose px is 'ix' is a run index row (blokrun.datasources.redis_index): KEYS holds
# the index's space, ARGV the packed row. A px starting with 'o' is an owned entry (the rest
# is its px): set only if the key holds nothing or a value with the same owner -- the bytes
# up to the first NUL (Capabilities.owned_writes). An entry whose px is 'rl' (its key: the
# lease key) ends the fencing lease, as _RELEASE does (Capabilities.release_in_batch).
_OWNED = """
local refused = {}
local function owned(key, data)
  local z = string.find(data, '\\0', 1, true)
  if not z then return false end
  local cur = redis.pcall('GET', key)
  if type(cur) == 'table' then return false end
  return (not cur) or string.sub(cur, 1, z) == string.sub(data, 1, z)
end
local function put(key, data, px)
  if string.sub(px, 1, 1) == 'o' then
    if not owned(key, data) then
      refused[#refused + 1] = key
      return
    end
    px = string.sub(px, 2)
  end
  if px == '' then
    redis.call('SET', key, data)
  else
    redis.call('SET', key, data, 'PX', px)
  end
end
"""
_SAVE_FENCED = (
    redis_index.PUT
    + _OWNED
    + """
if tonumber(redis.call('HGET', KEYS[1], 'token')) ~= tonumber(ARGV[1]) then return 0 end
for i = 2, #KEYS do
  local px = ARGV[2 * i - 1]
  if px == 'ix' then
    ix_put(KEYS[i], ARGV[2 * i - 2], false)
  elseif px == 'rl' then
    redis.call('HSET', KEYS[1], 'expires_ms', '0')
  else
    put(KEYS[i], ARGV[2 * i - 2], px)
  end
end
local reply = {1}
for _, key in ipairs(refused) do reply[#reply + 1] = key end
return reply
"""
)

# Group commit: many runs' saves in one script. Per group, ARGV holds its entry count, '1'
# if fenced (its lease key then comes first in KEYS) and its token, then data and px per
# entry; KEYS the lease key (if fenced) and the entry keys. Returns 1/0 per group.
_SAVE_GROUPS = (
    redis_index.PUT
    + _OWNED
    + """
local out, k, a = {}, 1, 1
while a <= #ARGV do
  local n, fenced, token = tonumber(ARGV[a]), ARGV[a + 1] == '1', tonumber(ARGV[a + 2])
  a = a + 3
  local ok = true
  if fenced then
    ok = tonumber(redis.call('HGET', KEYS[k], 'token')) == token
    k = k + 1
  end
  for _ = 1, n do
    if ok then
      if ARGV[a + 1] == 'ix' then
        ix_put(KEYS[k], ARGV[a], false)
      elseif ARGV[a + 1] == 'rl' then
        if fenced then redis.call('HSET', KEYS[k], 'expires_ms', '0') end
      else
        put(KEYS[k], ARGV[a], ARGV[a + 1])
      end
    end
    k, a = k + 1, a + 2
  end
  out[#out + 1] = ok and 1 or 0
end
for _, key in ipairs(refused) do out[#out + 1] = key end
return out
"""
)


# _ACQUIRE_READING of ARGV[3] keys (KEYS[2..]), then -- if ARGV[1] now holds the lease and
# each of those keys holds what ARGV[3 + i] expects ('-': nothing of any type; '=' and
# bytes: a string of exactly those bytes), or already the bytes this very call writes
# there (the same command run again after its reply was lost: idempotent) -- the entries
# after them written as _SAVE_FENCED writes them (data and px per entry from ARGV[4 + r];
# plain and index entries). Returns {owner, token, expires_ms, written (0/1), value...}.
_ACQUIRE_WRITING = (
    redis_index.PUT
    + _OWNED
    + _TAKE
    + """
local r = tonumber(ARGV[3])
local reply = {held, token, expires, 0}
local free = held == ARGV[1]
if r > 0 then
  local mine = {}
  for i = 2 + r, #KEYS do mine[KEYS[i]] = ARGV[4 + r + 2 * (i - 2 - r)] end
  local values = redis.call('MGET', unpack(KEYS, 2, 1 + r))
  for i = 1, r do
    reply[4 + i] = values[i]
    if free and not (values[i] and values[i] == mine[KEYS[1 + i]]) then
      local want = ARGV[3 + i]
      if want == '-' then
        free = redis.call('EXISTS', KEYS[1 + i]) == 0
      else
        free = values[i] == string.sub(want, 2)
      end
    end
  end
end
if free then
  for i = 2 + r, #KEYS do
    local a = 4 + r + 2 * (i - 2 - r)
    if ARGV[a + 1] == 'ix' then
      ix_put(KEYS[i], ARGV[a], false)
    else
      put(KEYS[i], ARGV[a], ARGV[a + 1])
    end
  end
  reply[4] = 1
end
return reply
"""
)


@dataclass(frozen=True, slots=True)
class _Scripts:
    acquire: AsyncScript
    acquire_reading: AsyncScript
    acquire_writing: AsyncScript
    renew: AsyncScript
    release: AsyncScript
    save_fenced: AsyncScript
    save_groups: AsyncScript
    delete_fenced: AsyncScript
    delete_lease: AsyncScript
    ix_query: AsyncScript
    ix_fix: AsyncScript
    ix_fill: AsyncScript
    ix_remove: AsyncScript
    ix_remove_fenced: AsyncScript

    @classmethod
    def register(cls, client: Redis) -> _Scripts:
        """Hash the scripts for ``client`` (no round trip: loaded on first NOSCRIPT)."""
        return cls(
            client.register_script(_ACQUIRE),
            client.register_script(_ACQUIRE_READING),
            client.register_script(_ACQUIRE_WRITING),
            client.register_script(_RENEW),
            client.register_script(_RELEASE),
            client.register_script(_SAVE_FENCED),
            client.register_script(_SAVE_GROUPS),
            client.register_script(_DELETE_FENCED),
            client.register_script(_DELETE_LEASE),
            client.register_script(redis_index.QUERY),
            client.register_script(redis_index.FIX),
            client.register_script(redis_index.FILL),
            client.register_script(redis_index.REMOVE),
            client.register_script(redis_index.REMOVE_FENCED),
        )


async def _write(writer: asyncio.StreamWriter, data: Iterable[bytes], bound: float | None) -> None:
    writer.writelines(data)
    transport = writer.transport
    if transport.get_write_buffer_size() <= transport.get_write_buffer_limits()[0]:
        await writer.drain()  # not paused (at or below the low mark): no wait, no timer
    else:
        async with asyncio.timeout(bound or None):
            await writer.drain()


def _without_send_task(base: type[Any]) -> type[Any]:
    """``base`` with a send that is bounded by ``asyncio.timeout`` instead of
    ``asyncio.wait_for``, which on Python 3.11 wraps every command's send in a new task.

    The task cost more than the rest of the client on the checkpoint path (the send of one
    EVALSHA is two writes and a drain; figures in ``benchmarks/PROFILE.md``). Same behaviour
    otherwise: a timeout or an error closes the connection, as redis-py does. A drain with
    the transport's buffer at or below its low-water mark cannot wait (the transport is not
    paused then), so it gets no timer.
    Kept only while the redis-py internals it relies on are there (else ``base`` as it is).
    """
    needed = ("connect_check_health", "check_health", "disconnect", "send_packed_command")
    if not all(hasattr(base, name) for name in needed) or not hasattr(asyncio, "timeout"):
        return base

    async def send_packed_command(
        self: Any, command: bytes | str | Iterable[bytes], check_health: bool = True
    ) -> None:
        if not self.is_connected:
            await self.connect_check_health(check_health=False)
        if check_health:
            await self.check_health()
        if isinstance(command, str):
            command = command.encode()
        if isinstance(command, bytes):
            command = [command]
        try:
            await _write(self._writer, command, self.socket_timeout)
        except TimeoutError:
            await self.disconnect(nowait=True)
            raise RedisTimeoutError("Timeout writing to socket") from None
        except OSError as exc:
            await self.disconnect(nowait=True)
            raise RedisConnectionError(f"Error while writing to socket: {exc}") from exc
        except BaseException:
            await self.disconnect(nowait=True)
            raise

    return type(base.__name__, (base,), {"send_packed_command": send_packed_command})


class _QuickPool(BlockingConnectionPool):
    """redis-py's blocking pool, with a free connection handed out and taken back without
    its condition, timeout and event hooks when nobody waits for one.

    Measured: with the direct script path, ``get_connection`` and ``release`` were ~7% of a
    checkpointed step's client CPU on Redis and a fenced save costs ~50 µs less without
    them (``benchmarks/PROFILE.md``, "Issue 18, round three"); a lone caller finding a free
    connection needs none of it. The rest is the base class: a caller that finds no free
    connection (or others waiting) waits as before, bounded by the pool's timeout; a
    connection is still checked (connected, nothing unread) before it is used, and one that
    must reconnect goes back through the base class. Should redis-py's internals used here
    change, every call goes to the base class.
    """

    def _quiet(self) -> bool:
        """Nobody waits for a connection, and no maintenance or pool lock is in progress."""
        try:
            condition = self._condition  # held by a waiter that was woken, until it takes one
            return not (
                self._in_maintenance
                or condition._waiters
                or condition.locked()
                or self._lock.locked()
            )
        except AttributeError:
            return False

    async def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        free = getattr(self, "_available_connections", None)
        if args or kwargs or not free or not self._quiet():
            return await super().get_connection(*args, **kwargs)  # type: ignore[no-untyped-call]
        connection = free.pop()
        self._in_use_connections.add(connection)
        try:
            await self.ensure_connection(connection)
        except BaseException:
            await self.release(connection)
            raise
        return connection

    async def release(self, connection: Any) -> None:
        in_use: set[Any] = getattr(self, "_in_use_connections", set())
        if connection not in in_use or not self._quiet() or connection.should_reconnect():
            await super().release(connection)
            return
        in_use.remove(connection)
        self._available_connections.append(connection)


def _direct_ok(client: Redis) -> bool:
    """Whether commands may take :meth:`RedisStore._direct`: hiredis is there to pack them,
    and the client is not a single-connection one (which has its own lock and path)."""
    return _hiredis_pack is not None and client.connection is None


def escape_glob(prefix: str) -> bytes:
    """``prefix`` as a literal Redis glob: every ``* ? [ ] \\`` preceded by a backslash."""
    out = bytearray()
    for b in prefix.encode("utf-8"):
        if b in _GLOB:
            out.append(0x5C)
        out.append(b)
    return bytes(out)


def _ttl_ms(ttl: float) -> int:
    return max(1, math.ceil(ttl * 1000))


def _where(url: str) -> str:
    """``host:port`` or the socket path of a Redis URL (never its password)."""
    try:
        parts = urlsplit(url)
        if parts.scheme == "unix":
            return parts.path or "<unix socket>"
        return f"{parts.hostname or 'localhost'}:{parts.port or 6379}"
    except ValueError:
        return mask_url(url)


def _auth_failure(exc: BaseException) -> bool:
    """A refused password or ACL (redis-py wraps it in a plain ConnectionError on some paths)."""
    return isinstance(exc, AuthenticationError | AuthorizationError) or isinstance(
        exc.__cause__, AuthenticationError | AuthorizationError
    )


def _passwords(url: str) -> tuple[str, ...]:
    """The password of ``url`` (``:pw@`` or ``?password=``), raw and unquoted, to scrub."""
    try:
        parts = urlsplit(url)
        found = [parts.password or "", *parse_qs(parts.query).get("password", [])]
    except ValueError:
        return ()
    return tuple({form for pw in found if pw for form in (pw, unquote(pw), quote(pw, safe=""))})


class RedisStore:
    """A Redis database; see the module docstring."""

    __slots__ = (
        "_client",
        "_connected",
        "_owned",
        "_pool_size",
        "_scripts",
        "_secrets",
        "_timeout",
        "_url",
        "_where",
        "refused_owned",
    )

    def __init__(
        self,
        url: str | None = None,
        *,
        client: Redis | None = None,
        pool_size: int = DEFAULT_POOL_SIZE,
        timeout: float = 5.0,
    ) -> None:
        if (url is None) == (client is None):
            raise DatasourceError("a redis store needs exactly one of a URL or a client")
        self._url = url
        self._client = client
        self._owned = client is None
        self._connected = False
        self._pool_size = pool_size
        self._timeout = timeout
        self._secrets: tuple[str, ...] = ()
        self._scripts: _Scripts | None = None
        #: owned entries a write refused (another owner's), until the wrapper asks
        self.refused_owned: set[str] = set()
        if url is not None:
            self._where = _where(url)
            self._secrets = _passwords(url)
        else:
            assert client is not None
            kw = client.connection_pool.connection_kwargs
            self._where = kw.get("path") or f"{kw.get('host', 'localhost')}:{kw.get('port', 6379)}"
            if kw.get("decode_responses"):
                raise DatasourceError("the injected redis client must not decode responses")
            if kw.get("password"):
                self._secrets = (str(kw["password"]),)

    @property
    def capabilities(self) -> Capabilities:
        return _CAPS

    @property
    def is_connected(self) -> bool:
        return self._connected

    # -- lifecycle ---------------------------------------------------------------------------

    async def connect(self) -> None:
        if self._connected:
            return
        if self._client is None:
            assert self._url is not None
            try:
                pool = _QuickPool.from_url(
                    self._url,
                    max_connections=self._pool_size,
                    timeout=self._timeout,
                    socket_timeout=self._timeout,
                    socket_connect_timeout=self._timeout,
                    retry=Retry(NoBackoff(), 1, (RedisConnectionError,)),
                    decode_responses=False,
                )
            except (ValueError, TypeError) as exc:
                raise DatasourceError(
                    f"bad redis URL {mask_url(self._url)!r}: {self._scrub(exc)}"
                ) from exc
            pool.connection_class = _without_send_task(pool.connection_class)
            client = Redis(connection_pool=pool)
            try:
                with self.errors("connect"):
                    await client.ping()
            except BaseException:
                with anyio.CancelScope(shield=True):  # also when the wrapper's timeout fired
                    await pool.aclose()
                raise
            self._client = client
        else:
            with self.errors("connect"):
                await self._client.ping()
        self._scripts = _Scripts.register(self._client)
        self._connected = True

    async def close(self) -> None:
        self._connected = False
        if self._owned and self._client is not None:
            client, self._client = self._client, None
            await client.aclose()
            await client.connection_pool.aclose()

    def client(self) -> Redis:
        """The connected redis-py client: the public hook other blokrun parts (the run
        queue) use, with :meth:`errors` around their commands."""
        if not self._connected or self._client is None:
            raise DatasourceError(f"redis at {self._where} is not connected; call connect()")
        return self._client

    def _lua(self) -> _Scripts:
        self.client()
        assert self._scripts is not None  # registered by connect()
        return self._scripts

    @contextmanager
    def errors(self, op: str) -> Iterator[None]:
        """Translate redis-py errors raised inside into blokrun ones, password scrubbed."""
        try:
            yield
        except _REDIS_ERRORS as exc:
            raise self._error(exc, op) from exc

    def _error(self, exc: BaseException, op: str) -> DatasourceError:
        """What a redis-py error (one of ``_REDIS_ERRORS``) raised during ``op`` becomes;
        the hot saves call it from their own ``except`` (no generator per checkpoint)."""
        if isinstance(exc, RedisConnectionError | RedisTimeoutError | OSError):
            if _auth_failure(exc):  # a config problem: retrying will not help
                return DatasourceError(
                    f"redis at {self._where}: authentication failed during {op}: {self._scrub(exc)}"
                )
            return DatasourceUnavailable(
                f"redis at {self._where} unavailable during {op}: "
                f"{type(exc).__name__}: {self._scrub(exc)}"
            )
        return DatasourceError(
            f"redis at {self._where}: {op} failed: {type(exc).__name__}: {self._scrub(exc)}"
        )

    def _scrub(self, exc: BaseException) -> str:
        text = str(exc) or type(exc).__name__
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    async def describe(self) -> StoreHealth:
        """``INFO`` (version, mode, eviction) and ``DBSIZE``; reads only (``blokrun doctor``)."""
        from blokrun.datasources.health import redis_health

        client = self.client()
        with self.errors("describe"):
            try:
                info: dict[str, Any] = await client.info()
            except ResponseError:  # INFO renamed or disabled (some managed services)
                info = {}
            keys = int(await client.dbsize())
        db = client.connection_pool.connection_kwargs.get("db", 0)
        return redis_health(info, keys, db)

    # -- the contract ------------------------------------------------------------------------

    async def save(self, key: str, data: bytes, ttl: float | None = None) -> None:
        client = self.client()
        with self.errors("save"):
            await client.set(key, data, px=None if ttl is None else _ttl_ms(ttl))

    async def load(self, key: str) -> bytes | None:
        client = self.client()
        with self.errors("load"):
            try:
                value = await client.get(key)
            except ResponseError as exc:
                if not str(exc).startswith("WRONGTYPE"):
                    raise
                return None  # a lease hash (or another program's list, set...): no value
        return cast("bytes | None", value)  # decode_responses=False: always bytes

    async def exists(self, key: str) -> bool:
        client = self.client()
        with self.errors("exists"):
            return bool(await client.exists(key))

    async def delete(self, key: str) -> bool:
        client = self.client()
        with self.errors("delete"):
            return bool(await client.delete(key))

    async def save_batch(self, entries: Sequence[Entry]) -> None:
        if not entries:
            return
        if any(is_index_key(key) or key[:1] == OWNED_MARK for key, _, _ in entries):
            await self.save_groups([(entries, None, 0)])  # one script: rows, owned entries
            return
        client = self.client()
        final = {key: (data, ttl) for key, data, ttl in entries}  # a repeated key: last wins
        plain = {key: data for key, (data, ttl) in final.items() if ttl is None}
        with self.errors("save_batch"):
            async with client.pipeline(transaction=True) as pipe:
                if plain:
                    pipe.mset(plain)  # one command: ~8x cheaper in redis-py than N SETs
                for key, (data, ttl) in final.items():
                    if ttl is not None:
                        pipe.set(key, data, px=_ttl_ms(ttl))
                await pipe.execute()

    async def load_batch(self, keys: Sequence[str]) -> dict[str, bytes]:
        if not keys:
            return {}
        client = self.client()
        with self.errors("load_batch"):
            if _direct_ok(client):  # a resume's reads: the direct path, as the scripts take
                values = cast("list[bytes | None]", await self._direct(client, ("MGET", *keys)))
            else:
                values = cast("list[bytes | None]", await client.mget(list(keys)))
        return {k: v for k, v in zip(keys, values, strict=True) if v is not None}

    async def delete_batch(self, keys: Sequence[str]) -> int:
        if not keys:
            return 0
        client = self.client()
        with self.errors("delete_batch"):
            return int(await client.delete(*keys))

    async def keys(self, prefix: str = "") -> AsyncIterator[str]:
        client = self.client()
        match = escape_glob(prefix) + b"*" if prefix else None
        seen: set[bytes] = set()
        cursor = 0
        while True:
            with self.errors("keys"):
                cursor, batch = await client.scan(
                    cursor, match=match, count=SCAN_COUNT, _type="string"
                )
            for raw in cast("list[bytes]", batch):
                if raw in seen:
                    continue
                seen.add(raw)
                try:
                    key = raw.decode("utf-8")
                except UnicodeDecodeError:
                    continue
                if key.startswith(prefix):
                    yield key
            if cursor == 0:
                return

    async def size(self) -> int:
        n = 0
        async for _ in self.keys():
            n += 1
        return n

    # -- leases (one Lua script each, so each is atomic on the server) -----------------------

    async def acquire_lease(self, key: str, owner: str, ttl: float) -> LeaseState:
        lua = self._lua()
        with self.errors("acquire_lease"):
            reply = await self._eval(lua.acquire, [key], [owner, _ttl_ms(ttl)])
        held, token, expires_ms = cast("list[bytes | int]", reply)
        assert isinstance(held, bytes) and isinstance(token, int) and isinstance(expires_ms, int)
        return LeaseState(held.decode("utf-8", "replace"), token, expires_ms / 1000)

    async def acquire_lease_reading(
        self, key: str, owner: str, ttl: float, keys: Sequence[str]
    ) -> tuple[LeaseState, dict[str, bytes] | None]:
        lua = self._lua()
        with self.errors("acquire_lease"):
            reply = await self._eval(lua.acquire_reading, [key, *keys], [owner, _ttl_ms(ttl)])
        held, token, expires_ms, *values = cast("list[Any]", reply)
        assert isinstance(held, bytes) and isinstance(token, int) and isinstance(expires_ms, int)
        state = LeaseState(held.decode("utf-8", "replace"), token, expires_ms / 1000)
        values += [None] * (len(keys) - len(values))  # Lua drops trailing nils from a table
        found = {k: v for k, v in zip(keys, values, strict=True) if isinstance(v, bytes)}
        return state, found

    async def acquire_lease_writing(
        self,
        key: str,
        owner: str,
        ttl: float,
        keys: Sequence[str],
        entries: Sequence[Entry],
        *,
        match: Mapping[str, bytes] | None = None,
    ) -> tuple[LeaseState, dict[str, bytes] | None, bool]:
        lua = self._lua()
        script_keys: list[str] = [key, *keys]
        args: list[bytes | str | int] = [owner, _ttl_ms(ttl), len(keys)]
        match = match or {}
        args += [b"=" + match[k] if k in match else "-" for k in keys]
        for entry in _last_wins(entries):
            k, value, px = _script_entry(*entry, key)  # plain and index entries (protocol)
            script_keys.append(k)
            args += (value, px)
        with self.errors("acquire_lease"):
            reply = await self._eval(lua.acquire_writing, script_keys, args)
        held, token, expires_ms, written, *values = cast("list[Any]", reply)
        assert isinstance(held, bytes) and isinstance(token, int) and isinstance(expires_ms, int)
        state = LeaseState(held.decode("utf-8", "replace"), token, expires_ms / 1000)
        values += [None] * (len(keys) - len(values))  # Lua drops trailing nils from a table
        found = {k: v for k, v in zip(keys, values, strict=True) if isinstance(v, bytes)}
        return state, found, written == 1

    async def renew_lease(self, key: str, owner: str, token: int, ttl: float) -> bool:
        lua = self._lua()
        with self.errors("renew_lease"):
            return bool(await self._eval(lua.renew, [key], [owner, token, _ttl_ms(ttl)]))

    async def release_lease(self, key: str, owner: str, token: int) -> None:
        lua = self._lua()
        with self.errors("release_lease"):
            await self._eval(lua.release, [key], [token])

    async def save_batch_fenced(self, entries: Sequence[Entry], lease_key: str, token: int) -> bool:
        lua = self._lua()
        keys: list[str] = [lease_key]
        args: list[bytes | str | int] = [token]
        for entry in _last_wins(entries):
            key, value, px = _script_entry(*entry, lease_key)
            keys.append(key)
            args += (value, px)
        try:  # self.errors("save_batch"), without a generator per checkpoint
            reply = await self._eval(lua.save_fenced, keys, args)
        except _REDIS_ERRORS as exc:
            raise self._error(exc, "save_batch") from exc
        if isinstance(reply, list):  # written: 1, then the owned keys it refused
            self._refused(reply[1:])
            return True
        return False

    async def save_groups(self, groups: Sequence[Group]) -> list[bool]:
        """Many runs' saves in one EVALSHA (group commit); per group, whether it was written."""
        lua = self._lua()
        keys: list[str] = []
        args: list[bytes | str | int] = []
        for given, lease_key, token in groups:
            # an unfenced group ends no lease
            entries = given if lease_key else [e for e in given if e[0] != RELEASE_KEY]
            args += (len(entries), "0" if lease_key is None else "1", token)
            if lease_key is not None:
                keys.append(lease_key)
            for entry in entries:
                key, value, px = _script_entry(*entry, lease_key)
                keys.append(key)
                args += (value, px)
        with self.errors("save_batch"):
            reply = cast("list[int | bytes]", await self._eval(lua.save_groups, keys, args))
        self._refused(reply[len(groups) :])  # after one flag per group: refused owned keys
        return [bool(x) for x in reply[: len(groups)]]

    async def read_lease(self, key: str) -> LeaseState | None:
        client = self.client()
        with self.errors("read_lease"):
            raw = cast("dict[bytes, bytes]", await client.hgetall(key))
        if not raw:
            return None
        try:
            return LeaseState(
                raw[b"owner"].decode("utf-8", "replace"),
                int(raw[b"token"]),
                int(raw[b"expires_ms"]) / 1000,
            )
        except (KeyError, ValueError) as exc:
            raise DatasourceError(
                f"redis at {self._where}: {key!r} is not a blokrun lease: {exc!r}"
            ) from exc

    async def delete_batch_fenced(self, keys: Sequence[str], lease_key: str, token: int) -> bool:
        lua = self._lua()
        with self.errors("delete_batch"):
            return bool(await self._eval(lua.delete_fenced, [lease_key, *keys], [token]))

    async def delete_lease(self, key: str, token: int | None = None) -> bool:
        if token is not None:
            lua = self._lua()
            with self.errors("delete_lease"):
                return bool(await self._eval(lua.delete_lease, [key], [token]))
        client = self.client()
        with self.errors("delete_lease"):
            return bool(await client.delete(key))

    async def _eval(
        self, script: AsyncScript, keys: Sequence[str], args: Sequence[bytes | str | int]
    ) -> Any:
        """``EVALSHA`` of ``script`` on the direct path (:meth:`_direct`); a server that
        lost the script gets it again."""
        client = self.client()
        if not _direct_ok(client):
            return await script(keys=keys, args=args)
        try:
            return await self._direct(client, ("EVALSHA", script.sha, len(keys), *keys, *args))
        except NoScriptError:
            script.sha = await client.script_load(script.script)
            return await self._direct(client, ("EVALSHA", script.sha, len(keys), *keys, *args))

    async def _direct(self, client: Redis, command: tuple[Any, ...]) -> Any:
        """``command`` on a pooled connection: packed by hiredis and its reply read straight
        off the connection, without redis-py's per-command machinery (its retry wrapper,
        observability hooks and Python packer cost more than a script's own run on the
        server: ``benchmarks/PROFILE.md``, "Issue 18, round three"). Same behaviour: a dropped
        connection is closed and the command sent once more (every command sent this way
        may run twice: see the module), a timeout or any other error closes the connection
        (redis-py's read does), so no reply is ever left for the next caller."""
        assert _hiredis_pack is not None  # _direct_ok
        packed = _hiredis_pack(command)
        pool = client.connection_pool
        resent = False
        while True:
            conn = await pool.get_connection()  # type: ignore[no-untyped-call]
            try:
                await conn.send_packed_command(packed)
                return await conn.read_response()
            except RedisConnectionError:
                await conn.disconnect()
                if resent:
                    raise
                resent = True
            finally:
                await pool.release(conn)

    def _refused(self, keys: Sequence[Any]) -> None:
        for raw in keys:
            if isinstance(raw, bytes):
                self.refused_owned.add(raw.decode("utf-8", "replace"))
        if len(self.refused_owned) > 10_000:  # nobody asked: forget the oldest half
            self.refused_owned.clear()

    # -- the run index (blokrun.datasources.redis_index) -------------------------------------

    async def index_query(self, space: str, query: IndexQuery) -> list[IndexRow]:
        lua = self._lua()
        with self.errors("index_query"):
            reply = await lua.ix_query(
                keys=[redis_index.space(space)], args=redis_index.query_args(query)
            )
        return redis_index.rows_of(cast("list[bytes]", reply), query.limit)

    async def index_counts(self, space: str) -> dict[str, int]:
        client = self.client()
        with self.errors("index_counts"):
            raw = cast("dict[bytes, bytes]", await client.hgetall(redis_index.counts_key(space)))
        return {k.decode("utf-8"): int(v) for k, v in raw.items() if int(v) > 0}

    async def index_fix(self, space: str, expected: IndexRow, actual: IndexRow | None) -> bool:
        if expected.pending:
            return False  # this driver never writes a pending row
        lua = self._lua()
        args = [
            expected.request_id,
            redis_index.value(expected),
            "" if actual is None else redis_index.pack(actual),
        ]
        with self.errors("index_fix"):
            return bool(await lua.ix_fix(keys=[redis_index.space(space)], args=args))

    async def index_fill(
        self, space: str, rows: Sequence[IndexRow], *, built: bool = False
    ) -> None:
        lua = self._lua()
        args = ["1" if built else "0", *(redis_index.pack(r) for r in rows)]
        with self.errors("index_fill"):
            await lua.ix_fill(keys=[redis_index.space(space)], args=args)

    async def index_built(self, space: str) -> bool:
        client = self.client()
        with self.errors("index_built"):
            return bool(await client.hexists(redis_index.meta_key(space), "built"))

    async def index_remove(
        self, space: str, request_ids: Sequence[str], *, fence: tuple[str, int] | None = None
    ) -> bool:
        lua = self._lua()
        with self.errors("index_remove"):
            if fence is None:
                await lua.ix_remove(keys=[redis_index.space(space)], args=list(request_ids))
                return True
            lease, token = fence
            return bool(
                await lua.ix_remove_fenced(
                    keys=[redis_index.space(space), lease], args=[token, *request_ids]
                )
            )


#: what redis-py raises; RedisStore.errors / _error make each a DatasourceError
_REDIS_ERRORS = (RedisConnectionError, RedisTimeoutError, OSError, RedisError)


def _last_wins(entries: Sequence[Entry]) -> list[Entry]:
    """``entries`` with a repeated key kept once, its last value (index entries all kept:
    they share their space's key)."""
    final: dict[str, tuple[bytes, float | None]] = {}
    rows: list[Entry] = []
    for entry in entries:
        key, data, ttl = entry
        if is_index_key(key):
            rows.append(entry)
        else:
            final[key] = (data, ttl)
    if len(final) == len(entries):  # the hot path: no repeated key, no index entry
        return list(entries)
    return [(k, d, t) for k, (d, t) in final.items()] + rows


def _script_entry(
    key: str, data: bytes, ttl: float | None, lease_key: str | None = None
) -> tuple[str, bytes | str, str | int]:
    """An entry as the save scripts take it: key, data and px ('' = no TTL); an index entry
    becomes its index's space, the packed row and ``ix``; the release entry of a batch
    fenced by ``lease_key``, that key and ``rl``."""
    if key == RELEASE_KEY:
        if lease_key is None:
            raise DatasourceError("a release entry in a batch no lease fences")
        return (lease_key, b"", "rl")
    if is_index_key(key):
        return (redis_index.space(key[1:]), redis_index.pack(decode_row(data)), redis_index.MARK)
    px: str | int = "" if ttl is None else _ttl_ms(ttl)
    if key[:1] == OWNED_MARK:
        return (key[1:], data, f"o{px}")
    return (key, data, px)


def create(settings: DatasourceSettings) -> RedisStore:
    if not settings.url:
        raise DatasourceError("a redis datasource needs a URL (DATASOURCE_<NAME>_URL)")
    return RedisStore(
        settings.url,
        pool_size=settings.pool_size or DEFAULT_POOL_SIZE,
        timeout=settings.timeout,
    )
