"""S3 store (AWS S3, MinIO and other S3-compatible servers) over aioboto3.

URL ``s3://bucket/optional/prefix``: every object lives under ``optional/prefix/`` (a ``/``
is appended). ``ENDPOINT_URL`` selects MinIO & co (path-style addressing, and botocore's
new default CRC checksums only when an operation requires one, which many S3-compatible
servers reject); ``REGION`` defaults to ``us-east-1``; credentials come from
``ACCESS_KEY_ID`` / ``SECRET_ACCESS_KEY`` or else the standard AWS chain. One client is
opened by :meth:`S3Store.connect` (which checks the bucket with ``HeadBucket``), with
connect/read timeouts of ``TIMEOUT`` and 2 attempts per request (``total_max_attempts``:
botocore's ``max_attempts`` counts retries), so a dead endpoint fails in about a second.

**Object names.** A key is UTF-8 percent-encoded: every byte outside ``[A-Za-z0-9_.-]``
and a leading ``.`` become ``%XX``. No name has a ``/``, so there are no ``..`` or empty
segments and no "parent is an object" conflicts (MinIO refuses ``a`` next to ``a/b``), and
``\\ { ^ % #`` never reach the wire raw. The encoding is reversible and keeps prefixes, so
``keys(prefix)`` lists by the encoded prefix. S3 names hold 1024 bytes; a longer encoding
becomes ``<first ~900 encoded chars>~<sha256 of the key>`` (``~`` never occurs in an
encoding), with the key in the object's metadata (base64, within S3's 2 KB metadata limit):
listing still narrows by prefix, and only those rare names cost a ``HEAD`` in ``keys()``.

**Folders.** The datasource's ``PREFIX`` (``workflows/``) keeps its ``/`` as folders, as S3
users expect: key ``raw-data-r1`` is object ``workflows/raw-data-r1`` (each segment of the
prefix up to its last ``/`` encoded as above; the rest of the prefix and the key after it
encoded whole, so ``team/blok-`` gives ``team/blok-raw-data-r1``; a prefix with an empty
segment, ``a//b/``, stays encoded whole). A bucket written by an older
blokrun, which encoded that ``/`` too (``workflows%2Fraw-data-r1``), is found at connect
(one listing) and kept in that form, with a warning, so nothing stored becomes unreadable.

**TTL.** The expiry (Unix seconds, writer's clock) is stored as ``x-amz-meta-blokrun-expires``
and enforced on read: ``load``/``exists`` see the metadata in the same request. Listings
carry no metadata, so ``keys()``/``size()`` would need a ``HEAD`` per object to filter out
expired ones. To keep that off stores that never use TTLs, the first TTL write of a store
instance (then hourly) first puts an empty marker object ``<prefix>~ttl``; ``keys()`` looks
for the marker once per call (after the first page) and only then ``HEAD``s every listed
object, 32 at a time (on moto, 2 busy CPUs: ``keys()`` over 200 objects takes 0.15 s
without TTLs, 1.9 s with; moto serves ~100 requests/s, AWS far more in parallel).
Expired objects are not deleted by the driver (a delete could race a fresh save): add a
bucket lifecycle rule ("expire after N days", N >= your longest TTL) to remove them, with
``ObjectSizeGreaterThan: 0`` so that it spares the (empty) marker.

**Batches.** S3 has no multi-object put or get: ``save_batch``/``load_batch`` send one
request per key, 32 in flight (``POOL_SIZE`` overrides), hence ``native_batch=False``.
``delete``/``delete_batch`` ``HEAD`` first (S3 reports success for absent keys, and the
contract wants a count), then ``DeleteObject`` / ``DeleteObjects`` by 1,000.

**Leases** (:class:`~blokrun.datasources.protocol.LeaseStore`). Each lease is a small JSON
object ``<prefix>~lease/<encoded key>`` (long keys hashed as above) holding ``owner``,
``token`` and ``expires_at`` (Unix seconds, the writer's clock, like TTLs). No key's name
starts with ``~``, so ``keys()`` never yields a lease, and only a listing of the whole
store (no prefix) pages over them, last. Every change is a compare-and-swap with S3
conditional writes (AWS since 2024; moto 5.2 honours both): read the object and its ETag,
decide, then ``PutObject`` with ``IfNoneMatch='*'`` (create) or ``IfMatch=<ETag>``
(replace). On ``412 PreconditionFailed``, ``409 ConditionalRequestConflict`` or ``404``
(deleted meanwhile) someone else changed it first: re-read and decide again (at most
``_LEASE_TRIES`` times, with a short jittered pause). Of racing acquirers exactly one
creates or replaces the object; the others re-read and see the winner. Release sets
``expires_at`` to 0 and keeps the token; ``delete_lease`` removes the object (so does
a lifecycle rule that expires objects); a new object's token is this process's clock in
microseconds (``next_token``), above any token issued before as long as the clocks of the
processes sharing the bucket agree to within a lease's TTL. A server that ignores the
conditions makes leases unsafe.
**Fencing is not atomic** (``atomic_fencing=False``): S3 cannot make a write conditional
on another object, so ``save_batch_fenced`` reads the lease, compares the token, then
writes like ``save_batch``. A holder that has just lost its lease can therefore still land
the one batch it checked before the takeover (a window of one lease read plus the write);
every later batch is refused.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import random
import time
from contextlib import AsyncExitStack, contextmanager
from typing import TYPE_CHECKING, Any

import aioboto3
import aiohttp
import anyio
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, HTTPClientError
from botocore.exceptions import ConnectionError as BotoConnectionError

from blokrun.datasources.protocol import Capabilities, LeaseState, StoreHealth, next_token
from blokrun.errors import DatasourceError, DatasourceUnavailable
from blokrun.redact import mask_url

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence

    from blokrun.datasources.protocol import Entry
    from blokrun.datasources.settings import DatasourceSettings

__all__ = ["S3Store", "create", "decode_key", "encode_key"]

_CAPS = Capabilities(
    native_ttl=False,
    native_batch=False,
    atomic_batch=False,
    self_timed=True,
    leases=True,
    atomic_fencing=False,
)
_SAFE = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-")
_MAX_NAME = 1024  # S3's limit on an object name, in UTF-8 bytes
_HASHED = 65  # "~" + sha256 hex
_MARKER = "~ttl"
log = logging.getLogger("blokrun")

_MARKER_REFRESH = 3600.0
_META_EXPIRES = "blokrun-expires"
_META_KEY = "blokrun-key"
_MISSING = frozenset({"404", "NoSuchKey", "NotFound"})
_LEASES = "~lease/"  # lease objects: outside every key's name (none starts with "~")
#: A conditional write lost: the lease changed (or vanished) since it was read.
_LOST = frozenset({"PreconditionFailed", "412", "ConditionalRequestConflict", "409"}) | _MISSING
_LEASE_TRIES = 10


def encode_key(key: str) -> str:
    """The object-name form of ``key``: reversible, prefix-preserving, no ``/``."""
    out = []
    for i, b in enumerate(key.encode("utf-8")):
        out.append(chr(b) if b in _SAFE and not (i == 0 and b == 0x2E) else f"%{b:02X}")
    return "".join(out)


def decode_key(name: str) -> str | None:
    """Inverse of :func:`encode_key`; ``None`` for a name it could not have produced."""
    try:
        raw = bytearray()
        i = 0
        while i < len(name):
            if name[i] == "%":
                raw.append(int(name[i + 1 : i + 3], 16))
                i += 3
            else:
                raw.append(ord(name[i]))
                i += 1
        key = raw.decode("utf-8")
    except ValueError:
        return None
    return key if key and encode_key(key) == name else None


def _is_hashed(rest: str) -> bool:
    """Whether an object name (without the URL prefix) is a hashed long-key name."""
    return len(rest) >= _HASHED and rest[-_HASHED] == "~"


class S3Store:
    """Objects in one bucket under one prefix; see the module docstring."""

    __slots__ = (
        "_bucket", "_client", "_concurrency", "_connected", "_cut", "_endpoint", "_folders",
        "_folders_enc", "_legacy", "_marker_at", "_opts", "_prefix", "_room", "_stack",
        "_ttl_seen",
    )  # fmt: skip

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        client: Any = None,
        endpoint_url: str | None = None,
        region: str | None = None,
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
        timeout: float = 5.0,
        concurrency: int = 32,
        folders: str = "",
    ) -> None:
        # the datasource's PREFIX up to its last '/', as folders: when no segment is empty
        parts = folders.split("/")[:-1]
        self._folders = "".join(p + "/" for p in parts) if parts and all(parts) else ""
        self._folders_enc = "".join(encode_key(p) + "/" for p in parts) if self._folders else ""
        self._legacy = encode_key(folders) if self._folders else ""  # the PREFIX's old form
        if prefix and not prefix.endswith("/"):
            prefix += "/"
        self._room = _MAX_NAME - len(prefix.encode("utf-8"))
        if self._room < _HASHED + 100:
            raise DatasourceError(f"S3 prefix {prefix[:40]!r}... is too long")
        self._cut = self._room - _HASHED
        self._bucket = bucket
        self._prefix = prefix
        self._client: Any = client
        self._stack: AsyncExitStack | None = None
        self._connected = False
        self._concurrency = concurrency
        self._endpoint = mask_url(endpoint_url) or f"AWS S3 {region or 'us-east-1'}"
        self._opts = endpoint_url, region or "us-east-1", access_key_id, secret_access_key, timeout
        self._marker_at = -_MARKER_REFRESH
        self._ttl_seen = False

    @property
    def capabilities(self) -> Capabilities:
        return _CAPS

    @property
    def is_connected(self) -> bool:
        return self._connected

    # -- lifecycle ----------------------------------------------------------------------------

    async def connect(self) -> None:
        if self._connected:
            return
        stack = None if self._client is not None else AsyncExitStack()
        try:
            with self._errors("connect"):
                if stack is not None:
                    self._client = await stack.enter_async_context(self._new_client())
                await self._client.head_bucket(Bucket=self._bucket)
                await self._legacy_folders()
        except BaseException:
            if stack is not None:
                self._client = None
                with anyio.CancelScope(shield=True):
                    await stack.aclose()
            raise
        self._stack = stack
        self._connected = True

    async def _legacy_folders(self) -> None:
        """A bucket whose PREFIX ``/`` was encoded by an older blokrun stays in that form."""
        if not self._folders:
            return
        old = self._prefix + self._legacy
        listed = await self._client.list_objects_v2(Bucket=self._bucket, Prefix=old, MaxKeys=1)
        if listed.get("KeyCount", 0) or listed.get("Contents"):
            log.warning(
                "S3 bucket %r: objects under %r were written with the prefix's '/' encoded "
                "(before folders); this store keeps that form -- move them under %r to use "
                "folders",
                self._bucket,
                old,
                self._prefix + self._folders_enc,
            )
            self._folders = self._folders_enc = ""

    def _new_client(self) -> Any:
        endpoint, region, key_id, secret, timeout = self._opts
        config = Config(
            connect_timeout=timeout,
            read_timeout=timeout,
            retries={"total_max_attempts": 2, "mode": "standard"},  # 1 retry
            max_pool_connections=self._concurrency,
            s3={"addressing_style": "path"} if endpoint else None,
            request_checksum_calculation="when_required" if endpoint else None,
            response_checksum_validation="when_required" if endpoint else None,
        )
        session = aioboto3.Session(
            aws_access_key_id=key_id, aws_secret_access_key=secret, region_name=region
        )
        return session.client("s3", endpoint_url=endpoint, config=config)

    async def close(self) -> None:
        self._connected = False
        stack, self._stack = self._stack, None
        if stack is not None:
            self._client = None
            with anyio.CancelScope(shield=True):
                await stack.aclose()

    async def describe(self) -> StoreHealth:
        """``HeadBucket``: the bucket is there and readable, the server's name and region
        from its reply headers; reads only (``blokrun doctor``). S3 has no version."""
        with self._errors("describe"):
            reply = await self._client.head_bucket(Bucket=self._bucket)
        headers = reply.get("ResponseMetadata", {}).get("HTTPHeaders", {})
        server = str(headers.get("server") or "")
        region = headers.get("x-amz-bucket-region") or self._opts[1]
        return StoreHealth(
            server=f"S3 ({server})" if server else "S3",
            version=server or "unknown",
            schema=f"bucket {self._bucket!r} reachable (no schema to migrate)",
            notes=(f"region {region}",),
        )

    # -- helpers ------------------------------------------------------------------------------

    @contextmanager
    def _errors(self, op: str) -> Iterator[None]:
        """Translate botocore/aiohttp exceptions; the message names bucket and endpoint."""
        where = f"bucket {self._bucket!r} at {self._endpoint}"
        try:
            yield
        except DatasourceError:
            raise
        except ClientError as exc:
            err = exc.response.get("Error", {})
            code = str(err.get("Code", "?"))
            status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
            if op == "connect" and code in _MISSING:
                raise DatasourceError(f"{where}: the bucket does not exist") from exc
            cls = DatasourceUnavailable if status >= 500 or code == "SlowDown" else DatasourceError
            raise cls(f"{op} failed on {where}: {code} {err.get('Message', '')}".rstrip()) from exc
        except (BotoConnectionError, HTTPClientError, aiohttp.ClientError, OSError) as exc:
            raise DatasourceUnavailable(f"{op}: cannot reach {where}: {exc}") from exc
        except BotoCoreError as exc:  # no credentials, bad parameter, ...
            raise DatasourceError(f"{op} failed on {where}: {exc}") from exc

    def _encode(self, key: str) -> str:
        """``key`` as (the start of) an object name: the PREFIX folders, then the rest."""
        if self._folders and key.startswith(self._folders):
            rest = key[len(self._folders) :]
            return self._folders_enc + (encode_key(rest) if rest else "")
        return encode_key(key) if key else ""

    def _decode(self, name: str) -> str | None:
        """Inverse of :meth:`_encode`; None for a name it could not have produced."""
        if self._folders and name.startswith(self._folders_enc):
            rest = decode_key(name[len(self._folders_enc) :])
            return None if rest is None else self._folders + rest
        return decode_key(name)

    def _name(self, key: str, space: str = "") -> str:
        """The object name of ``key`` (in the lease namespace ``space`` if given)."""
        enc = self._encode(key)
        if len(enc) <= self._room - len(space):
            return self._prefix + space + enc
        cut = self._cut - len(space)
        cut -= 2 if enc[cut - 2] == "%" else enc[cut - 1] == "%"
        return f"{self._prefix}{space}{enc[:cut]}~{hashlib.sha256(key.encode()).hexdigest()}"

    def _meta(self, key: str, name: str, ttl: float | None) -> dict[str, str]:
        meta = {} if ttl is None else {_META_EXPIRES: repr(time.time() + ttl)}
        if _is_hashed(name[len(self._prefix) :]):
            meta[_META_KEY] = base64.urlsafe_b64encode(key.encode()).decode()
        return meta

    @staticmethod
    def _live_key(meta: dict[str, str], key: str | None, now: float) -> str | None:
        """The key an object holds if it is live (``key`` is checked for hashed names)."""
        expires = meta.get(_META_EXPIRES)
        if expires is not None and float(expires) <= now:
            return None
        stored = meta.get(_META_KEY)
        if stored is None:
            return key
        found = base64.urlsafe_b64decode(stored).decode()
        return found if key is None or found == key else None

    async def _each(self, items: Sequence[Any], fn: Callable[[Any], Awaitable[None]]) -> None:
        """Run ``fn`` on every item, ``concurrency`` at a time; re-raise the first failure."""
        it = iter(items)

        async def worker() -> None:
            for item in it:
                await fn(item)

        try:
            async with anyio.create_task_group() as tg:
                for _ in range(min(self._concurrency, len(items))):
                    tg.start_soon(worker)
        except BaseExceptionGroup as group:
            leaf: BaseException = group
            while isinstance(leaf, BaseExceptionGroup):
                leaf = leaf.exceptions[0]
            raise leaf  # noqa: B904 -- keeps the driver's own ``from exc`` cause

    async def _head(self, name: str) -> dict[str, str] | None:
        """The object's metadata, ``None`` if it does not exist."""
        with self._errors("head"):
            try:
                resp = await self._client.head_object(Bucket=self._bucket, Key=name)
            except ClientError as exc:
                if exc.response["Error"].get("Code") in _MISSING:
                    return None
                raise
        meta: dict[str, str] = resp.get("Metadata", {})
        return meta

    async def _verify(self, items: list[tuple[str, str | None]], prefix: str) -> list[str]:
        """HEAD each ``(name, key or None)``; the live keys among them."""
        now = time.time()
        live: list[str] = []

        async def check(item: tuple[str, str | None]) -> None:
            meta = await self._head(item[0])
            found = None if meta is None else self._live_key(meta, item[1], now)
            if found is not None and found.startswith(prefix):
                live.append(found)

        await self._each(items, check)
        return live

    async def _mark_ttl(self) -> None:
        if time.monotonic() - self._marker_at < _MARKER_REFRESH:
            return
        with self._errors("save"):
            await self._client.put_object(Bucket=self._bucket, Key=self._prefix + _MARKER, Body=b"")
        self._marker_at = time.monotonic()
        self._ttl_seen = True

    async def _put(self, entry: Entry) -> None:
        key, data, ttl = entry
        name = self._name(key)
        with self._errors("save"):
            await self._client.put_object(
                Bucket=self._bucket, Key=name, Body=data, Metadata=self._meta(key, name, ttl)
            )

    # -- the contract -------------------------------------------------------------------------

    async def save(self, key: str, data: bytes, ttl: float | None = None) -> None:
        if ttl is not None:
            await self._mark_ttl()
        await self._put((key, data, ttl))

    async def load(self, key: str) -> bytes | None:
        with self._errors("load"):
            try:
                resp = await self._client.get_object(Bucket=self._bucket, Key=self._name(key))
            except ClientError as exc:
                if exc.response["Error"].get("Code") in _MISSING:
                    return None
                raise
            async with resp["Body"] as body:
                if self._live_key(resp.get("Metadata", {}), key, time.time()) is None:
                    return None
                data: bytes = await body.read()
                return data

    async def exists(self, key: str) -> bool:
        meta = await self._head(self._name(key))
        return meta is not None and self._live_key(meta, key, time.time()) is not None

    async def delete(self, key: str) -> bool:
        return await self.delete_batch([key]) > 0

    async def save_batch(self, entries: Sequence[Entry]) -> None:
        if any(ttl is not None for _, _, ttl in entries):
            await self._mark_ttl()
        last = {key: (key, data, ttl) for key, data, ttl in entries}  # a repeated key: last wins
        await self._each(list(last.values()), self._put)

    async def load_batch(self, keys: Sequence[str]) -> dict[str, bytes]:
        out: dict[str, bytes] = {}

        async def one(key: str) -> None:
            data = await self.load(key)
            if data is not None:
                out[key] = data

        await self._each(list(dict.fromkeys(keys)), one)
        return out

    async def delete_batch(self, keys: Sequence[str]) -> int:
        present: list[str] = []

        async def probe(name: str) -> None:
            if await self._head(name) is not None:
                present.append(name)

        await self._each(list(dict.fromkeys(self._name(k) for k in keys)), probe)
        for i in range(0, len(present), 1000):
            chunk = [{"Key": name} for name in present[i : i + 1000]]
            with self._errors("delete"):
                resp = await self._client.delete_objects(
                    Bucket=self._bucket, Delete={"Objects": chunk, "Quiet": True}
                )
            if resp.get("Errors"):
                err = resp["Errors"][0]
                raise DatasourceError(
                    f"delete failed on bucket {self._bucket!r}: {len(resp['Errors'])} objects "
                    f"not deleted ({err.get('Code')}: {err.get('Message')})"
                )
        return len(present)

    async def keys(self, prefix: str = "") -> AsyncIterator[str]:
        paginator = self._client.get_paginator("list_objects_v2")
        listed = self._prefix + self._encode(prefix)[: self._cut - 2]
        ttl_in_use: bool | None = None
        pages = paginator.paginate(Bucket=self._bucket, Prefix=listed).__aiter__()
        while True:
            with self._errors("keys"):
                try:
                    page = await pages.__anext__()
                except StopAsyncIteration:
                    return
                if ttl_in_use is None:
                    marker = self._ttl_seen or await self._head(self._prefix + _MARKER)
                    ttl_in_use = self._ttl_seen = marker is not None
            live: list[str] = []
            to_check: list[tuple[str, str | None]] = []
            for obj in page.get("Contents", []):
                name: str = obj["Key"]
                rest = name[len(self._prefix) :]
                if rest.startswith(_LEASES):
                    continue  # listed only by a whole-store listing, never a key
                if _is_hashed(rest):
                    to_check.append((name, None))  # hashed name: the key is in its metadata
                    continue
                key = self._decode(rest)  # None for the marker and for foreign objects
                if key is None or not key.startswith(prefix):
                    continue
                if ttl_in_use:
                    to_check.append((name, key))
                else:
                    live.append(key)
            live.extend(await self._verify(to_check, prefix))
            for key in live:
                yield key

    async def size(self) -> int:
        n = 0
        async for _ in self.keys():
            n += 1
        return n

    # -- leases (see the module docstring) ----------------------------------------------------

    async def _get_lease(self, name: str, op: str) -> tuple[LeaseState | None, str | None]:
        """The lease stored under ``name`` and its ETag; ``(None, None)`` if there is none."""
        with self._errors(op):
            try:
                resp = await self._client.get_object(Bucket=self._bucket, Key=name)
            except ClientError as exc:
                if exc.response["Error"].get("Code") in _MISSING:
                    return None, None
                raise
            async with resp["Body"] as body:
                raw: bytes = await body.read()
        try:
            doc = json.loads(raw)
            state = LeaseState(str(doc["owner"]), int(doc["token"]), float(doc["expires_at"]))
        except (ValueError, TypeError, KeyError) as exc:
            raise DatasourceError(
                f"{op} failed on bucket {self._bucket!r} at {self._endpoint}: "
                f"the lease object is not a blokrun lease ({type(exc).__name__})"
            ) from exc
        return state, str(resp["ETag"])

    async def _put_lease(self, name: str, state: LeaseState, etag: str | None, op: str) -> bool:
        """Write ``state`` iff the object is still the one read (``etag``; ``None``: absent).

        ``False`` if it changed meanwhile: the caller re-reads and decides again.
        """
        body = json.dumps(
            {"owner": state.owner, "token": state.token, "expires_at": state.expires_at}
        ).encode()
        cond = {"IfNoneMatch": "*"} if etag is None else {"IfMatch": etag}
        with self._errors(op):
            try:
                await self._client.put_object(
                    Bucket=self._bucket,
                    Key=name,
                    Body=body,
                    ContentType="application/json",
                    **cond,
                )
            except ClientError as exc:
                if exc.response["Error"].get("Code") in _LOST:
                    return False
                raise
        return True

    async def _contended(self, op: str, attempt: int) -> None:
        """Pause before re-reading a lease another writer changed; give up at last."""
        if attempt >= _LEASE_TRIES:
            raise DatasourceError(
                f"{op} failed on bucket {self._bucket!r} at {self._endpoint}: the lease "
                f"object kept changing ({_LEASE_TRIES} tries)"
            )
        await anyio.sleep(random.uniform(0, 0.01 * attempt))  # noqa: S311 -- jitter only

    async def acquire_lease(self, key: str, owner: str, ttl: float) -> LeaseState:
        name, attempt = self._name(key, _LEASES), 0
        while True:
            current, etag = await self._get_lease(name, "acquire_lease")
            now = time.time()
            if current is not None and current.live(now) and current.owner != owner:
                return current
            state = LeaseState(owner, next_token(current.token if current else None), now + ttl)
            if await self._put_lease(name, state, etag, "acquire_lease"):
                return state
            attempt += 1
            await self._contended("acquire_lease", attempt)

    async def renew_lease(self, key: str, owner: str, token: int, ttl: float) -> bool:
        name, attempt = self._name(key, _LEASES), 0
        while True:
            current, etag = await self._get_lease(name, "renew_lease")
            if current is None or current.token != token:
                return False
            if await self._put_lease(
                name, LeaseState(owner, token, time.time() + ttl), etag, "renew_lease"
            ):
                return True
            attempt += 1
            await self._contended("renew_lease", attempt)

    async def release_lease(self, key: str, owner: str, token: int) -> None:
        name, attempt = self._name(key, _LEASES), 0
        while True:
            current, etag = await self._get_lease(name, "release_lease")
            if current is None or current.token != token or current.expires_at == 0.0:
                return
            if await self._put_lease(
                name, LeaseState(current.owner, token, 0.0), etag, "release_lease"
            ):
                return
            attempt += 1
            await self._contended("release_lease", attempt)

    async def save_batch_fenced(self, entries: Sequence[Entry], lease_key: str, token: int) -> bool:
        # Check, then write: not atomic (see the module docstring).
        current, _ = await self._get_lease(self._name(lease_key, _LEASES), "save_batch_fenced")
        if current is None or current.token != token:
            return False
        await self.save_batch(entries)
        return True

    async def read_lease(self, key: str) -> LeaseState | None:
        state, _ = await self._get_lease(self._name(key, _LEASES), "read_lease")
        return state

    async def delete_batch_fenced(self, keys: Sequence[str], lease_key: str, token: int) -> bool:
        # Check, then delete: not atomic (see the module docstring).
        current, _ = await self._get_lease(self._name(lease_key, _LEASES), "delete_batch")
        if current is None or current.token != token:
            return False
        await self.delete_batch(keys)
        return True

    async def delete_lease(self, key: str, token: int | None = None) -> bool:
        name = self._name(key, _LEASES)
        if token is not None:  # check, then delete: not atomic (see the module docstring)
            current, _ = await self._get_lease(name, "delete_lease")
            if current is None or current.token != token:
                return False
        elif await self._head(name) is None:
            return False
        with self._errors("delete_lease"):
            await self._client.delete_object(Bucket=self._bucket, Key=name)
        return True


def create(settings: DatasourceSettings) -> S3Store:
    url = settings.url or ""
    scheme, _, rest = url.partition("://")
    bucket, _, prefix = rest.partition("/")
    bucket = bucket.rpartition("@")[2]
    if scheme.lower() != "s3" or not bucket:
        raise DatasourceError(
            f"S3 URL {mask_url(url)!r}: expected s3://bucket or s3://bucket/prefix"
        )
    return S3Store(
        bucket,
        prefix,
        endpoint_url=settings.endpoint_url,
        region=settings.region,
        access_key_id=settings.access_key_id,
        secret_access_key=settings.secret_access_key,
        timeout=settings.timeout,
        concurrency=settings.pool_size or 32,
        folders=settings.prefix,
    )
