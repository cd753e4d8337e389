"""The checkpoint path's shortcuts (issue 18, round seven) give what the long way gives.

Each shortcut skips work whose result is known: the default key pattern's rendering, a
record header's packing, the Redis driver's de-duplication of a batch without repeats, a
step event no hook listens to. Each is checked here against the long way it replaces, on
hostile inputs (keys that look like patterns or index entries, repeated keys, hooks that
override only by instance attribute or by duck typing).
"""

from __future__ import annotations

import struct
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from blokrun import Runner
from blokrun.datasources.index import INDEX_KEY
from blokrun.datasources.redis import _last_wins
from blokrun.datasources.settings import DatasourceSettings
from blokrun.execution.engine import _noop
from blokrun.execution.events import StepFinished, StepStarted
from blokrun.execution.hooks import CallableHook, Hook
from blokrun.expressions import render_key
from blokrun.persistence.codec import MAGIC, Kind
from blokrun.persistence.envelope.format import FORMAT_VERSION, header
from blokrun.persistence.keys import KeyScope, alias_key
from blokrun.spec.model import DEFAULT_KEY_PATTERN

_TEXT = st.text(min_size=1, max_size=40)


def _workflow(pattern: str | None = None) -> Any:
    doc: dict[str, Any] = {"name": "w", "steps": [{"name": "a", "node": "set"}]}
    if pattern is not None:
        doc["persistence"] = {"keyPattern": pattern}
    return Runner([DatasourceSettings(name="default", type="memory")]).load(doc)


_DEFAULT = _workflow()


@given(rid=_TEXT, step=_TEXT, started=st.floats(0, 4e9))
def test_the_default_pattern_renders_as_the_template_would(
    rid: str, step: str, started: float
) -> None:
    assert _DEFAULT.key_pattern == DEFAULT_KEY_PATTERN
    scope = KeyScope.of(_DEFAULT, rid, started, step, {"x": 1})
    assert alias_key(_DEFAULT, rid, started, step, {}) == render_key(_DEFAULT.key_template, scope)


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        ("${ ctx.request.id }-${stepName}", "r-1-s"),  # same meaning, other text: rendered
        ("${ctx.request.id}/${stepName}", "r-1/s"),
        ("${ctx.request.id}-${stepName}-${ctx.vars.x}", "r-1-s-7"),
    ],
)
def test_other_patterns_are_still_rendered(pattern: str, expected: str) -> None:
    assert alias_key(_workflow(pattern), "r-1", 0.0, "s", {"x": 7}) == expected


@pytest.mark.parametrize("kind", [*Kind, 99])
@pytest.mark.parametrize("compression", ["none", "zlib", "zstd"])
def test_a_plain_header_is_the_packed_one(kind: int, compression: Any) -> None:
    flags = {"none": 0, "zlib": 1, "zstd": 2}[compression] << 2
    packed = struct.pack(">3sBBBB", MAGIC, FORMAT_VERSION, flags, kind, 0)
    assert header(kind, compression) == packed  # type: ignore[arg-type]


def _last_wins_long_way(entries: list[Any]) -> list[Any]:
    """The implementation before the shortcut (index entries: INDEX_KEY and its prefix)."""
    from blokrun.datasources.index import is_index_key

    final = {key: (data, ttl) for key, data, ttl in entries if not is_index_key(key)}
    return [(k, d, t) for k, (d, t) in final.items()] + [e for e in entries if is_index_key(e[0])]


_KEYS = st.sampled_from(["a", "b", "c", INDEX_KEY, INDEX_KEY + "x", "\x1fa", "a "])


@given(st.lists(st.tuples(_KEYS, st.binary(max_size=3), st.none() | st.floats(1, 9))))
def test_a_batch_is_deduplicated_as_before(entries: list[Any]) -> None:
    assert _last_wins(entries) == _last_wins_long_way(entries)


class _Silent(Hook):
    async def after_step(self, event: StepFinished) -> None:
        pass


class _Listening(Hook):
    async def before_step(self, event: StepStarted) -> None:
        pass


class _DuckTyped:
    async def before_step(self, event: StepStarted) -> None:
        pass


def test_a_step_event_goes_to_every_hook_that_listens_and_no_other() -> None:
    by_instance = _Silent()

    async def own(event: StepStarted) -> None:
        pass

    by_instance.before_step = own  # type: ignore[method-assign]
    silent, listening, duck = _Silent(), _Listening(), _DuckTyped()

    async def fn(event: StepFinished) -> None:
        pass

    hooks: list[Any] = [silent, listening, CallableHook(fn), duck, by_instance, Hook()]
    listeners: list[Any] = [listening, duck, by_instance]
    assert [h for h in hooks if not _noop(h.before_step)] == listeners


async def test_hooks_still_see_each_step_start_in_a_run() -> None:
    seen: list[str] = []

    class Counting(Hook):
        async def before_step(self, event: StepStarted) -> None:
            seen.append(event.step.name)

    runner = Runner(
        [DatasourceSettings(name="default", type="memory")], hooks=[Counting(), _Silent()]
    )
    doc = {
        "name": "w",
        "persistence": {"enabled": False},
        "steps": [{"name": "a", "node": "set", "inputs": {"x": 1}}, {"name": "b", "node": "set"}],
    }
    async with runner:
        await runner.run(runner.load(doc))
    assert seen == ["a", "b"]
