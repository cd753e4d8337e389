"""Attacks on issue 18's hot-path shortcuts (1c784ff) and on the bare loop of ``make bench``
(b82dad7).

Each test names the guarantee it attacks:

* a step's start event reaches every hook that defines ``before_step``, however it defines
  it, once per step, in order, and a raising ``before_step`` still fails the run;
* the default key pattern's alias is what rendering the template gives, for any request id
  and step name, and is the key a real run writes;
* records sealed with a Kind or an int, any compression, encrypted or not, open as before,
  and records of the older formats still open;
* the Redis fenced save keeps the last value of a repeated key, its index, owned and release
  entries, and translates errors as before (outage, wrong password, script error), never
  leaking the password;
* the bare loop writes the records blokrun writes, its fence is real, and the goals quote
  the rows of their own driver and N.
"""

from __future__ import annotations

import functools
import struct
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import quote
from uuid import uuid4

import pytest
import redis.asyncio as aioredis
from hypothesis import given, settings
from hypothesis import strategies as st

from benchmarks import bare, bars, goals
from benchmarks.harness import Row
from blokrun import Runner
from blokrun.datasources.datasource import Datasource
from blokrun.datasources.index import INDEX_KEY
from blokrun.datasources.protocol import OWNED_MARK, RELEASE_ENTRY, RELEASE_KEY, owner_of
from blokrun.datasources.redis import _last_wins
from blokrun.datasources.settings import DatasourceSettings
from blokrun.errors import DatasourceError, DatasourceUnavailable, RecordError
from blokrun.execution.events import StepFinished, StepStarted
from blokrun.execution.hooks import Hook
from blokrun.expressions import render_key
from blokrun.persistence.codec import MAGIC, Kind
from blokrun.persistence.envelope import Envelope
from blokrun.persistence.keys import KeyScope, alias_key, checkpoint_key, head_key, lease_key
from blokrun.spec.model import DEFAULT_KEY_PATTERN
from tests.servers.base import connected as _open
from tests.servers.redis import RedisServer, launch

if TYPE_CHECKING:
    pass

MEMORY = DatasourceSettings(name="default", type="memory")

# -- 1. before_step: every listener, every step, once, in order ------------------------------

Log = list[tuple[str, str]]


class _Reference(Hook):
    """The plainest override: what every other way of defining before_step must match."""

    def __init__(self, log: Log) -> None:
        self.log = log

    async def before_step(self, event: StepStarted) -> None:
        self.log.append(("before", event.step.name))

    async def after_step(self, event: StepFinished) -> None:
        self.log.append(("after", event.step.name))


class _Super(_Reference):
    """Overrides and calls super (the reference's, which itself overrides Hook's)."""

    async def before_step(self, event: StepStarted) -> None:
        await super().before_step(event)


class _SuperToBase(Hook):
    """Overrides and calls Hook's own no-op (the base's function is on its path)."""

    def __init__(self, log: Log) -> None:
        self.log = log

    async def before_step(self, event: StepStarted) -> None:
        await super().before_step(event)
        self.log.append(("before", event.step.name))


class _Static(Hook):
    log: ClassVar[Log] = []

    @staticmethod
    async def before_step(event: StepStarted) -> None:
        _Static.log.append(("before", event.step.name))


class _ClassMethod(Hook):
    log: ClassVar[Log] = []

    @classmethod
    async def before_step(cls, event: StepStarted) -> None:
        cls.log.append(("before", event.step.name))


class _Intercepting(Hook):
    """Serves before_step from ``__getattribute__`` (Hook's own is found first otherwise)."""

    def __init__(self, log: Log) -> None:
        self.log = log

    def __getattribute__(self, name: str) -> Any:
        if name == "before_step":
            log = object.__getattribute__(self, "log")

            async def listen(event: StepStarted) -> None:
                log.append(("before", event.step.name))

            return listen
        return object.__getattribute__(self, name)


class _Plain(Hook):
    """Does not override before_step itself (instances get it otherwise)."""

    def __init__(self, log: Log) -> None:
        self.log = log


async def _record(log: Log, event: StepStarted) -> None:
    log.append(("before", event.step.name))


def _by_instance(log: Log) -> Hook:
    hook = _Plain(log)

    async def listen(event: StepStarted) -> None:
        log.append(("before", event.step.name))

    hook.before_step = listen  # type: ignore[method-assign]
    return hook


def _by_partial(log: Log) -> Hook:
    hook = _Plain(log)
    hook.before_step = functools.partial(_record, log)  # type: ignore[method-assign]
    return hook


def _static(log: Log) -> Hook:
    _Static.log = log
    return _Static()


def _classmethod(log: Log) -> Hook:
    _ClassMethod.log = log
    return _ClassMethod()


def _class_patched(log: Log) -> Hook:
    """A class of its own, given before_step after the Runner is built (see the test)."""
    patched: type[_Plain] = type("Patched", (_Plain,), {})
    return patched(log)


HOOKS: dict[str, Callable[[Log], Hook]] = {
    "subclass": _Reference,
    "super": _Super,
    "super-to-base": _SuperToBase,
    "instance attribute": _by_instance,
    "functools.partial": _by_partial,
    "staticmethod": _static,
    "classmethod": _classmethod,
    "__getattribute__": _Intercepting,
    "class patched after the runner was built": _class_patched,
}


def _doc(shape: str) -> dict[str, Any]:
    set_: dict[str, Any] = {"node": "set"}
    steps: list[dict[str, Any]]
    if shape == "linear":
        steps = [{"name": n, **set_, "inputs": {n: 1}} for n in ("a", "b", "c")]
    elif shape == "graph":  # parallel levels
        steps = [
            {"name": "a", **set_, "inputs": {"a": 1}},
            {"name": "b", **set_, "inputs": {"b": 1}, "depends_on": ["a"]},
            {"name": "c", **set_, "inputs": {"c": 1}, "depends_on": ["a"]},
            {"name": "d", **set_, "inputs": {"d": 1}, "depends_on": ["b", "c"]},
        ]
    elif shape == "map":
        steps = [
            {"name": "a", **set_, "inputs": {"xs": [1, 2, 3]}},
            {"name": "m", "node": "echo", "map": {"items": "${ctx.vars.xs}", "concurrency": 2}},
            {"name": "c", **set_, "inputs": {"c": 1}},
        ]
    else:  # timer
        steps = [
            {"name": "a", **set_, "inputs": {"a": 1}},
            {"name": "nap", "node": "sleep", "inputs": {"seconds": 0.01}},
            {"name": "c", **set_, "inputs": {"c": 1}},
        ]
    return {"name": f"hooks-{shape}", "steps": steps}


def _starts(log: Log) -> list[str]:
    return [step for what, step in log if what == "before"]


@pytest.mark.parametrize("how", [*HOOKS, "runner.add_hook"])
@pytest.mark.parametrize("shape", ["linear", "graph", "map", "timer"])
async def test_every_way_to_define_before_step_sees_every_start_once_in_order(
    how: str, shape: str
) -> None:
    """Attacks: the no-op check drops a hook that listens (it would miss starts) or a step's
    event is sent twice / out of order, on every kind of workflow, checkpointed."""
    reference: Log = []
    log: Log = []
    make = HOOKS.get(how, _Reference)
    hook: Any = make(log)
    if how == "runner.add_hook":
        runner = Runner([MEMORY], hooks=[_Reference(reference)])
        runner.add_hook(hook)
    else:
        runner = Runner([MEMORY], hooks=[_Reference(reference), hook])
    if how == "class patched after the runner was built":
        type(hook).before_step = lambda self, event: _record(self.log, event)
    async with runner:
        result = await runner.run(runner.load(_doc(shape)))
    assert result.status == "completed"
    expected = _starts(reference)
    assert sorted(expected) == sorted({s for s in expected}), expected  # once each
    assert len(expected) == len(_doc(shape)["steps"])
    assert _starts(log) == expected


async def test_a_resumed_run_tells_the_listeners_of_the_steps_it_runs_again() -> None:
    """Attacks: the resume path (steps already done skipped) still sends each re-run step's
    start to every listener, through the instance-attribute and partial ways too."""
    fail = {"on": True}

    def flaky(ctx: Any, inputs: dict[str, Any]) -> dict[str, Any]:
        if fail["on"]:
            raise RuntimeError("first attempt fails")
        return {"b": 1}

    logs: list[Log] = [[], [], []]
    hooks = [_Reference(logs[0]), _by_instance(logs[1]), _by_partial(logs[2])]
    runner = Runner([MEMORY], hooks=hooks, nodes={"flaky": flaky})
    doc = {
        "name": "resumed",
        "steps": [
            {"name": "a", "node": "set", "inputs": {"a": 1}},
            {"name": "b", "node": "flaky"},
            {"name": "c", "node": "set", "inputs": {"c": 1}},
        ],
    }
    async with runner:
        wf = runner.load(doc)
        with pytest.raises(Exception, match="first attempt fails"):
            await runner.run(wf, request_id="resume-1")
        fail["on"] = False
        result = await runner.resume("resume-1", workflow=wf)
    assert result.status == "completed"
    for log in logs:
        assert _starts(log) == ["a", "b", "b", "c"]


class _Exploding(list[tuple[str, str]]):
    """A log whose append raises: every listener above appends to its log."""

    def append(self, item: tuple[str, str]) -> None:
        raise RuntimeError(f"boom at {item[1]}")


@pytest.mark.parametrize("how", [*HOOKS])
async def test_a_raising_before_step_fails_the_run_before_the_step_runs(how: str) -> None:
    """Attacks: a raising listener skipped by the shortcut would let the run complete."""
    ran: list[str] = []

    def node(ctx: Any, inputs: dict[str, Any]) -> dict[str, Any]:
        ran.append("x")
        return {}

    hook: Any = HOOKS[how](_Exploding())
    runner = Runner([MEMORY], hooks=[hook], nodes={"mark": node})
    if how == "class patched after the runner was built":
        type(hook).before_step = lambda self, event: _record(self.log, event)
    async with runner:
        wf = runner.load({"name": "raising", "steps": [{"name": "x", "node": "mark"}]})
        with pytest.raises(RuntimeError, match="boom at x"):
            await runner.run(wf)
    assert ran == []


async def _run_with_mid_run_change(change: str) -> Log:
    """A three-step run (no persistence target: the driver hands the executor its own hook
    list) in which step a's after_step makes a hook start listening: by giving itself a
    before_step, or by runner.add_hook of a new listener."""
    log: Log = []
    runner: Runner

    class Late(Hook):
        async def after_step(self, event: StepFinished) -> None:
            if event.step.name != "a":
                return
            if change == "instance attribute":
                self.before_step = functools.partial(_record, log)  # type: ignore[method-assign]
            else:
                runner.add_hook(_Reference(log))

    runner = Runner([MEMORY], hooks=[Late()])
    doc = {
        "name": "late",
        "persistence": {"enabled": False},
        "steps": [{"name": n, "node": "set", "inputs": {n: 1}} for n in ("a", "b", "c")],
    }
    async with runner:
        await runner.run(runner.load(doc))
    return log


async def test_a_hook_that_starts_listening_mid_run_hears_the_later_starts() -> None:
    """Attacks: before_step looked up once per attempt instead of once per step (a first
    version of 1c784ff did: found by this test, mended by looking it up at each step)."""
    assert _starts(await _run_with_mid_run_change("instance attribute")) == ["b", "c"]


async def test_a_hook_added_mid_run_sees_whole_steps_or_none() -> None:
    """Attacks: a hook added mid-run hearing steps finish that it never heard start (the
    driver handed a run its live hook list: now each attempt gets a copy, so a hook added
    with add_hook joins the runs started after it, as documented, whole)."""
    log = await _run_with_mid_run_change("add_hook")
    afters = [s for what, s in log if what == "after"]
    assert _starts(log) == afters  # every step it hears finish, it heard start
    assert log == []  # add_hook: "every run this runner starts or resumes from now on"


# -- 2. the default pattern's alias ----------------------------------------------------------

_ODD = st.text(
    alphabet=st.sampled_from("${}-_.:~ \\'\"/\x00\x1f\x1d日本é🙂aZ09$${") | st.characters(),
    min_size=0,
    max_size=60,
) | st.text(min_size=1000, max_size=3000)


def _workflow(doc: dict[str, Any]) -> Any:
    return Runner([MEMORY]).load(doc)


_DEFAULT_WF = _workflow({"name": "w", "steps": [{"name": "a", "node": "set"}]})
_EXPLICIT_WF = _workflow(
    {
        "name": "w",
        "persistence": {"keyPattern": DEFAULT_KEY_PATTERN},
        "steps": [{"name": "a", "node": "set"}],
    }
)


@settings(max_examples=300, deadline=None)
@given(rid=_ODD, step=_ODD, started=st.floats(0, 4e9), var=_ODD)
def test_the_default_alias_is_the_rendered_template_for_any_text(
    rid: str, step: str, started: float, var: str
) -> None:
    """Attacks: the f-string differs from rendering (escaping, ``$``/``{`` in values,
    unicode, long text, vars named like the scope's roots), default or spelled out."""
    vars_ = {"request": {"id": var}, "stepName": var, "step": var}
    for wf in (_DEFAULT_WF, _EXPLICIT_WF):
        assert wf.key_pattern == DEFAULT_KEY_PATTERN
        scope = KeyScope.of(wf, rid, started, step, vars_)
        assert alias_key(wf, rid, started, step, vars_) == render_key(wf.key_template, scope)


async def test_a_real_run_writes_each_steps_alias_under_the_rendered_key() -> None:
    """Attacks: the alias a run stores differs from the rendered pattern (odd request id
    characters, step names of dashes, dots, a 128-character one)."""
    rid = "r.-_~:9-" + "x" * 192  # every allowed character, 200 in all
    names = ["a.b", "s-1", "_x", "x-", "9", "A_9.-z" * 21 + "xy"]  # the step name alphabet
    runner = Runner([MEMORY])
    doc = {
        "name": "aliases",
        "steps": [{"name": n, "node": "set", "inputs": {"v": 1}} for n in names],
    }
    async with runner:
        wf = runner.load(doc)
        result = await runner.run(wf, request_id=rid)
        assert result.status == "completed"
        ds = runner.datasources["default"]
        for name in names:
            want = render_key(wf.key_template, KeyScope.of(wf, rid, 0.0, name, {}))
            assert want == f"{rid}-{name}"
            assert await ds.load(want) is not None, want


# -- 3. the envelope: kinds, ints, compression, encryption, older formats ---------------------

_KEY = b"k" * 32
_ENVELOPES = {
    "none": lambda: Envelope(compression="none"),
    "zlib": lambda: Envelope(compression="zlib", threshold=64),
    "zstd": lambda: Envelope(compression="zstd", threshold=64),
    "zstd, encrypted": lambda: Envelope(threshold=64, keys={"k1": _KEY}, active_key="k1"),
    "zlib, encrypted": lambda: Envelope(
        compression="zlib", threshold=64, keys={"k1": _KEY, "old": b"o" * 32}, active_key="k1"
    ),
}
_PAYLOADS = [b"", b"{}", b'{"x":"' + b"y" * 5000 + b'"}', bytes(range(256)) * 3]


@pytest.mark.parametrize("which", list(_ENVELOPES))
@pytest.mark.parametrize("kind", [*Kind, *(int(k) for k in Kind)])
def test_every_kind_sealed_as_kind_or_int_opens_as_that_kind(which: str, kind: int) -> None:
    """Attacks: the skipped Kind(kind) conversion and the header table (an int kind looked up
    or packed differently from its Kind; encrypted headers; compressed records)."""
    env = _ENVELOPES[which]()
    for payload in _PAYLOADS:
        raw = env.seal(kind, payload, bind="the/key")  # type: ignore[arg-type]
        assert raw[:3] == MAGIC and raw[3] == 3 and raw[5] == int(kind)
        assert bool(raw[4] & 0b1_0000) == ("encrypted" in which)
        if len(payload) > 4096 and not which.startswith("none"):
            assert raw[4] & 0b1100, "a large compressible payload is stored compressed"
        opened = env.open(raw, bind="the/key")
        assert opened == (Kind(kind), payload) and type(opened[0]) is Kind
        if not env.encrypted:  # deterministic: Kind and int seal the same bytes
            assert raw == env.seal(Kind(kind), payload, bind="the/key")
        with pytest.raises(RecordError):
            env.open(raw, bind="another/key")


@pytest.mark.parametrize("bad", [0, 9, 99, -1, 256, "1", None, 1.0])
def test_an_invalid_kind_is_refused_as_before(bad: Any) -> None:
    """Attacks: something not a Kind slipping past ``type(kind) is not Kind`` unconverted."""
    for env in (Envelope(compression="none"), Envelope(keys={"k": _KEY}, active_key="k")):
        if bad == 1.0:  # Kind(1.0) is Kind.CHECKPOINT, before and after
            assert env.open(env.seal(bad, b"x"))[0] is Kind.CHECKPOINT
            continue
        with pytest.raises(ValueError):
            env.seal(bad, b"x")


def _old(version: int, kind: int, payload: bytes, flags: int = 0) -> bytes:
    if version == 1:
        return struct.pack(">3sBBBI", MAGIC, 1, 0, kind, zlib.crc32(payload)) + payload
    head = struct.pack(">3sBBBB", MAGIC, version, flags, kind, 0)
    return head + struct.pack(">I", zlib.crc32(payload)) + payload


@pytest.mark.parametrize("kind", list(Kind))
def test_records_of_older_formats_still_open(kind: Kind) -> None:
    """Attacks: the header table changing how records written before are read (v1, v2 plain
    and zlib-compressed, v3 plain bytes packed by hand)."""
    env = Envelope()
    payload = b'{"a":1}'
    assert env.open(_old(1, kind, payload)) == (kind, payload)
    assert env.open(_old(2, kind, payload)) == (kind, payload)
    packed = zlib.compress(payload * 100)
    assert env.open(_old(2, kind, packed, flags=1 << 2)) == (kind, payload * 100)
    bind = b"k/1"
    v3 = struct.pack(">3sBBBB", MAGIC, 3, 0, kind, 0)
    v3 += struct.pack(">I", zlib.crc32(payload, zlib.crc32(bind))) + payload
    assert env.open(v3, bind="k/1") == (kind, payload)
    assert env.seal(kind, payload, bind="k/1") == v3  # sealed now: the same bytes


# -- 4. the Redis fenced save ----------------------------------------------------------------


def _long_way(entries: list[Any]) -> list[Any]:
    from blokrun.datasources.index import is_index_key

    final = {key: (data, ttl) for key, data, ttl in entries if not is_index_key(key)}
    return [(k, d, t) for k, (d, t) in final.items()] + [e for e in entries if is_index_key(e[0])]


_BATCH_KEYS = st.sampled_from(
    ["a", "b", OWNED_MARK + "a", OWNED_MARK + "b", RELEASE_KEY, INDEX_KEY, INDEX_KEY + "x", "a "]
)


@given(st.lists(st.tuples(_BATCH_KEYS, st.binary(max_size=2), st.none() | st.just(5.0))))
def test_last_wins_is_the_long_way_and_keeps_order(entries: list[Any]) -> None:
    """Attacks: the one-pass de-duplication with release and owned entries mixed in; the
    as-is return must be a new list (callers may not mutate the given batch through it)."""
    got = _last_wins(entries)
    assert got == _long_way(entries)
    assert got is not entries


async def test_a_fenced_batch_with_repeats_owned_and_release_entries_on_a_real_server(
    redis_server: RedisServer,
) -> None:
    """Attacks: de-duplication on the real script: last value wins, the owned alias is
    written, the release entry ends the lease in the same batch."""
    ds = await _open(redis_server.settings("attack"))
    try:
        lease = lease_key("fenced-1")
        token = (await ds.acquire_lease(lease, "me", 30.0)).token
        await ds.save("alias-2", b"other\x00theirs")
        entries = [
            ("k1", b"first", None),
            ("k2", b"two", None),
            (OWNED_MARK + "alias-1", b"me\x00first", None),
            ("k1", b"last", None),
            (OWNED_MARK + "alias-2", b"me\x00taken", None),
            (OWNED_MARK + "alias-1", b"me\x00last", None),
            RELEASE_ENTRY,
        ]
        assert await ds.save_batch_fenced(entries, lease, token)
        assert await ds.load("k1") == b"last"
        assert await ds.load("k2") == b"two"
        assert await ds.load("alias-1") == b"me\x00last"
        assert await ds.load("alias-2") == b"other\x00theirs"  # another owner's: refused
        state = await ds.read_lease(lease)
        assert state is not None and state.expires_at == 0  # released in the same batch
    finally:
        await ds.close()


PASSWORD = "p@ss:w/rd%$"
QUOTED = quote(PASSWORD, safe="")


@pytest.fixture
def auth_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A password-protected server of this test's own (stopped or reconfigured here)."""
    srv = launch(tmp_path_factory.mktemp("redis-attack-auth"), password=PASSWORD)
    yield srv
    srv.stop()


def _no_secret(exc: BaseException) -> None:
    seen: BaseException | None = exc
    while seen is not None:
        for text in (str(seen), repr(seen), *(str(a) for a in seen.args)):
            assert PASSWORD not in text and QUOTED not in text, text
        seen = seen.__cause__ or seen.__context__


async def _fenced(ds: Datasource) -> Callable[[], Awaitable[bool]]:
    lease = lease_key(uuid4().hex)
    token = (await ds.acquire_lease(lease, "me", 30.0)).token
    return lambda: ds.store.save_batch_fenced([("x", b"1", None)], lease, token)  # type: ignore[attr-defined]


async def test_fenced_save_errors_translated_without_the_password(auth_server: RedisServer) -> None:
    """Attacks: the hand-written except of save_batch_fenced: a script error is a
    DatasourceError (not an outage), a password that stops working is an authentication
    DatasourceError (not an outage), a stopped server is DatasourceUnavailable; no text or
    chained cause holds the password."""
    ds = await _open(auth_server.settings("auth", timeout=1.0))
    raw = aioredis.Redis(host="127.0.0.1", port=auth_server.port, password=PASSWORD)
    try:
        assert await (await _fenced(ds))()
        # a script error: the lease key holds a list
        bad = lease_key("wrongtype")
        db = ds.store.client().connection_pool.connection_kwargs.get("db", 0)  # type: ignore[attr-defined]
        await raw.aclose()
        raw = aioredis.Redis(host="127.0.0.1", port=auth_server.port, password=PASSWORD, db=db)
        await raw.rpush(bad, b"x")
        with pytest.raises(DatasourceError) as script:
            await ds.store.save_batch_fenced([("x", b"1", None)], bad, 1)  # type: ignore[attr-defined]
        assert not isinstance(script.value, DatasourceUnavailable)
        assert "save_batch failed" in str(script.value)
        _no_secret(script.value)

        save = await _fenced(ds)
        # the password changes and every connection is dropped: the reconnect fails AUTH
        await raw.config_set("requirepass", PASSWORD + "-new")
        await raw.client_kill_filter(_type="normal")
        with pytest.raises(DatasourceError) as auth:
            await save()
        assert not isinstance(auth.value, DatasourceUnavailable)
        assert "authentication failed during save_batch" in str(auth.value)
        _no_secret(auth.value)

        auth_server.stop()
        with pytest.raises(DatasourceUnavailable) as down:
            await save()
        assert "unavailable during save_batch" in str(down.value)
        _no_secret(down.value)
    finally:
        await raw.aclose()
        await ds.close()


# -- 5. the bare loop's honesty --------------------------------------------------------------


def _unowned(data: bytes) -> bytes:
    """The record of a stored value (an owned alias is stored behind its owner)."""
    owner = owner_of(data) if not data.startswith(MAGIC + b"\x03") else None
    return data if owner is None else data[len(owner) :]


def _compression(raw: bytes) -> int:
    return (raw[4] & 0b1100) >> 2


@pytest.fixture
async def bench_runner(redis_server: RedisServer) -> AsyncIterator[Runner]:
    async with Runner([redis_server.settings("redis")]) as r:
        yield r


N = 100  # the state passes 4 KB (compressed) before the last steps


async def test_the_fenced_bare_loop_writes_blokruns_records(bench_runner: Runner) -> None:
    """Attacks: the bare loop's records are not blokrun's (kinds, compression above 4 KB,
    sizes), for the workflow make bench runs, step by step."""
    ds = bench_runner.datasources["redis"]
    env = bench_runner.envelope
    ours, theirs = "blokrun-" + uuid4().hex[:8], "bare-" + uuid4().hex[:8]
    result = await bench_runner.run(bench_runner.load(bars.workflow(N, "redis")), request_id=ours)
    assert result.status == "completed"
    await bare.bare_run(bench_runner, "redis", N, fenced=True, request_id=theirs)
    compressed = 0
    for seq in range(1, N + 1):
        step = f"s{seq - 1}"
        pair = []
        for rid in (ours, theirs):
            ckpt, alias = checkpoint_key(rid, 1, seq), f"{rid}-{step}"
            a, b = await ds.load(ckpt), await ds.load(alias)
            assert a is not None and b is not None, (rid, seq)
            b = _unowned(b)
            assert env.open(a, bind=ckpt)[0] is Kind.CHECKPOINT
            assert env.open(b, bind=alias)[0] is Kind.ALIAS
            pair.append((a, b))
        (mine, my_alias), (its, its_alias) = pair
        sizes = [
            len(env.open(raw, bind=checkpoint_key(r, 1, seq))[1])
            for raw, r in ((mine, ours), (its, theirs))
        ]
        # compressed exactly when the payload reaches the 4 KB threshold, in both; the
        # payloads differ by the workflow's name and hash, the duration's digits (a few
        # dozen bytes: near the threshold one may be compressed a step before the other)
        assert [_compression(mine) != 0, _compression(its) != 0] == [z >= 4096 for z in sizes]
        assert abs(sizes[0] - sizes[1]) <= 64, (seq, sizes)
        compressed += _compression(mine) != 0 and _compression(its) != 0
        assert abs(len(my_alias) - len(its_alias)) <= 8
    assert compressed > 0, "some checkpoints passed the threshold"
    heads = [await ds.load(head_key(r)) for r in (ours, theirs)]
    assert all(h is not None for h in heads)
    opened = [
        env.open(h or b"", bind=head_key(r)) for h, r in zip(heads, (ours, theirs), strict=True)
    ]
    assert [k for k, _ in opened] == [Kind.HEAD, Kind.HEAD]
    assert abs(len(heads[0] or b"") - len(heads[1] or b"")) <= 64


async def test_the_fenced_bare_loop_ends_its_lease_as_blokrun_does(bench_runner: Runner) -> None:
    """Attacks: blokrun's last checkpoint releases the run's lease in its fenced batch; a
    bare loop that writes 'blokrun's records' must leave the same thing behind (the first
    version did not: found by this test)."""
    ds = bench_runner.datasources["redis"]
    ours, theirs = "blokrun-" + uuid4().hex[:8], "bare-" + uuid4().hex[:8]
    await bench_runner.run(bench_runner.load(bars.workflow(3, "redis")), request_id=ours)
    await bare.bare_run(bench_runner, "redis", 3, fenced=True, request_id=theirs)
    states = [await ds.read_lease(lease_key(r)) for r in (ours, theirs)]
    assert states[0] is not None and states[0].expires_at == 0  # blokrun ended it
    assert states[1] is not None and states[1].expires_at == 0, "the bare loop's is live"


async def test_the_fence_refuses_a_stale_token(bench_runner: Runner) -> None:
    """Attacks: the fence being decorative: the token the bare loop got is checked."""
    ds = bench_runner.datasources["redis"]
    rid = uuid4().hex
    await bare.bare_run(bench_runner, "redis", 2, fenced=True, request_id=rid)
    held = await ds.store.acquire_lease(lease_key(rid), "other", 30.0)  # type: ignore[attr-defined]
    stale = held.token - 1
    assert not await ds.store.save_batch_fenced(  # type: ignore[attr-defined]
        [(head_key(rid), b"forged", None)], lease_key(rid), stale
    )
    assert await ds.load(head_key(rid)) != b"forged"


@pytest.mark.parametrize("driver", ["redis", "postgresql"])
@pytest.mark.parametrize("n", [10, 100])
def test_each_goal_quotes_its_own_drivers_and_ns_rows(driver: str, n: int) -> None:
    """Attacks: a goal's why() quoting another driver's or N's bare loops (every row of every
    driver and N is present with its own figures, so a wrong lookup shows)."""
    rows: dict[str, Row] = {}
    for d, base in (("redis", 1), ("postgresql", 2)):
        for m, scale in ((10, 10), (100, 100)):
            f = base * scale
            for name, value in (
                (f"{d}: floor per step, N={m}", 1.0 * f),
                (f"{d}: blokrun per step, N={m}", 9.0 * f),
                (f"{d}: bare loop, fenced, N={m}", (1.0 + base / 10 + scale / 1000) * f),
                (f"{d}: bare loop, unfenced, N={m}", (0.5 + base / 10 + scale / 1000) * f),
            ):
                rows[name] = Row("s", name, value, "s")
    base = 1 if driver == "redis" else 2
    fenced, plain = 1.0 + base / 10 + n / 1000, 0.5 + base / 10 + n / 1000
    (goal,) = [g for g in goals.GOALS if g.text.startswith(f"{driver}: per step at N={n} ")]
    verdict = goal.judge(rows)
    assert verdict is not None and verdict[0] is False
    why = goal.why(rows)
    assert f"this run, N={n}:" in why
    assert f"take {fenced:.2f}x the floor" in why and f"unfenced {plain:.2f}x" in why
    # the row names bars.per_step writes are the ones goals look up
    assert f"{driver}: bare loop, fenced, N={n}" in rows
    assert set(bars.BARE) == {"fenced", "unfenced"}
