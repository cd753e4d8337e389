"""The Redis driver's run index: sorted sets, kept by the same scripts that write the heads.

Under ``<space>_blokrun.ix.`` (``<space>``: the datasource prefix), with no TTL:

* ``rows`` -- a hash, request id -> ``status \\n member \\n workflow``;
* ``t``, ``s:<status>``, ``w:<workflow>`` -- sorted sets of *members*, all scores 0, so
  ``ZRANGEBYLEX`` reads them in member order. A member is ``<17 digits>:<request id>``, the
  digits ``10**17 - start time in microseconds``: newest first, ties by request id -- the
  order of :func:`~blokrun.datasources.index.order_key`;
* ``n`` -- a hash, status -> rows with that status (``index_counts``: one ``HGETALL``);
* ``meta`` -- a hash; ``built`` is set once every run has its row
  (:meth:`IndexStore.index_fill`). Every key here is a hash or a sorted set, so ``keys()``
  (strings only) never lists them.

An index entry of a batch is written by :data:`PUT`, a Lua function the save scripts call
for entries marked ``ix``: the row is replaced (its old members removed) in the same
script as the head, so row and head are never apart. A row that has not changed costs one
``HGET`` inside the script. :data:`QUERY` reads a page in one script: the members after
the cursor, in order, filtered on the rows hash (workflow, text in the id) up to the limit.
Keys are computed inside the scripts (not declared): like the rest of this driver, not for
Redis Cluster.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from blokrun.datasources.index import IndexQuery, IndexRow, micros, ordered

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = [
    "FIX",
    "FILL",
    "PUT",
    "QUERY",
    "REMOVE",
    "meta_key",
    "counts_key",
    "member",
    "pack",
    "parse",
    "query_args",
    "space",
]

_EPOCH = 10**17
MARK = "ix"  # the "px" of an index entry in the save scripts' arguments

# S: the space's key prefix; packed: "rid\nstatus\nmember\nworkflow".
PUT = """
local function ix_drop(S, rid, old)
  local ost, om, owf = string.match(old, '^([^\\n]*)\\n([^\\n]*)\\n(.*)$')
  redis.call('ZREM', S .. 't', om)
  redis.call('ZREM', S .. 's:' .. ost, om)
  redis.call('ZREM', S .. 'w:' .. owf, om)
  redis.call('HINCRBY', S .. 'n', ost, -1)
  redis.call('HDEL', S .. 'rows', rid)
end
local function ix_put(S, packed, only_new)
  local rid, st, m, wf = string.match(packed, '^([^\\n]*)\\n([^\\n]*)\\n([^\\n]*)\\n(.*)$')
  local val = st .. '\\n' .. m .. '\\n' .. wf
  local old = redis.call('HGET', S .. 'rows', rid)
  if old == val or (old and only_new) then return end
  if old then ix_drop(S, rid, old) end
  redis.call('ZADD', S .. 't', 0, m)
  redis.call('ZADD', S .. 's:' .. st, 0, m)
  redis.call('ZADD', S .. 'w:' .. wf, 0, m)
  redis.call('HINCRBY', S .. 'n', st, 1)
  redis.call('HSET', S .. 'rows', rid, val)
end
"""

# KEYS[1]: space; ARGV: rid, expected value ("status\nmember\nworkflow"), new packed row
# ('' = remove). Returns 1 if the stored row was the expected one (and was replaced).
FIX = (
    PUT
    + """
local S = KEYS[1]
local old = redis.call('HGET', S .. 'rows', ARGV[1])
if old ~= ARGV[2] then return 0 end
ix_drop(S, ARGV[1], old)
if ARGV[3] ~= '' then ix_put(S, ARGV[3], false) end
return 1
"""
)

# KEYS[1]: space; ARGV[1]: '1' to mark the index built, then packed rows (added if absent).
FILL = (
    PUT
    + """
local S = KEYS[1]
for i = 2, #ARGV do ix_put(S, ARGV[i], true) end
if ARGV[1] == '1' then redis.call('HSET', S .. 'meta', 'built', '1') end
return 1
"""
)

# KEYS[1]: space; ARGV: request ids.
REMOVE = (
    PUT
    + """
local S = KEYS[1]
for i = 1, #ARGV do
  local old = redis.call('HGET', S .. 'rows', ARGV[i])
  if old then ix_drop(S, ARGV[i], old) end
end
return 1
"""
)

# REMOVE behind a fence: KEYS[1] space, KEYS[2] the lease; ARGV[1] its token, then the run
# ids. Removes nothing (returns 0) unless the token is the lease's latest.
REMOVE_FENCED = (
    PUT
    + """
local S = KEYS[1]
if tonumber(redis.call('HGET', KEYS[2], 'token')) ~= tonumber(ARGV[1]) then return 0 end
for i = 2, #ARGV do
  local old = redis.call('HGET', S .. 'rows', ARGV[i])
  if old then ix_drop(S, ARGV[i], old) end
end
return 1
"""
)

# KEYS[1]: space; ARGV: min, max (ZRANGEBYLEX bounds), limit, workflow filter ('' = any;
# only used when reading a set other than w:), text the id must contain ('' = any), then
# the sets to read (suffixes: t, s:<status>, w:<workflow>). Returns rid, value pairs: up
# to limit per set, in member order within each set.
QUERY = """
local S = KEYS[1]
local min, max, limit = ARGV[1], ARGV[2], tonumber(ARGV[3])
local wf, needle = ARGV[4], ARGV[5]
local out = {}
for z = 6, #ARGV do
  local got, cursor = 0, min
  while got < limit do
    local batch = redis.call('ZRANGEBYLEX', S .. ARGV[z], cursor, max, 'LIMIT', 0, 256)
    if #batch == 0 then break end
    for _, m in ipairs(batch) do
      local rid = string.sub(m, 19)
      if needle == '' or string.find(rid, needle, 1, true) then
        local val = redis.call('HGET', S .. 'rows', rid)
        if val and (wf == '' or string.match(val, '^[^\\n]*\\n[^\\n]*\\n(.*)$') == wf) then
          out[#out + 1] = rid
          out[#out + 1] = val
          got = got + 1
          if got >= limit then break end
        end
      end
    end
    cursor = '(' .. batch[#batch]
  end
end
return out
"""


def space(prefix: str) -> str:
    """The key prefix of the index of datasource prefix ``prefix``."""
    return prefix + "_blokrun.ix."


def meta_key(prefix: str) -> str:
    return space(prefix) + "meta"


def counts_key(prefix: str) -> str:
    return space(prefix) + "n"


def member(neg: int, request_id: str) -> str:
    """The sorted-set member of sort key ``(neg, request_id)`` (``neg``: -microseconds)."""
    return f"{_EPOCH + neg:017d}:{request_id}"


def value(row: IndexRow) -> str:
    """What the rows hash holds for ``row``."""
    return f"{row.status}\n{member(-micros(row.started_at), row.request_id)}\n{row.workflow}"


def pack(row: IndexRow) -> str:
    """``row`` as the scripts take it."""
    return f"{row.request_id}\n{value(row)}"


def parse(request_id: str, stored: bytes) -> IndexRow:
    """The row the rows hash holds for ``request_id``."""
    status, m, workflow = stored.decode("utf-8").split("\n", 2)
    started = (_EPOCH - int(m[:17])) / 1_000_000
    return IndexRow(request_id, status, started, workflow)


def query_args(query: IndexQuery) -> list[str | int]:
    """The ARGV of :data:`QUERY` for ``query``."""
    low = "-" if query.after is None else "(" + member(*query.after)
    high = "+" if query.since is None else f"({_EPOCH - micros(query.since) + 1:017d}"
    workflow = query.workflow or ""
    if query.statuses is not None:
        sets = [f"s:{s}" for s in query.statuses]
    elif query.workflow is not None:
        sets, workflow = [f"w:{query.workflow}"], ""
    else:
        sets = ["t"]
    return [low, high, query.limit, workflow, query.contains or "", *sets]


def rows_of(reply: Sequence[bytes], limit: int) -> list[IndexRow]:
    """The rows of a :data:`QUERY` reply, in index order, at most ``limit``."""
    ids = [raw.decode("utf-8") for raw in reply[::2]]
    return ordered((parse(rid, raw) for rid, raw in zip(ids, reply[1::2], strict=True)), limit)
