"""The datasource contract, run on every driver through the public wrapper.

Every test takes the ``server`` fixture (parametrised over all drivers in ``tests/conftest``),
builds its datasources with ``build_datasource(server.settings(...))`` and works under a
prefix of its own, so tests sharing one throwaway server never see each other's keys.
The rules checked are the ones listed in ``blokrun/datasources/protocol.py``.
"""

from __future__ import annotations

import os
import time
import unicodedata
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit
from uuid import uuid4

import anyio
import anyio.lowlevel
import orjson
import pytest

from blokrun.datasources import build_datasource
from blokrun.errors import BlokrunError, DatasourceError, DatasourceUnavailable
from tests.servers.base import free_port

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable

    from blokrun.config import DatasourceSettings
    from blokrun.datasources import Datasource
    from tests.servers.base import ThrowawayServer

#: Drivers whose "server" is this process: ``stop()`` does nothing, data is not shared.
LOCAL_DRIVERS = frozenset({"memory", "filesystem"})
#: Short expiry used by the TTL test (fractional seconds are part of the contract); slow
#: servers get 1 s so the "still there" checks finish before it runs out.
TTL = 0.5
SLOW_TTL = 1.0
#: Slack after the expiry before asserting a key is gone.
TTL_SLACK = 0.2
#: A password that must never show up in an error.
SECRET = "s3cret"
#: Timeout for the outage / connect-failure tests, and the allowed overshoot.
SHORT_TIMEOUT = 2.0
OVERSHOOT = 2.0


def _tag() -> str:
    return f"t-{uuid4().hex[:8]}/"


def _settings(
    server: ThrowawayServer, name: str = "contract", **overrides: Any
) -> DatasourceSettings:
    overrides.setdefault("prefix", _tag())
    return server.settings(name, **overrides)


@asynccontextmanager
async def _open(server: ThrowawayServer, **overrides: Any) -> AsyncIterator[Datasource]:
    async with build_datasource(_settings(server, **overrides)) as ds:
        yield ds


def _slow(server: ThrowawayServer) -> bool:
    """moto (s3) and the Python MongoDB emulator take ~5-30 ms per object: use less data."""
    return server.driver == "s3" or bool(getattr(server, "emulator", False))


def _batch_size(server: ThrowawayServer) -> int:
    return 200 if _slow(server) else 1000


def _utf8_len(key: str) -> int:
    return len(key.encode("utf-8"))


def _connected(ds: Datasource) -> bool:
    return ds.is_connected  # a call, so mypy does not narrow the property between checks


# -- 1. round trip --------------------------------------------------------------------------


async def test_round_trip(server: ThrowawayServer) -> None:
    async with _open(server) as ds:
        assert await ds.load("k") is None
        assert await ds.exists("k") is False
        assert await ds.keys() == []
        assert await ds.size() == 0

        await ds.save("k", b"first value, quite a bit longer than the second")
        assert await ds.load("k") == b"first value, quite a bit longer than the second"
        assert await ds.exists("k") is True
        assert await ds.keys() == ["k"]
        assert await ds.size() == 1

        # Overwriting replaces the whole value (a shorter value must not keep a tail).
        await ds.save("k", b"second")
        assert await ds.load("k") == b"second", server.label
        assert await ds.size() == 1

        assert await ds.delete("k") is True
        assert await ds.delete("k") is False
        assert await ds.load("k") is None
        assert await ds.exists("k") is False
        assert await ds.keys() == []
        assert await ds.size() == 0

        assert await ds.delete("never-saved") is False


async def test_missing_keys_are_absent(server: ThrowawayServer) -> None:
    async with _open(server) as ds:
        assert await ds.load("missing") is None
        assert await ds.exists("missing") is False
        assert await ds.load_batch(["missing-1", "missing-2"]) == {}
        assert await ds.delete_batch(["missing-1", "missing-2"]) == 0
        assert await ds.keys("missing") == []


# -- 2. bytes fidelity ----------------------------------------------------------------------

_JSON_VALUES: dict[str, Any] = {
    "object": {"a": 1, "nested": {"list": [1, 2, {"x": None}]}, "": "empty key"},
    "empty-object": {},
    "array": [1, "two", 3.5, True, False, None, [], {}],
    "empty-array": [],
    "string": 'quote " backslash \\ slash / nl \n tab \t cr \r nul \x00 \x1f \u2028 ü キー 🚀',
    "empty-string": "",
    "int": 42,
    "int-zero": 0,
    "int-max-i64": 2**63 - 1,
    "int-min-i64": -(2**63),
    "int-max-u64": 2**64 - 1,
    "float": 3.141592653589793,
    "float-tiny": 5e-324,
    "float-huge": 1.7976931348623157e308,
    "float-neg-zero": -0.0,
    "true": True,
    "false": False,
    "null": None,
}


def _payloads(server: ThrowawayServer) -> dict[str, bytes]:
    big = 256 * 1024 if _slow(server) else 1024 * 1024
    out = {
        "empty": b"",
        "one-nul": b"\x00",
        "all-256-bytes": bytes(range(256)),
        "all-256-bytes-reversed": bytes(range(255, -1, -1)),
        "crlf-and-whitespace": b"\r\n \t\n\n  ",
        "invalid-utf8": b"\xff\xfe\xc3\x28\xed\xa0\x80",
        "looks-like-a-header": b"BKF1" + bytes(16) + b"payload",
        f"random-{big}": os.urandom(big),
    }
    for name, value in _JSON_VALUES.items():
        out[f"json-{name}"] = orjson.dumps(value)
    return out


async def test_bytes_fidelity(server: ThrowawayServer) -> None:
    payloads = _payloads(server)
    async with _open(server) as ds:
        for name, data in payloads.items():
            await ds.save(name, data)
        for name, data in payloads.items():
            got = await ds.load(name)
            assert isinstance(got, bytes), f"{server.label}: {name}: load returned {type(got)}"
            assert got == data, f"{server.label}: {name}: {len(got)} bytes back, {len(data)} saved"
        for name, value in _JSON_VALUES.items():
            got = await ds.load(f"json-{name}")
            assert got is not None
            assert orjson.loads(got) == value, f"{server.label}: json-{name}"

        # The batch path keeps the bytes exact too.
        await ds.save_batch([(f"b/{name}", data, None) for name, data in payloads.items()])
        found = await ds.load_batch([f"b/{name}" for name in payloads])
        assert set(found) == {f"b/{name}" for name in payloads}
        for name, data in payloads.items():
            got = found[f"b/{name}"]
            assert isinstance(got, bytes), f"{server.label}: {name}: batch gave {type(got)}"
            assert got == data, f"{server.label}: batch {name} differs"


# -- 3. TTL ---------------------------------------------------------------------------------


async def test_ttl_expiry(server: ThrowawayServer) -> None:
    """Explicit ``ttl`` and the datasource default TTL, one shared wait (keeps it fast).

    Each read path gets expired keys of its own (``size`` runs first), so a driver that
    purges expired keys lazily on one path cannot hide a bug in another.
    """
    ttl = SLOW_TTL if _slow(server) else TTL
    tag = _tag()
    paths = ("keys", "batch", "load", "exists")
    # ``raw`` has no prefix so ``size()`` reaches the driver's own ``size``; its keys still
    # live under a unique tag. ``dflt`` has a default TTL and counts through ``keys``.
    async with (
        _open(server, prefix="") as raw,
        _open(server, ttl=ttl) as dflt,
    ):
        raw_size_before = await raw.size()
        start = time.monotonic()
        for path in paths[:2]:
            await raw.save(f"{tag}{path}/short", b"short", ttl=ttl)
            await raw.save(f"{tag}{path}/forever", b"forever")
        await raw.save_batch(
            [(f"{tag}{path}/short", b"short", ttl) for path in paths[2:]]
            + [(f"{tag}{path}/forever", b"forever", None) for path in paths[2:]]
        )
        await dflt.save("default", b"d")  # no ttl: the datasource default applies
        await dflt.save("explicit-long", b"l", ttl=60)  # an explicit ttl wins
        await dflt.save_batch([("b-default", b"bd", None)])
        saved = time.monotonic()  # every ttl'd key expires by saved + ttl

        every = [f"{tag}{path}/{kind}" for path in paths for kind in ("short", "forever")]
        assert set(await raw.load_batch(every)) == set(every)
        assert sorted(await raw.keys(tag)) == sorted(every)
        assert await raw.size() == raw_size_before + len(every)
        assert await dflt.load("default") == b"d"
        assert await dflt.exists("b-default") is True
        assert await dflt.size() == 3
        elapsed = time.monotonic() - start
        assert elapsed < ttl, f"{server.label}: setting up took {elapsed:.2f}s, over the TTL"

        await anyio.sleep(saved + ttl + TTL_SLACK - time.monotonic())

        size = await raw.size()
        assert size == raw_size_before + len(paths), f"{server.label}: size counts expired keys"
        assert await raw.keys(f"{tag}keys/") == [f"{tag}keys/forever"], (
            f"{server.label}: keys() lists an expired key"
        )
        assert await raw.load_batch([f"{tag}batch/short", f"{tag}batch/forever"]) == {
            f"{tag}batch/forever": b"forever"
        }, f"{server.label}: load_batch returns an expired key"
        assert await raw.load(f"{tag}load/short") is None, f"{server.label}: load after ttl"
        assert await raw.exists(f"{tag}exists/short") is False, f"{server.label}: exists"
        for path in paths:
            assert await raw.load(f"{tag}{path}/forever") == b"forever"
            assert await raw.load(f"{tag}{path}/short") is None
        assert sorted(await raw.keys(tag)) == sorted(f"{tag}{p}/forever" for p in paths)

        assert await dflt.load("default") is None, f"{server.label}: default ttl not applied"
        assert await dflt.exists("b-default") is False, f"{server.label}: default ttl (batch)"
        assert await dflt.load("explicit-long") == b"l", f"{server.label}: explicit ttl ignored"
        assert await dflt.keys() == ["explicit-long"]
        assert await dflt.size() == 1


async def test_invalid_ttl_is_rejected(server: ThrowawayServer) -> None:
    async with _open(server) as ds:
        for bad in (0, -1, float("nan"), float("inf")):
            with pytest.raises(DatasourceError):
                await ds.save("k", b"v", ttl=bad)
        assert await ds.exists("k") is False


# -- 4. batches -----------------------------------------------------------------------------


async def test_batches(server: ThrowawayServer) -> None:
    n = _batch_size(server)
    entries = [(f"item-{i:05d}", f"value {i}".encode() * (1 + i % 7), None) for i in range(n)]
    keys = [k for k, _, _ in entries]
    # fsync=False: 1,000 fsyncs cost the filesystem driver seconds and prove nothing here
    # (every other test runs with the default fsync=True). Other drivers ignore it.
    async with _open(server, fsync=False) as ds:
        await ds.save_batch(entries)
        assert await ds.size() == n, server.label

        missing = [f"missing-{i}" for i in range(10)]
        found = await ds.load_batch(keys + missing)
        assert len(found) == n
        assert found == {k: v for k, v, _ in entries}, f"{server.label}: load_batch differs"

        assert sorted(await ds.keys()) == keys
        assert await ds.load_batch([]) == {}
        await ds.save_batch([])

        half = keys[: n // 2]
        assert await ds.delete_batch(half) == len(half), server.label
        assert await ds.size() == n - len(half)
        assert await ds.load_batch(half) == {}
        assert await ds.delete_batch(keys[n // 2 :]) == n - len(half)
        assert await ds.size() == 0
        assert await ds.delete_batch([]) == 0


async def test_delete_batch_counts_only_existing(server: ThrowawayServer) -> None:
    async with _open(server) as ds:
        await ds.save_batch([(f"k{i}", b"v", None) for i in range(5)])
        removed = await ds.delete_batch([f"k{i}" for i in range(10)])
        assert removed == 5, f"{server.label}: delete_batch counted {removed}, 5 existed"
        assert await ds.delete_batch([f"k{i}" for i in range(5)]) == 0


async def test_save_batch_overwrites_and_repeats(server: ThrowawayServer) -> None:
    async with _open(server) as ds:
        await ds.save("a", b"old-and-long")
        await ds.save_batch([("a", b"new", None), ("b", b"1", None), ("b", b"2", None)])
        assert await ds.load_batch(["a", "b"]) == {"a": b"new", "b": b"2"}, server.label
        assert await ds.size() == 2


# -- 5. keys(prefix) ------------------------------------------------------------------------

_PREFIX_KEYS = [
    "job-1",
    "job-10",
    "job-1-a",
    "job-2",
    "job",
    "jobs",
    "a",
    "aa",
    "ab",
    "abc",
    "a1",
    "aX",
    "aXb",
    "a*",
    "a*b",
    "a?",
    "a?c",
    "a[1]",
    "a[1]x",
    "a[",
    "a%",
    "a%z",
    "a_",
    "a_1",
    "a\\b",
    "a\\\\b",
    "a.b",
    "aZb",
    "a|b",
    "a+",
    "a{1}",
    "(x)",
    "(x)y",
    "x",
    "^$",
    "^",
    "$",
    "'q'",
    '"q"',
    "a/b",
    "a//b",
]
_PREFIX_QUERIES = [
    "job-1",
    "job-1-",
    "job",
    "job-",
    "a",
    "a*",
    "a?",
    "a[1]",
    "a[",
    "a%",
    "a_",
    "a\\",
    "a\\b",
    "a\\\\",
    "a.",
    "a.b",
    "a|",
    "a+",
    "a{",
    "(x)",
    "(",
    "^$",
    "^",
    "$",
    "*",
    "?",
    "%",
    "_",
    ".",
    "[",
    "\\",
    "'",
    '"',
    "a/",
    "a//",
    "zzz",
]


async def test_keys_prefix_is_literal(server: ThrowawayServer) -> None:
    async with _open(server) as ds:
        await ds.save_batch([(k, k.encode(), None) for k in _PREFIX_KEYS])
        assert sorted(await ds.keys()) == sorted(_PREFIX_KEYS)
        assert sorted(await ds.keys("job-1")) == ["job-1", "job-1-a", "job-10"]
        assert await ds.keys("job-1-") == ["job-1-a"]
        wrong: dict[str, tuple[list[str], list[str]]] = {}
        for prefix in _PREFIX_QUERIES:
            got = await ds.keys(prefix)
            expected = sorted(k for k in _PREFIX_KEYS if k.startswith(prefix))
            if sorted(got) != expected or len(got) != len(set(got)):
                wrong[prefix] = (sorted(got), expected)
        assert not wrong, f"{server.label}: keys(prefix) as (got, expected): {wrong}"


# -- 6. hostile and invalid keys ------------------------------------------------------------

_MAX_KEY = "キ" * 341 + "x"  # 1024 UTF-8 bytes, 342 characters
_HOSTILE_KEYS = [
    "../../etc/passwd",
    "..\\..\\windows\\system32",
    "a/b/c",
    "a/b/c/",
    "/abs",
    "//double",
    "..",
    ".",
    ".hidden",
    ".tmp-1234",
    "~tilde",
    "~" + "0" * 64,
    "sp ace",
    " leading-and-trailing ",
    "semi;colon",
    "ünïcødé-キー",
    "emoji-🚀🔥👩\u200d💻",
    unicodedata.normalize("NFC", "café"),
    unicodedata.normalize("NFD", "café"),
    "Case",
    "case",
    "%2F",
    "%",
    "%%",
    "a%2Fb",
    "a\\b",
    "*",
    "?",
    "[x]",
    "{$where: 1}",
    "'; DROP TABLE x; --",
    "key\u2028sep",
    "\ufeffbom",
    "CON",
    _MAX_KEY,
]


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def _abs_exists() -> bool:
    return os.path.lexists("/abs")


def _only_files(folder: Path) -> bool:
    return all(p.is_file() for p in folder.iterdir())


async def _check_hostile(ds: Datasource, label: str) -> None:
    assert len(set(_HOSTILE_KEYS)) == len(_HOSTILE_KEYS)
    assert _utf8_len(_MAX_KEY) == 1024
    for key in _HOSTILE_KEYS:
        await ds.save(key, key.encode())
    for key in _HOSTILE_KEYS:
        got = await ds.load(key)
        assert got == key.encode(), f"{label}: {key[:60]!r} loaded {got!r:.80}"
        assert await ds.exists(key), f"{label}: {key[:60]!r}"
    listed = await ds.keys()
    assert sorted(listed) == sorted(_HOSTILE_KEYS), f"{label}: keys() changed the keys"
    for key in _HOSTILE_KEYS:
        assert key in await ds.keys(key), f"{label}: keys({key[:60]!r}) misses it"
    assert await ds.size() == len(_HOSTILE_KEYS)
    found = await ds.load_batch(_HOSTILE_KEYS)
    assert found == {k: k.encode() for k in _HOSTILE_KEYS}, label
    assert await ds.delete("../../etc/passwd") is True
    assert await ds.delete_batch(_HOSTILE_KEYS) == len(_HOSTILE_KEYS) - 1
    assert await ds.keys() == []


async def test_hostile_keys_round_trip(server: ThrowawayServer, tmp_path: Path) -> None:
    async with _open(server) as ds:
        await _check_hostile(ds, server.label)
    if server.driver != "filesystem":
        return
    # Once more with no prefix at all, in a folder of our own, and check containment.
    folder = tmp_path / "outer" / "inner" / "store"
    abs_before = _abs_exists()
    async with _open(server, prefix="", path=str(folder)) as ds:
        before = _tree(tmp_path)
        await _check_hostile(ds, server.label)
        for key in _HOSTILE_KEYS:
            await ds.save(key, b"x")
    outside = {p for p in _tree(tmp_path) - before if not p.startswith("outer/inner/store/")}
    assert not outside, f"filesystem wrote outside its folder: {sorted(outside)}"
    assert _abs_exists() == abs_before
    assert _only_files(folder), "the store folder grew sub-folders"


_INVALID_KEYS = {
    "empty": "",
    "nul": "a\x00b",
    "newline": "a\nb",
    "carriage-return": "a\rb",
    "1025-bytes": "x" * 1025,
    "1026-bytes-342-chars": "キ" * 342,
}


async def test_invalid_keys_are_rejected(server: ThrowawayServer) -> None:
    async with _open(server) as ds:
        for name, key in _INVALID_KEYS.items():
            calls: dict[str, Any] = {
                "save": lambda k=key: ds.save(k, b"v"),
                "load": lambda k=key: ds.load(k),
                "exists": lambda k=key: ds.exists(k),
                "delete": lambda k=key: ds.delete(k),
                "save_batch": lambda k=key: ds.save_batch([("ok", b"v", None), (k, b"v", None)]),
                "load_batch": lambda k=key: ds.load_batch(["ok", k]),
                "delete_batch": lambda k=key: ds.delete_batch(["ok", k]),
            }
            if key:
                calls["keys"] = lambda k=key: ds.keys(k)
            for op, call in calls.items():
                with pytest.raises(DatasourceError) as info:
                    await call()
                assert not isinstance(info.value, DatasourceUnavailable), (
                    f"{server.label}: {op}({name}) raised {info.value!r}"
                )
        assert await ds.size() == 0, f"{server.label}: an invalid batch was partly saved"
        await ds.save("ok", b"still usable")
        assert await ds.load("ok") == b"still usable"


# -- 7. concurrency -------------------------------------------------------------------------


def _payload(i: int) -> bytes:
    # Different lengths and contents; the trailer names the writer.
    return bytes([i]) * (64 * 1024 + 997 * i) + f"|{i}".encode()


async def test_concurrent_saves_never_tear(server: ThrowawayServer) -> None:
    writers = 50
    written = {_payload(i) for i in range(writers + 1)}
    bad: list[str] = []
    async with _open(server) as ds:
        await ds.save("hot", _payload(0))
        done = anyio.Event()

        async def save(i: int) -> None:
            await ds.save("hot", _payload(i))

        async def read() -> None:
            while True:
                got = await ds.load("hot")
                if got not in written:
                    bad.append(f"{len(got)} bytes" if got is not None else "None")
                if done.is_set():
                    return
                await anyio.lowlevel.checkpoint()  # an in-process store never yields

        async with anyio.create_task_group() as readers:
            for _ in range(10):
                readers.start_soon(read)
            async with anyio.create_task_group() as savers:
                for i in range(1, writers + 1):
                    savers.start_soon(save, i)
            done.set()

        assert not bad, f"{server.label}: torn or unknown values read: {bad[:10]}"
        final = await ds.load("hot")
        assert final in written - {_payload(0)}, f"{server.label}: last write lost"
        assert await ds.size() == 1


# -- 8. outage ------------------------------------------------------------------------------


def _skip_local(server: ThrowawayServer, what: str) -> None:
    if server.driver in LOCAL_DRIVERS:
        pytest.skip(f"{server.label}: {what}")


@pytest.mark.server
async def test_outage_raises_unavailable_and_data_survives(server: ThrowawayServer) -> None:
    _skip_local(server, "stop() does nothing for an in-process store: no outage to test")
    settings = _settings(server, name="outage", timeout=SHORT_TIMEOUT)
    ds = build_datasource(settings)
    await ds.connect()
    try:
        await ds.save("survivor", b"still here")
        server.stop()
        try:
            calls: list[tuple[str, Callable[[], Awaitable[object]]]] = [
                ("save", lambda: ds.save("during", b"x")),
                ("load", lambda: ds.load("survivor")),
            ]
            for op, call in calls:
                start = time.monotonic()
                with pytest.raises(DatasourceUnavailable) as info:
                    await call()
                elapsed = time.monotonic() - start
                assert elapsed < SHORT_TIMEOUT + OVERSHOOT, (
                    f"{server.label}: {op} took {elapsed:.1f}s while the server was down"
                )
                assert info.value.datasource == "outage", f"{server.label}: {info.value!r}"
                assert "outage" in str(info.value)
        finally:
            server.start()
        async with build_datasource(settings) as fresh:
            assert await fresh.load("survivor") == b"still here", server.label
    finally:
        await ds.close()


# -- 9. connect failure ---------------------------------------------------------------------


def _unreachable(server: ThrowawayServer) -> DatasourceSettings:
    port = free_port()  # bound then closed: nothing listens there
    if server.driver == "filesystem":
        raise AssertionError("filesystem is handled by the caller")
    if server.driver == "s3":
        return _settings(
            server,
            endpoint_url=f"http://127.0.0.1:{port}",
            secret_access_key=SECRET,
            timeout=SHORT_TIMEOUT,
        )
    url = server.settings().url
    assert url, f"{server.label}: settings have no url"
    parts = urlsplit(url)
    if parts.scheme == "unix":
        pytest.skip(f"{server.label}: a unix-socket url has no port to point elsewhere")
    user = "" if server.driver == "redis" else "u"
    netloc = f"{user}:{SECRET}@127.0.0.1:{port}"
    url = urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
    return _settings(server, url=url, timeout=SHORT_TIMEOUT)


def _chain(exc: BaseException) -> list[BaseException]:
    out: list[BaseException] = []
    cur: BaseException | None = exc
    while cur is not None and cur not in out:
        out.append(cur)
        cur = cur.__cause__ or cur.__context__
    return out


async def test_connect_failure_is_unavailable(server: ThrowawayServer, tmp_path: Path) -> None:
    if server.driver == "memory":
        pytest.skip(f"{server.label}: an in-process store has no address to be unreachable")
    if server.driver == "filesystem":
        blocker = tmp_path / "a-file"
        blocker.write_bytes(b"not a folder")
        settings = _settings(server, path=str(blocker / "store"), timeout=SHORT_TIMEOUT)
    else:
        settings = _unreachable(server)
    ds = build_datasource(settings)
    start = time.monotonic()
    with pytest.raises(DatasourceUnavailable) as info:
        await ds.connect()
    elapsed = time.monotonic() - start
    await ds.close()
    exc = info.value
    assert elapsed < SHORT_TIMEOUT + OVERSHOOT, f"{server.label}: connect took {elapsed:.1f}s"
    assert exc.datasource == "contract", f"{server.label}: {exc!r}"
    assert "contract" in str(exc)
    assert _connected(ds) is False
    for link in _chain(exc):
        if isinstance(link, BlokrunError):
            for text in (str(link), repr(link)):
                assert SECRET not in text, f"{server.label}: password leaked: {text}"


# -- 10. lifecycle --------------------------------------------------------------------------


async def test_lifecycle(server: ThrowawayServer) -> None:
    settings = _settings(server)
    ds = build_datasource(settings)
    assert _connected(ds) is False
    await ds.close()  # closing what never opened is fine
    await ds.connect()
    assert _connected(ds) is True
    await ds.connect()  # idempotent
    assert _connected(ds) is True
    await ds.save("k", b"v")
    await ds.close()
    assert _connected(ds) is False
    await ds.close()  # twice is fine
    assert _connected(ds) is False

    async with build_datasource(settings) as again:
        assert _connected(again) is True
        if server.driver != "memory":  # memory stores are private to one datasource
            assert await again.load("k") == b"v", server.label
    assert _connected(again) is False

    # Reconnecting a closed datasource works.
    await ds.connect()
    try:
        assert _connected(ds) is True
        await ds.save("k2", b"v2")
        assert await ds.load("k2") == b"v2"
    finally:
        await ds.close()


async def test_match_takes_glob_patterns_served_by_a_prefix_listing(
    server: ThrowawayServer,
) -> None:
    async with build_datasource(_settings(server)) as ds:
        await ds.save_batch(
            [(k, b"v", None) for k in ("job-1-a", "job-10-a", "job-1-b", "job-2-a", "jobx")]
        )
        assert sorted(await ds.match("job-1-*")) == ["job-1-a", "job-1-b"]
        assert sorted(await ds.match("job-?-a")) == ["job-1-a", "job-2-a"]
        assert sorted(await ds.match("job-[12]-a")) == ["job-1-a", "job-2-a"]
        assert await ds.match("jobx") == ["jobx"]
        assert await ds.match("job") == []
