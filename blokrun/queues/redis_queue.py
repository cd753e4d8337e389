"""The run queue on Redis: one stream per priority, read by the consumer group ``blokrun``.

Keys, all under the datasource prefix plus ``_blokrun.queue.`` (none is a string, so
``keys()``, ``size()`` and ``load()`` of the datasource never see them):

* ``priorities`` -- sorted set of the priorities in use (member and score: the priority).
* ``p<priority>`` -- a stream of jobs, entry fields ``job`` (the msgspec-encoded
  :class:`~blokrun.queues.queue.Job`) and ``rid``, with the consumer group ``blokrun``.
  Stream ids are server-time ordered, so a stream is oldest first.
* ``c<priority>`` -- sorted set: entry id -> claim deadline (server unix ms) of every
  delivered entry of that stream; ``0`` means released.
* ``ids`` -- hash: request id -> ``"<priority> <entry id>"``; dedup (``enqueue`` adds only if
  the id is absent) and the way from a request id to its entry. Removed by ``ack``.

Design decisions:

* **The PEL is the claim.** A claimed job is a pending entry of the group: its consumer is
  the worker holding it, its delivery count is ``Claim.deliveries``. The claim TTL differs
  per call, but Redis only knows "idle since"; so every claim (and renew) sets the entry's
  idle time with ``XCLAIM ... IDLE <M - ttl> JUSTID``, ``M`` being a constant (10^12 ms):
  an entry is idle ``>= M`` exactly when its deadline has passed, and ``XPENDING ... IDLE M``
  lists the expired claims **in id order** (oldest first), whatever TTL each one had.
  ``release`` sets the idle time to ``M`` (expired now). ``XINFO``/``XPENDING`` therefore
  show idle times of about 31 years; that is the encoding, not a stuck worker.
* **Each operation is one Lua script** (``EVALSHA``; atomic on the server, timed by its
  clock): two workers can never take the same entry, and dedup + ``XADD`` cannot interleave.
* **claim** walks the priorities high to low; per stream it first takes the expired claims
  (``XPENDING IDLE M`` then ``XCLAIM`` each to the worker, which adds a delivery), then new
  entries (``XREADGROUP ... >``). Every delivered entry is older than every undelivered one
  (the group's last-delivered id), so this is priority first, then age. The ``c<priority>``
  deadlines are an index: the PEL is scanned only when one of them has passed, so a claim
  with nothing expired costs O(log n) per priority in use, not a walk of the PEL.
* **renew** re-times the entries the worker still owns (PEL consumer) and did not release;
  a claim that expired and was not taken yet is renewed, like the memory queue.
* **ack** is ``XACK`` + ``XDEL`` + removing the index entries, by any worker (the run has
  ended; the memory queue does the same). A stream left empty is deleted with its group and
  its priority; a consumer left with no pending entry is deleted (``XGROUP DELCONSUMER``),
  so worker names do not pile up in the group.
* **stats**: claimed = deadlines in the future (``ZCOUNT``), waiting = the rest.
* **Errors** go through the store's translation (``DatasourceUnavailable`` for connection
  problems and timeouts, ``DatasourceError`` otherwise, the password scrubbed), with the
  datasource name filled in.

Limits: Redis >= 6.2 (``XPENDING ... IDLE``; checked by :meth:`RedisQueue.setup`). The
scripts build the stream keys from the prefix, so Redis Cluster is not supported (like the
store's leases). A claim TTL is capped at ``MAX_TTL`` (about 3 years) and the server clock
must be past 2001 (``now - M >= 0``). Redis scripts are not rolled back if a command fails
half-way (e.g. out of memory); each script does its checks before its first write.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

from blokrun.errors import DatasourceError
from blokrun.queues.queue import Claim, QueueStats, decode_job, encode_job

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

    from redis.asyncio import Redis
    from redis.commands.core import AsyncScript

    from blokrun.datasources import Datasource
    from blokrun.datasources.redis import RedisStore
    from blokrun.queues.queue import Job

__all__ = ["GROUP", "MAX_TTL", "NAMESPACE", "RedisQueue", "create"]

NAMESPACE = "_blokrun.queue."
GROUP = "blokrun"
#: The idle time (ms) that marks a claim as expired; see the module docstring.
_EXPIRED_IDLE_MS = 10**12
MAX_TTL = _EXPIRED_IDLE_MS / 10_000  # seconds (~3.2 years)
_MIN_REDIS = (6, 2)

# Every script gets the key namespace (datasource prefix + NAMESPACE) as ARGV[1] and builds
# the per-priority keys from it. Numbers are formatted with %d (no float notation).
_COMMON = f"""
local G, M = '{GROUP}', '{_EXPIRED_IDLE_MS}'
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local nows = string.format('%d', now)
local function locate(ids, rid)
  local v = redis.call('HGET', ids, rid)
  if not v then return nil end
  local prio, id = string.match(v, '^(%S+) (%S+)$')
  return prio, id, ARGV[1] .. 'p' .. prio, ARGV[1] .. 'c' .. prio
end
local function owner(s, id)
  local p = redis.call('XPENDING', s, G, id, id, 1)
  if p[1] then return p[1][2] end
  return nil
end
local function forget_idle_consumer(s, consumer)
  if #redis.call('XPENDING', s, G, '-', '+', 1, consumer) == 0 then
    redis.call('XGROUP', 'DELCONSUMER', s, G, consumer)
  end
end
"""

# KEYS: priorities, ids. ARGV: namespace, request id, priority, job. Returns 1 if added.
_ENQUEUE = (
    _COMMON
    + """
if redis.call('HEXISTS', KEYS[2], ARGV[2]) == 1 then return 0 end
local s = ARGV[1] .. 'p' .. ARGV[3]
if not redis.call('ZSCORE', KEYS[1], ARGV[3]) then
  redis.pcall('XGROUP', 'CREATE', s, G, '0', 'MKSTREAM')  -- BUSYGROUP if it exists: fine
  redis.call('ZADD', KEYS[1], ARGV[3], ARGV[3])
end
local id = redis.call('XADD', s, '*', 'job', ARGV[4], 'rid', ARGV[2])
redis.call('HSET', KEYS[2], ARGV[2], ARGV[3] .. ' ' .. id)
return 1
"""
)

# KEYS: priorities. ARGV: namespace, worker, n, ttl_ms.
# Returns job, deliveries, job, deliveries... (priority first, then age).
_CLAIM = (
    _COMMON
    + """
local worker, n, ttl = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local idle = string.format('%d', tonumber(M) - ttl)
local deadline = string.format('%d', now + ttl)
local out = {}
for _, prio in ipairs(redis.call('ZREVRANGE', KEYS[1], 0, -1)) do
  if n <= 0 then break end
  local s, c = ARGV[1] .. 'p' .. prio, ARGV[1] .. 'c' .. prio
  if #redis.call('ZRANGEBYSCORE', c, '-inf', nows, 'LIMIT', 0, 1) > 0 then
    local previous = {}
    for _, p in ipairs(redis.call('XPENDING', s, G, 'IDLE', M, '-', '+', n)) do
      local e = redis.call('XCLAIM', s, G, worker, M, p[1], 'IDLE', idle)
      if e[1] then
        redis.call('ZADD', c, deadline, p[1])
        out[#out + 1] = e[1][2][2]
        out[#out + 1] = p[4] + 1
        n = n - 1
        if p[2] ~= worker then previous[p[2]] = true end
      else
        redis.call('ZREM', c, p[1])  -- deleted behind our back: XCLAIM dropped it
      end
    end
    for consumer in pairs(previous) do forget_idle_consumer(s, consumer) end
  end
  if n > 0 then
    local r = redis.call('XREADGROUP', 'GROUP', G, worker, 'COUNT', n, 'STREAMS', s, '>')
    if r then
      for _, e in ipairs(r[1][2]) do
        redis.call('XCLAIM', s, G, worker, 0, e[1], 'IDLE', idle, 'JUSTID')
        redis.call('ZADD', c, deadline, e[1])
        out[#out + 1] = e[2][2]
        out[#out + 1] = 1
        n = n - 1
      end
    end
  end
end
return out
"""
)

# KEYS: ids. ARGV: namespace, worker, ttl_ms, request ids... Returns the ids renewed.
_RENEW = (
    _COMMON
    + """
local worker, ttl = ARGV[2], tonumber(ARGV[3])
local idle = string.format('%d', tonumber(M) - ttl)
local deadline = string.format('%d', now + ttl)
local held = {}
for i = 4, #ARGV do
  local _, id, s, c = locate(KEYS[1], ARGV[i])
  if id then
    local due = tonumber(redis.call('ZSCORE', c, id))
    if due and due > 0 and owner(s, id) == worker then
      redis.call('XCLAIM', s, G, worker, 0, id, 'IDLE', idle, 'JUSTID')
      redis.call('ZADD', c, deadline, id)
      held[#held + 1] = ARGV[i]
    end
  end
end
return held
"""
)

# KEYS: ids. ARGV: namespace, worker, request id. Returns 1 if released.
_RELEASE = (
    _COMMON
    + """
local _, id, s, c = locate(KEYS[1], ARGV[3])
if not id then return 0 end
local due = tonumber(redis.call('ZSCORE', c, id))
if not due or due == 0 or owner(s, id) ~= ARGV[2] then return 0 end
redis.call('XCLAIM', s, G, ARGV[2], 0, id, 'IDLE', M, 'JUSTID')
redis.call('ZADD', c, 0, id)
return 1
"""
)

# KEYS: priorities, ids. ARGV: namespace, request id. Returns 1 if the job was there.
_ACK = (
    _COMMON
    + """
local prio, id, s, c = locate(KEYS[2], ARGV[2])
if not id then return 0 end
local held_by = owner(s, id)
redis.call('XACK', s, G, id)
redis.call('XDEL', s, id)
redis.call('ZREM', c, id)
redis.call('HDEL', KEYS[2], ARGV[2])
if redis.call('XLEN', s) == 0 then
  redis.call('DEL', s, c)
  redis.call('ZREM', KEYS[1], prio)
elseif held_by then
  forget_idle_consumer(s, held_by)
end
return 1
"""
)

# KEYS: priorities, ids. ARGV: namespace. Returns {waiting, claimed}.
_STATS = (
    _COMMON
    + """
local claimed = 0
for _, prio in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  claimed = claimed + redis.call('ZCOUNT', ARGV[1] .. 'c' .. prio, '(' .. nows, '+inf')
end
return {redis.call('HLEN', KEYS[2]) - claimed, claimed}
"""
)


@dataclass(frozen=True, slots=True)
class _Scripts:
    enqueue: AsyncScript
    claim: AsyncScript
    renew: AsyncScript
    release: AsyncScript
    ack: AsyncScript
    stats: AsyncScript

    @classmethod
    def register(cls, client: Redis) -> _Scripts:
        """Hash the scripts for ``client`` (no round trip: loaded on first NOSCRIPT)."""
        return cls(
            *(
                client.register_script(src)
                for src in (_ENQUEUE, _CLAIM, _RENEW, _RELEASE, _ACK, _STATS)
            )
        )


def _ttl_ms(ttl: float) -> int:
    """The claim TTL in whole ms, rounded up, within [1 ms, MAX_TTL]."""
    if math.isnan(ttl):
        raise ValueError("claim ttl is NaN")
    return max(1, math.ceil(min(ttl, MAX_TTL) * 1000))


class RedisQueue:
    """The run queue in a Redis datasource; see the module docstring."""

    def __init__(self, datasource: Datasource, store: RedisStore) -> None:
        self._name = datasource.name
        self._store = store
        self._ns = (datasource.settings.prefix or "") + NAMESPACE
        self._priorities = self._ns + "priorities"
        self._ids = self._ns + "ids"
        self._client: Redis | None = None
        self._scripts: _Scripts | None = None

    def _lua(self) -> _Scripts:
        """The scripts, registered again if the store reconnected with a new client."""
        client = self._store.client()
        if self._scripts is None or client is not self._client:
            self._client, self._scripts = client, _Scripts.register(client)
        return self._scripts

    @contextmanager
    def _guard(self, op: str) -> Iterator[None]:
        try:
            with self._store.errors(f"queue {op}"):
                yield
        except DatasourceError as exc:
            if exc.datasource is None:
                exc.datasource = self._name
            raise

    async def setup(self) -> None:
        """Check the server version and load the scripts. Streams and the consumer group
        of a priority are created by the first ``enqueue`` of that priority."""
        client = self._store.client()
        with self._guard("setup"):
            info = cast("dict[str, object]", await client.info("server"))
            scripts = self._lua()
            for script in (
                scripts.enqueue,
                scripts.claim,
                scripts.renew,
                scripts.release,
                scripts.ack,
                scripts.stats,
            ):
                await client.script_load(script.script)
        version = tuple(int(x) for x in str(info.get("redis_version", "0")).split(".")[:2])
        if version < _MIN_REDIS:
            raise DatasourceError(
                f"the run queue needs Redis >= 6.2 (XPENDING IDLE); server is "
                f"{info.get('redis_version')}",
                datasource=self._name,
            )

    async def enqueue(self, job: Job) -> bool:
        lua = self._lua()
        with self._guard("enqueue"):
            added = await lua.enqueue(
                keys=[self._priorities, self._ids],
                args=[self._ns, job.request_id, str(int(job.priority)), encode_job(job)],
            )
        return bool(added)

    async def claim(self, worker: str, n: int, ttl: float) -> list[Claim]:
        if n <= 0:
            return []
        lua = self._lua()
        with self._guard("claim"):
            reply = await lua.claim(
                keys=[self._priorities], args=[self._ns, worker, n, _ttl_ms(ttl)]
            )
        flat = cast("list[bytes | int]", reply)
        return [
            Claim(decode_job(cast("bytes", flat[i])), int(flat[i + 1]))
            for i in range(0, len(flat), 2)
        ]

    async def renew(self, worker: str, request_ids: Sequence[str], ttl: float) -> set[str]:
        if not request_ids:
            return set()
        lua = self._lua()
        with self._guard("renew"):
            reply = await lua.renew(
                keys=[self._ids], args=[self._ns, worker, _ttl_ms(ttl), *request_ids]
            )
        return {rid.decode("utf-8") for rid in cast("list[bytes]", reply)}

    async def ack(self, worker: str, request_id: str) -> None:
        lua = self._lua()
        with self._guard("ack"):
            await lua.ack(keys=[self._priorities, self._ids], args=[self._ns, request_id])

    async def release(self, worker: str, request_id: str) -> None:
        lua = self._lua()
        with self._guard("release"):
            await lua.release(keys=[self._ids], args=[self._ns, worker, request_id])

    async def holds(self, request_id: str) -> bool:
        client = self._store.client()
        with self._guard("holds"):
            found = await client.hexists(self._ids, request_id)
        return bool(found)

    async def stats(self) -> QueueStats:
        lua = self._lua()
        with self._guard("stats"):
            reply = await lua.stats(keys=[self._priorities, self._ids], args=[self._ns])
        waiting, claimed = cast("list[int]", reply)
        return QueueStats(waiting=int(waiting), claimed=int(claimed))


def create(datasource: Datasource) -> RedisQueue:
    """The queue kept in ``datasource`` (a connected Redis datasource)."""
    from blokrun.datasources.redis import RedisStore

    store = datasource.store
    if not isinstance(store, RedisStore):
        raise TypeError(f"not a redis store: {type(store).__name__}")
    return RedisQueue(datasource, store)
