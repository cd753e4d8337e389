"""MongoDB store on PyMongo's native async client (``pymongo.AsyncMongoClient``).

Motor is deprecated (May 2026) in favour of PyMongo's own async API, which this driver uses.

One document per key in one collection (``settings.collection``, default ``blokrun_store``)
of the database named by ``settings.database``, else the URL's path, else ``blokrun``::

    {_id: key, data: Binary(bytes), expires_at: datetime (UTC) | None}

* The key *is* ``_id``: uniqueness and the lookup index come for free, and ``keys(prefix)``
  is an anchored regex ``^<escaped prefix>`` on ``_id``, which MongoDB turns into a range
  scan of the ``_id`` index (escaped punctuation counts as literal for its index bounds).
  The prefix is escaped with :func:`re.escape`: it only backslash-escapes
  non-alphanumerics, which PCRE reads as literals, so ``*``, ``?``, ``[``, ``.`` ... match
  themselves. Keys stream from a server-side cursor with ``_id``-only projection.
* Expiry: a TTL index on ``expires_at`` (``expireAfterSeconds=0``) lets the server delete
  expired documents, but its monitor runs only every 60 s, so every read also filters on
  ``expires_at`` (missing/null or in the future). Expiry times come from this process's
  clock, like the read filter, so only clock skew between clients shifts them.
* ``save`` is one ``replace_one(upsert=True)`` (atomic per document). ``save_batch`` is
  one unordered ``bulk_write`` (not atomic); as an unordered bulk may run in any order,
  only the last entry of a repeated key is sent. ``load_batch``/``delete_batch`` use
  ``$in`` in chunks of 250 keys (see ``_CHUNK``). BSON caps a document at 16 MiB, so a
  value must stay a little below that (a larger one is a ``DatasourceError``).
* Durability: unless the URL sets a write concern, writes use ``j=true`` (acknowledged
  after the journal is on disk), so ``Capabilities.durable`` holds; a URL that weakens it
  (``w=0``, ``journal=false``) gets ``durable=False``.
* Bounded: ``serverSelectionTimeoutMS`` (a little under ``settings.timeout`` so PyMongo's
  own, more precise error wins the race with the wrapper's deadline), ``connectTimeoutMS``
  and ``socketTimeoutMS`` come from ``settings.timeout``; ``maxPoolSize`` from ``pool_size``.
* Leases (:class:`~blokrun.datasources.protocol.LeaseStore`) live in ``<collection>_leases``
  as ``{_id: key, owner, token, expires_at: datetime (UTC)}``, with no TTL index (an expired
  lease keeps its token count). ``acquire_lease`` is one ``find_one_and_update`` with
  ``upsert``: filter ``_id`` and (expired or same owner), an update pipeline that sets
  owner, expiry and the token (``next_token``: this process's clock in microseconds for a
  new document, else max(token, clock) + 1, so a deleted lease never issues an old token
  again). A live lease of another owner fails the filter, so the upsert's insert
  hits the ``_id`` index: ``DuplicateKeyError``, then the holder is read and returned (or,
  if it was released or deleted meanwhile, the update is tried again). The unique ``_id``
  serialises racing acquirers, so exactly one wins. ``renew``/``release`` are
  ``update_one`` filtered on the token; release sets ``expires_at`` to the epoch and keeps
  the token; ``delete_lease`` removes the document. Times come from this process's clock
  (as for TTLs). Lease writes use the data's write concern but are always acknowledged
  (``w=0`` in the URL becomes ``j=true`` for them); lease reads always go to the primary.
* **Fencing is not atomic** (``atomic_fencing=False``): ``save_batch_fenced`` reads the
  lease by ``{_id, token}``, then writes like ``save_batch``. A holder that has just lost
  its lease can therefore still land the one batch it checked before the takeover (a
  window of one round trip); every later batch is refused. A multi-document transaction
  would close the window, but needs a replica set and is not used.
* Errors: ``ConnectionFailure`` (server selection, network timeouts, AutoReconnect) ->
  :class:`DatasourceUnavailable`; any other ``PyMongoError``/``BSONError`` ->
  :class:`DatasourceError`. Messages show the URL masked and never the password.
"""

from __future__ import annotations

import datetime as dt
import re
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

import anyio
from bson.codec_options import CodecOptions
from bson.errors import BSONError
from pymongo import AsyncMongoClient, ReadPreference, ReplaceOne, ReturnDocument
from pymongo.errors import ConnectionFailure, DuplicateKeyError, PyMongoError
from pymongo.write_concern import WriteConcern

from blokrun.datasources.protocol import Capabilities, LeaseState, StoreHealth, next_token
from blokrun.errors import DatasourceError, DatasourceUnavailable
from blokrun.redact import mask_url

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator, Sequence

    from pymongo.asynchronous.collection import AsyncCollection

    from blokrun.datasources.protocol import Entry
    from blokrun.datasources.settings import DatasourceSettings

__all__ = ["DEFAULT_COLLECTION", "DEFAULT_DATABASE", "MongoStore", "create"]

DEFAULT_DATABASE = "blokrun"
DEFAULT_COLLECTION = "blokrun_store"
TTL_INDEX = "blokrun_expires_at_ttl"
#: Keys per ``$in`` query. mongod would take far more, but the mongoeco emulator compiles
#: ``$in`` to a chain of SQLite ORs and fails past ~490 keys (SQLite's expression depth
#: limit of 1000); 250 keeps one query document small too (<= 256 KiB of 1 KiB keys).
_CHUNK = 250
_CURSOR_BATCH = 1000  # keys per getMore of keys()
_CODEC: CodecOptions[dict[str, Any]] = CodecOptions(tz_aware=True, tzinfo=dt.UTC)
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)  # expires_at of a released lease
_ACQUIRE_TRIES = 10  # a refused acquire retries only when the holder left meanwhile

Doc = dict[str, Any]


def _live(now: dt.datetime) -> Doc:
    """Filter for documents that have not expired at ``now`` (null/missing = never)."""
    return {"$or": [{"expires_at": None}, {"expires_at": {"$gt": now}}]}


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class MongoStore:
    """A MongoDB collection of ``{_id, data, expires_at}``; see the module docstring."""

    __slots__ = (
        "_client",
        "_coll",
        "_collection",
        "_database",
        "_durable",
        "_leases",
        "_owns_client",
        "_pool_size",
        "_secrets",
        "_timeout",
        "_url",
    )

    def __init__(
        self,
        url: str | None = None,
        *,
        client: AsyncMongoClient[Doc] | None = None,
        database: str | None = None,
        collection: str | None = None,
        timeout: float = 5.0,
        pool_size: int | None = None,
    ) -> None:
        if url is None and client is None:
            raise DatasourceError("a mongodb datasource needs a URL or a client")
        self._url = url or ""
        self._client = client
        self._owns_client = client is None
        self._database = database
        self._collection = collection or DEFAULT_COLLECTION
        self._timeout = timeout
        self._pool_size = pool_size
        self._coll: AsyncCollection[Doc] | None = None
        self._leases: AsyncCollection[Doc] | None = None
        self._durable = True
        self._secrets = _secrets_of(self._url)

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(
            native_ttl=True,
            native_batch=True,
            atomic_batch=False,
            durable=self._durable,
            self_timed=True,
            leases=True,
            atomic_fencing=False,
        )

    @property
    def is_connected(self) -> bool:
        return self._coll is not None

    @property
    def collection(self) -> AsyncCollection[Doc]:
        """The collection in use (after :meth:`connect`)."""
        if self._coll is None:
            raise DatasourceError("the mongodb store is not connected: call connect() first")
        return self._coll

    @property
    def lease_collection(self) -> AsyncCollection[Doc]:
        """The collection of leases, ``<collection>_leases`` (after :meth:`connect`)."""
        if self._leases is None:
            raise DatasourceError("the mongodb store is not connected: call connect() first")
        return self._leases

    # -- errors ----------------------------------------------------------------------------

    def _where(self) -> str:
        return mask_url(self._url) if self._url else "an injected client"

    def _clean(self, exc: BaseException) -> str:
        text = f"{type(exc).__name__}: {exc}".split(", Topology Description:")[0]
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text[:500]

    @contextmanager
    def _errors(self, op: str) -> Iterator[None]:
        try:
            yield
        except ConnectionFailure as exc:
            raise DatasourceUnavailable(
                f"{op}: MongoDB at {self._where()} is unreachable: {self._clean(exc)}"
            ) from exc
        except (PyMongoError, BSONError) as exc:
            raise DatasourceError(
                f"{op} failed on MongoDB at {self._where()}: {self._clean(exc)}"
            ) from exc

    # -- lifecycle ---------------------------------------------------------------------------

    async def connect(self) -> None:
        if self._coll is not None:
            return
        with self._errors("connect"):
            if self._client is None:
                ms = max(1, int(self._timeout * 1000))
                self._client = AsyncMongoClient(
                    self._url,
                    serverSelectionTimeoutMS=max(1, int(ms * 0.9)),
                    connectTimeoutMS=ms,
                    socketTimeoutMS=ms,
                    maxPoolSize=self._pool_size or 100,
                    appname="blokrun",
                )
            client = self._client
            try:
                wc = client.write_concern
                if not wc.document:  # nothing set in the URL: wait for the journal
                    wc = WriteConcern(j=True)
                self._durable = wc.acknowledged and (
                    wc.document.get("j") is True or wc.document.get("w") == "majority"
                )
                db = client.get_default_database(DEFAULT_DATABASE)
                if self._database:
                    db = client.get_database(self._database)
                coll = db.get_collection(self._collection, codec_options=_CODEC, write_concern=wc)
                leases = db.get_collection(
                    f"{self._collection}_leases",
                    codec_options=_CODEC,
                    write_concern=wc if wc.acknowledged else WriteConcern(j=True),
                    read_preference=ReadPreference.PRIMARY,
                )
                await client.admin.command("ping")
                await coll.create_index("expires_at", expireAfterSeconds=0, name=TTL_INDEX)
            except BaseException:
                if self._owns_client:
                    self._client = None
                    with anyio.CancelScope(shield=True):
                        await client.close()
                raise
            self._coll, self._leases = coll, leases

    async def close(self) -> None:
        self._coll = self._leases = None
        if self._owns_client and self._client is not None:
            client, self._client = self._client, None
            await client.close()

    async def describe(self) -> StoreHealth:
        """``buildInfo`` (version) and the collection's TTL index; reads only (``blokrun
        doctor``). The ``_id`` index every collection has serves keys and leases."""
        coll = self.collection
        with self._errors("describe"):
            info = await coll.database.client.admin.command("buildInfo")
            indexes = await coll.index_information()
            count = await coll.estimated_document_count()
        ttl = indexes.get(TTL_INDEX)
        problems: tuple[str, ...] = ()
        if ttl is None or list(ttl.get("key", ())) != [("expires_at", 1)]:
            problems = (f"collection {coll.name!r}: TTL index {TTL_INDEX!r} is missing",)
        elif ttl.get("expireAfterSeconds") != 0:
            problems = (f"TTL index {TTL_INDEX!r}: expireAfterSeconds is not 0",)
        return StoreHealth(
            server="MongoDB",
            version=str(info.get("version") or "unknown"),
            schema=f"{coll.database.name}.{coll.name}, TTL index: "
            + ("ok" if not problems else "wrong"),
            notes=(f"about {count} document(s)",),
            problems=problems,
        )

    # -- the contract ------------------------------------------------------------------------

    async def save(self, key: str, data: bytes, ttl: float | None = None) -> None:
        with self._errors("save"):
            await self.collection.replace_one(
                {"_id": key}, _doc(key, data, ttl, _now()), upsert=True
            )

    async def load(self, key: str) -> bytes | None:
        with self._errors("load"):
            doc = await self.collection.find_one({"_id": key, **_live(_now())}, {"data": 1})
        return None if doc is None else bytes(doc["data"])

    async def exists(self, key: str) -> bool:
        with self._errors("exists"):
            doc = await self.collection.find_one({"_id": key, **_live(_now())}, {"_id": 1})
        return doc is not None

    async def delete(self, key: str) -> bool:
        with self._errors("delete"):
            doc = await self.collection.find_one_and_delete({"_id": key}, {"expires_at": 1})
        if doc is None:
            return False
        expires = doc.get("expires_at")
        return expires is None or expires > _now()  # an expired leftover was not "live"

    async def save_batch(self, entries: Sequence[Entry]) -> None:
        if not entries:
            return
        now = _now()
        # An unordered bulk write may run in any order: keep only the last entry per key.
        last = {k: (d, t) for k, d, t in entries}
        ops = [
            ReplaceOne({"_id": k}, _doc(k, d, t, now), upsert=True) for k, (d, t) in last.items()
        ]
        with self._errors("save_batch"):
            await self.collection.bulk_write(ops, ordered=False)

    async def load_batch(self, keys: Sequence[str]) -> dict[str, bytes]:
        out: dict[str, bytes] = {}
        now = _now()
        with self._errors("load_batch"):
            for i in range(0, len(keys), _CHUNK):
                query = {"_id": {"$in": list(keys[i : i + _CHUNK])}, **_live(now)}
                async for doc in self.collection.find(query, {"data": 1}):
                    out[doc["_id"]] = bytes(doc["data"])
        return out

    async def delete_batch(self, keys: Sequence[str]) -> int:
        n = 0
        with self._errors("delete_batch"):
            for i in range(0, len(keys), _CHUNK):
                result = await self.collection.delete_many(
                    {"_id": {"$in": list(keys[i : i + _CHUNK])}}
                )
                n += result.deleted_count
        return n

    async def keys(self, prefix: str = "") -> AsyncIterator[str]:
        query = _live(_now())
        if prefix:
            query = {"_id": {"$regex": prefix_regex(prefix)}, **query}
        with self._errors("keys"):
            cursor = self.collection.find(query, {"_id": 1}, batch_size=_CURSOR_BATCH)
            try:
                async for doc in cursor:
                    yield doc["_id"]
            finally:
                await cursor.close()

    async def size(self) -> int:
        with self._errors("size"):
            return await self.collection.count_documents(_live(_now()))

    # -- leases (see the module docstring) ---------------------------------------------------

    async def acquire_lease(self, key: str, owner: str, ttl: float) -> LeaseState:
        leases = self.lease_collection
        with self._errors("acquire_lease"):
            for _ in range(_ACQUIRE_TRIES):
                now = _now()
                us = next_token(None)
                # next_token, as an update pipeline: the clock in microseconds for a new
                # document, else max(token, clock) + 1
                token = {
                    "$cond": [
                        {"$eq": [{"$type": "$token"}, "missing"]},
                        us,
                        {"$add": [{"$max": ["$token", us]}, 1]},
                    ]
                }
                try:
                    doc = await leases.find_one_and_update(
                        {"_id": key, "$or": [{"expires_at": {"$lte": now}}, {"owner": owner}]},
                        [
                            {
                                "$set": {
                                    "owner": owner,
                                    "expires_at": now + dt.timedelta(seconds=ttl),
                                    "token": token,
                                }
                            }
                        ],
                        upsert=True,
                        return_document=ReturnDocument.AFTER,
                    )
                except DuplicateKeyError:  # held by another owner (or changed meanwhile)
                    doc = await leases.find_one({"_id": key})
                    if doc is None:
                        continue  # deleted meanwhile
                    held = self._lease(doc)
                    if held.owner != owner and held.live(_now().timestamp()):
                        return held
                    continue  # released or expired meanwhile: try to take it again
                if doc is not None:
                    return self._lease(doc)
        raise DatasourceError(
            f"acquire_lease failed on MongoDB at {self._where()}: the lease kept changing "
            f"({_ACQUIRE_TRIES} tries)"
        )

    async def renew_lease(self, key: str, owner: str, token: int, ttl: float) -> bool:
        expires = _now() + dt.timedelta(seconds=ttl)
        with self._errors("renew_lease"):
            result = await self.lease_collection.update_one(
                {"_id": key, "token": token}, {"$set": {"owner": owner, "expires_at": expires}}
            )
        return result.matched_count == 1

    async def release_lease(self, key: str, owner: str, token: int) -> None:
        with self._errors("release_lease"):
            await self.lease_collection.update_one(
                {"_id": key, "token": token}, {"$set": {"expires_at": _EPOCH}}
            )

    async def save_batch_fenced(self, entries: Sequence[Entry], lease_key: str, token: int) -> bool:
        # Check, then write: not atomic (see the module docstring).
        with self._errors("save_batch_fenced"):
            held = await self.lease_collection.find_one(
                {"_id": lease_key, "token": token}, {"_id": 1}
            )
        if held is None:
            return False
        await self.save_batch(entries)
        return True

    async def read_lease(self, key: str) -> LeaseState | None:
        with self._errors("read_lease"):
            doc = await self.lease_collection.find_one({"_id": key})
        return None if doc is None else self._lease(doc)

    async def delete_batch_fenced(self, keys: Sequence[str], lease_key: str, token: int) -> bool:
        # Check, then delete: not atomic (see the module docstring).
        with self._errors("delete_batch"):
            held = await self.lease_collection.find_one(
                {"_id": lease_key, "token": token}, {"_id": 1}
            )
        if held is None:
            return False
        await self.delete_batch(keys)
        return True

    async def delete_lease(self, key: str, token: int | None = None) -> bool:
        which: dict[str, Any] = {"_id": key} if token is None else {"_id": key, "token": token}
        with self._errors("delete_lease"):
            result = await self.lease_collection.delete_one(which)
        return result.deleted_count == 1

    def _lease(self, doc: Doc) -> LeaseState:
        try:
            return LeaseState(str(doc["owner"]), int(doc["token"]), doc["expires_at"].timestamp())
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise DatasourceError(
                f"lease {str(doc.get('_id'))[:80]!r} on MongoDB at {self._where()} is not a "
                f"blokrun lease ({type(exc).__name__})"
            ) from exc


def prefix_regex(prefix: str) -> str:
    """An anchored regex matching strings that start with ``prefix`` taken literally."""
    return "^" + re.escape(prefix)


def _doc(key: str, data: bytes, ttl: float | None, now: dt.datetime) -> Doc:
    expires = None if ttl is None else now + dt.timedelta(seconds=ttl)
    return {"_id": key, "data": bytes(data), "expires_at": expires}


def _secrets_of(url: str) -> tuple[str, ...]:
    """The URL's password, raw and percent-decoded, to scrub from messages."""
    userinfo = url.partition("://")[2].partition("/")[0].rpartition("@")[0]
    raw = userinfo.partition(":")[2]
    return tuple(sorted({raw, unquote(raw)} - {""}, key=len, reverse=True))


def create(settings: DatasourceSettings) -> MongoStore:
    if not settings.url:
        raise DatasourceError("a mongodb datasource needs a URL (DATASOURCE_<NAME>_URL)")
    return MongoStore(
        settings.url,
        database=settings.database,
        collection=settings.collection,
        timeout=settings.timeout,
        pool_size=settings.pool_size,
    )
