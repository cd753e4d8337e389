"""The run queue on Redis: one stream per priority, read by the consumer group ``blokrun``.

Keys, all under the datasource prefix plus ``_blokrun.queue.`` (none is a string, so
``keys()``, ``size()`` and ``load()`` of the datasource never see them):

* ``priorities`` -- sorted set of the priorities in use (member and score: the priority).
* ``p<priority>`` -- a stream of jobs, entry fields ``job`` (the msgspec-encoded
  :class:`~blokrun.queues.queue.Job`) and ``rid``, with the consumer group ``blokrun``.
  Stream ids are server-time ordered, so a stream is oldest first.
* ``c<priority>`` -- sorted set: entry id -> claim deadline (server unix ms) of every
  delivered entry of that stream; ``0`` means released.
* ``ids`` -- hash: request id -> ``"<priority> <entry id>"``, or ``"<priority> - <deferrals>"``
  for a delayed job; dedup (``enqueue`` adds only if the id is absent) and the way from a
  request id to its entry. Removed by ``ack``.
* ``delayed`` -- sorted set: request id -> due time (server unix ms) of every delayed job
  (enqueued with a future ``not_before``, or deferred); ``delayed.jobs`` -- hash: request
  id -> its job. A delayed job is in no stream. Both keys exist only while a job is delayed.
* A stream entry of a job deferred before also has the field ``df`` (its deferrals).

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
* **Delayed jobs are promoted, not scanned.** Every script that adds to a stream
  (``enqueue``, ``claim``, ``defer``) first moves the due delayed jobs (``ZRANGEBYSCORE
  delayed -inf now``, due time order) to the end of their priority's stream, atomically:
  a claim with nothing due costs one ``O(log n)`` lookup, however many jobs are delayed.
  A promoted job is a new entry: its age is its due time (it comes after the jobs enqueued
  before it was due and before those enqueued after), ``deliveries`` starts at 1 again
  and ``df`` carries the deferral count. At most ``_PROMOTE_BATCH`` (1000) jobs move per
  script; the rest move with the next one (if more than that fall due between two
  scripts, a job enqueued in between may come before some of them).
* **defer** (holder only, like ``release``) reads the entry's job, removes the entry like
  ``ack`` and parks the job in ``delayed`` at ``max(not_before, now)``.
* **claim** walks the priorities high to low; per stream it first takes the expired claims
  (``XPENDING IDLE M`` then ``XCLAIM`` each to the worker, which adds a delivery), then new
  entries (``XREADGROUP ... >``). Every delivered entry is older than every undelivered one
  (the group's last-delivered id), so this is priority first, then age. The ``c<priority>``
  deadlines are an index: the PEL is scanned only when one of them has passed, so a claim
  with nothing expired costs O(log n) per priority in use, not a walk of the PEL.
* **renew** re-times the entries the worker still owns (PEL consumer) and did not release;
  a claim that expired and was not taken yet is renewed, like the memory queue.
* **ack** is ``XACK`` + ``XDEL`` + removing the index entries (for a delayed job: its
  ``delayed`` entries), by any worker (the run has
  ended; the memory queue does the same). A stream left empty is deleted with its group and
  its priority; a consumer left with no pending entry is deleted (``XGROUP DELCONSUMER``),
  so worker names do not pile up in the group.
* **stats**: claimed = deadlines in the future (``ZCOUNT``), delayed = due times in the
  future, waiting = the rest.
* **Time** is the server's ``TIME`` everywhere (claim deadlines, due times); a client's
  ``not_before`` (Unix seconds) is taken as it is, in ms rounded up.
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
from blokrun.queues.queue import Claim, QueueStats, check_not_before, decode_job, encode_job

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

#: The most delayed jobs a script moves into the streams at once (see the module docstring).
_PROMOTE_BATCH = 1000

# Every script gets the keys priorities, ids, delayed, delayed.jobs (KEYS[1..4]) and the key
# namespace (datasource prefix + NAMESPACE) as ARGV[1], from which it builds the
# per-priority keys. Numbers are formatted with %d (no float notation).
_COMMON = f"""
local G, M = '{GROUP}', '{_EXPIRED_IDLE_MS}'
local P, IDS, D, DJ = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local nows = string.format('%d', now)
local function locate(rid)
  local v = redis.call('HGET', IDS, rid)
  if not v then return nil end
  local prio, id = string.match(v, '^(%S+) (%S+)')
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
local function field(fields, name)
  for i = 1, #fields, 2 do
    if fields[i] == name then return fields[i + 1] end
  end
  return nil
end
local function append(prio, rid, job, df)
  local s = ARGV[1] .. 'p' .. prio
  if not redis.call('ZSCORE', P, prio) then
    redis.pcall('XGROUP', 'CREATE', s, G, '0', 'MKSTREAM')  -- BUSYGROUP if it exists: fine
    redis.call('ZADD', P, prio, prio)
  end
  local id
  if df > 0 then
    id = redis.call('XADD', s, '*', 'job', job, 'rid', rid, 'df', string.format('%d', df))
  else
    id = redis.call('XADD', s, '*', 'job', job, 'rid', rid)
  end
  redis.call('HSET', IDS, rid, prio .. ' ' .. id)
end
local function park(prio, rid, job, df, due)
  redis.call('ZADD', D, due, rid)
  redis.call('HSET', DJ, rid, job)
  redis.call('HSET', IDS, rid, prio .. ' - ' .. string.format('%d', df))
end
local function promote()
  local due = redis.call('ZRANGEBYSCORE', D, '-inf', nows, 'LIMIT', 0, {_PROMOTE_BATCH})
  for _, rid in ipairs(due) do
    local prio, df = string.match(redis.call('HGET', IDS, rid) or '', '^(%S+) %- (%d+)$')
    local job = redis.call('HGET', DJ, rid)
    redis.call('ZREM', D, rid)
    redis.call('HDEL', DJ, rid)
    if prio and job then
      append(prio, rid, job, tonumber(df))
    elseif prio then
      redis.call('HDEL', IDS, rid)  -- its job is gone: do not keep a phantom
    end
  end
end
local function remove(prio, s, c, id, held_by)
  redis.call('XACK', s, G, id)
  redis.call('XDEL', s, id)
  redis.call('ZREM', c, id)
  if redis.call('XLEN', s) == 0 then
    redis.call('DEL', s, c)
    redis.call('ZREM', P, prio)
  elseif held_by then
    forget_idle_consumer(s, held_by)
  end
end
"""

# ARGV: namespace, request id, priority, job, not_before (server ms; 0: now).
# Returns 1 if added.
_ENQUEUE = (
    _COMMON
    + """
if redis.call('HEXISTS', IDS, ARGV[2]) == 1 then return 0 end
promote()
if tonumber(ARGV[5]) > now then
  park(ARGV[3], ARGV[2], ARGV[4], 0, ARGV[5])
else
  append(ARGV[3], ARGV[2], ARGV[4], 0)
end
return 1
"""
)

# ARGV: namespace, worker, n, ttl_ms.
# Returns job, deliveries, deferrals, job, ... (priority first, then age).
_CLAIM = (
    _COMMON
    + """
local worker, n, ttl = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local idle = string.format('%d', tonumber(M) - ttl)
local deadline = string.format('%d', now + ttl)
local out = {}
local function hand(fields, deliveries)
  out[#out + 1] = field(fields, 'job')
  out[#out + 1] = deliveries
  out[#out + 1] = tonumber(field(fields, 'df') or '0')
  n = n - 1
end
promote()
for _, prio in ipairs(redis.call('ZREVRANGE', P, 0, -1)) do
  if n <= 0 then break end
  local s, c = ARGV[1] .. 'p' .. prio, ARGV[1] .. 'c' .. prio
  if #redis.call('ZRANGEBYSCORE', c, '-inf', nows, 'LIMIT', 0, 1) > 0 then
    local previous = {}
    for _, p in ipairs(redis.call('XPENDING', s, G, 'IDLE', M, '-', '+', n)) do
      local e = redis.call('XCLAIM', s, G, worker, M, p[1], 'IDLE', idle)
      if e[1] then
        redis.call('ZADD', c, deadline, p[1])
        hand(e[1][2], p[4] + 1)
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
        hand(e[2], 1)
      end
    end
  end
end
return out
"""
)

# ARGV: namespace, worker, ttl_ms, request ids... Returns the ids renewed.
_RENEW = (
    _COMMON
    + """
local worker, ttl = ARGV[2], tonumber(ARGV[3])
local idle = string.format('%d', tonumber(M) - ttl)
local deadline = string.format('%d', now + ttl)
local held = {}
for i = 4, #ARGV do
  local _, id, s, c = locate(ARGV[i])
  if id and id ~= '-' then
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

# The claim of ARGV[3] held by worker ARGV[2]: its priority, entry id, stream, deadlines.
_HELD = """
local prio, id, s, c = locate(ARGV[3])
if not id or id == '-' then return 0 end
local due = tonumber(redis.call('ZSCORE', c, id))
if not due or due == 0 or owner(s, id) ~= ARGV[2] then return 0 end
"""

# ARGV: namespace, worker, request id. Returns 1 if released.
_RELEASE = (
    _COMMON
    + _HELD
    + """
redis.call('XCLAIM', s, G, ARGV[2], 0, id, 'IDLE', M, 'JUSTID')
redis.call('ZADD', c, 0, id)
return 1
"""
)

# ARGV: namespace, worker, request id, not_before (server ms). Returns 1 if deferred.
_DEFER = (
    _COMMON
    + _HELD
    + """
local e = redis.call('XRANGE', s, id, id)
if not e[1] then return 0 end
local job = field(e[1][2], 'job')
local df = tonumber(field(e[1][2], 'df') or '0') + 1
remove(prio, s, c, id, ARGV[2])
local at = ARGV[4]
if tonumber(at) <= now then at = nows end
park(prio, ARGV[3], job, df, at)
promote()
return 1
"""
)

# ARGV: namespace, request id. Returns 1 if the job was there.
_ACK = (
    _COMMON
    + """
local prio, id, s, c = locate(ARGV[2])
if not id then return 0 end
if id == '-' then
  redis.call('ZREM', D, ARGV[2])
  redis.call('HDEL', DJ, ARGV[2])
else
  remove(prio, s, c, id, owner(s, id))
end
redis.call('HDEL', IDS, ARGV[2])
return 1
"""
)

# ARGV: namespace. Returns {waiting, claimed, delayed}.
_STATS = (
    _COMMON
    + """
local claimed = 0
for _, prio in ipairs(redis.call('ZRANGE', P, 0, -1)) do
  claimed = claimed + redis.call('ZCOUNT', ARGV[1] .. 'c' .. prio, '(' .. nows, '+inf')
end
local delayed = redis.call('ZCOUNT', D, '(' .. nows, '+inf')
return {redis.call('HLEN', IDS) - claimed - delayed, claimed, delayed}
"""
)


@dataclass(frozen=True, slots=True)
class _Scripts:
    enqueue: AsyncScript
    claim: AsyncScript
    renew: AsyncScript
    release: AsyncScript
    defer: AsyncScript
    ack: AsyncScript
    stats: AsyncScript

    @classmethod
    def register(cls, client: Redis) -> _Scripts:
        """Hash the scripts for ``client`` (no round trip: loaded on first NOSCRIPT)."""
        return cls(
            *(
                client.register_script(src)
                for src in (_ENQUEUE, _CLAIM, _RENEW, _RELEASE, _DEFER, _ACK, _STATS)
            )
        )


def _ttl_ms(ttl: float) -> int:
    """The claim TTL in whole ms, rounded up, within [1 ms, MAX_TTL]."""
    if math.isnan(ttl):
        raise ValueError("claim ttl is NaN")
    return max(1, math.ceil(min(ttl, MAX_TTL) * 1000))


def _not_before_ms(not_before: float) -> int:
    """``not_before`` in whole ms, rounded up (never claimed early); 0 for now."""
    return math.ceil(check_not_before(not_before) * 1000)


class RedisQueue:
    """The run queue in a Redis datasource; see the module docstring."""

    def __init__(self, datasource: Datasource, store: RedisStore) -> None:
        self._name = datasource.name
        self._store = store
        self._ns = (datasource.settings.prefix or "") + NAMESPACE
        self._priorities = self._ns + "priorities"
        self._ids = self._ns + "ids"
        #: every script's KEYS: priorities, ids, delayed, delayed.jobs
        self._keys = [self._priorities, self._ids, self._ns + "delayed", self._ns + "delayed.jobs"]
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
                scripts.defer,
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
        not_before = _not_before_ms(job.not_before)
        lua = self._lua()
        with self._guard("enqueue"):
            added = await lua.enqueue(
                keys=self._keys,
                args=[
                    self._ns,
                    job.request_id,
                    str(int(job.priority)),
                    encode_job(job),
                    not_before,
                ],
            )
        return bool(added)

    async def claim(self, worker: str, n: int, ttl: float) -> list[Claim]:
        if n <= 0:
            return []
        lua = self._lua()
        with self._guard("claim"):
            reply = await lua.claim(keys=self._keys, args=[self._ns, worker, n, _ttl_ms(ttl)])
        flat = cast("list[bytes | int]", reply)
        return [
            Claim(decode_job(cast("bytes", flat[i])), int(flat[i + 1]), int(flat[i + 2]))
            for i in range(0, len(flat), 3)
        ]

    async def renew(self, worker: str, request_ids: Sequence[str], ttl: float) -> set[str]:
        if not request_ids:
            return set()
        lua = self._lua()
        with self._guard("renew"):
            reply = await lua.renew(
                keys=self._keys, args=[self._ns, worker, _ttl_ms(ttl), *request_ids]
            )
        return {rid.decode("utf-8") for rid in cast("list[bytes]", reply)}

    async def ack(self, worker: str, request_id: str) -> None:
        lua = self._lua()
        with self._guard("ack"):
            await lua.ack(keys=self._keys, args=[self._ns, request_id])

    async def release(self, worker: str, request_id: str) -> None:
        lua = self._lua()
        with self._guard("release"):
            await lua.release(keys=self._keys, args=[self._ns, worker, request_id])

    async def defer(self, worker: str, request_id: str, not_before: float) -> bool:
        at = _not_before_ms(not_before)
        lua = self._lua()
        with self._guard("defer"):
            done = await lua.defer(keys=self._keys, args=[self._ns, worker, request_id, at])
        return bool(done)

    async def holds(self, request_id: str) -> bool:
        client = self._store.client()
        with self._guard("holds"):
            found = await client.hexists(self._ids, request_id)
        return bool(found)

    async def stats(self) -> QueueStats:
        lua = self._lua()
        with self._guard("stats"):
            reply = await lua.stats(keys=self._keys, args=[self._ns])
        waiting, claimed, delayed = cast("list[int]", reply)
        return QueueStats(waiting=int(waiting), claimed=int(claimed), delayed=int(delayed))


def create(datasource: Datasource) -> RedisQueue:
    """The queue kept in ``datasource`` (a connected Redis datasource)."""
    from blokrun.datasources.redis import RedisStore

    store = datasource.store
    if not isinstance(store, RedisStore):
        raise TypeError(f"not a redis store: {type(store).__name__}")
    return RedisQueue(datasource, store)
