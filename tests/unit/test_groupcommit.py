"""GroupCommit: concurrent saves share flushes; every caller gets its own answer."""

from __future__ import annotations

import random
from collections.abc import Sequence

import anyio
import pytest

from blokrun.datasources.groupcommit import GroupCommit
from blokrun.datasources.protocol import Group


class Flusher:
    def __init__(self, delay: float = 0.01) -> None:
        self.delay = delay
        self.batches: list[list[Group]] = []
        self.fail_next = False
        self.stored: dict[str, bytes] = {}

    async def __call__(self, groups: Sequence[Group]) -> list[bool]:
        self.batches.append(list(groups))
        await anyio.sleep(self.delay)
        if self.fail_next:
            self.fail_next = False
            raise OSError("connection reset (simulated)")
        out = []
        for entries, lease, token in groups:
            ok = lease is None or token % 2 == 0  # odd tokens are stale here
            if ok:
                self.stored.update({k: v for k, v, _ in entries})
            out.append(ok)
        return out


async def test_a_lone_save_is_sent_at_once_alone() -> None:
    flush = Flusher()
    gc = GroupCommit(flush)
    assert await gc.save([("k", b"v", None)], None, 0) is True
    assert [len(b) for b in flush.batches] == [1]
    assert flush.stored == {"k": b"v"}


async def test_saves_arriving_during_a_flush_share_the_next_one() -> None:
    flush = Flusher()
    gc = GroupCommit(flush)
    results: dict[int, bool] = {}

    async def one(i: int) -> None:
        results[i] = await gc.save([(f"k{i}", b"%d" % i, None)], "lease" if i % 3 else None, i)

    async with anyio.create_task_group() as tg:
        for i in range(60):
            tg.start_soon(one, i)
    # The first is sent alone; the 59 that arrived meanwhile go together.
    assert [len(b) for b in flush.batches] == [1, 59]
    assert results == {i: (i % 3 == 0 or i % 2 == 0) for i in range(60)}
    assert set(flush.stored) == {f"k{i}" for i in range(60) if i % 3 == 0 or i % 2 == 0}
    assert (gc.flushes, gc.groups) == (2, 60)


async def test_a_failed_flush_fails_its_batch_only() -> None:
    flush = Flusher()
    gc = GroupCommit(flush)
    flush.fail_next = True
    outcomes: list[object] = []

    async def one(i: int) -> None:
        try:
            outcomes.append(await gc.save([(f"k{i}", b"v", None)], None, 0))
        except OSError as exc:
            outcomes.append(exc)

    async with anyio.create_task_group() as tg:
        for i in range(5):
            tg.start_soon(one, i)
    assert sum(isinstance(o, OSError) for o in outcomes) == 1  # the first, sent alone
    assert outcomes.count(True) == 4
    assert await gc.save([("after", b"v", None)], None, 0) is True


async def test_a_cancelled_waiter_does_not_stall_the_others() -> None:
    flush = Flusher(delay=0.05)
    gc = GroupCommit(flush)
    done: list[int] = []

    async def one(i: int) -> None:
        await gc.save([(f"k{i}", b"v", None)], None, 0)
        done.append(i)

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(one, 0)
            await anyio.sleep(0.01)  # 0 is flushing; 1 and 2 queue behind it
            async with anyio.create_task_group() as inner:
                inner.start_soon(one, 1)
                await anyio.sleep(0.001)
                inner.cancel_scope.cancel()  # 1 leaves while waiting its turn
            tg.start_soon(one, 2)
    assert 0 in done and 2 in done and 1 not in done


@pytest.mark.parametrize("n", [1, 300])
async def test_batches_are_bounded(n: int) -> None:
    flush = Flusher(delay=0.02)
    gc = GroupCommit(flush)
    async with anyio.create_task_group() as tg:
        for i in range(n):
            tg.start_soon(gc.save, [(f"k{i}", b"v", None)], None, 0)
    assert max(len(b) for b in flush.batches) <= 256
    assert sum(len(b) for b in flush.batches) == n


async def test_a_lone_save_takes_the_plain_path_when_there_is_one() -> None:
    flush = Flusher()
    lone: list[Group] = []

    async def one(group: Group) -> bool:
        lone.append(group)
        await anyio.sleep(0.01)  # a round trip: the others queue meanwhile
        return True

    gc = GroupCommit(flush, one)
    assert await gc.save([("k", b"v", None)], "lease", 2) is True
    assert lone == [([("k", b"v", None)], "lease", 2)] and flush.batches == []
    async with anyio.create_task_group() as tg:
        for i in range(5):
            tg.start_soon(gc.save, [(f"k{i}", b"v", None)], None, 0)
    assert len(lone) == 2 and [len(b) for b in flush.batches] == [4]  # one alone, then 4


async def _crowd(gc: GroupCommit, rng: random.Random) -> tuple[dict[int, bool], set[int]]:
    """60 callers of ``gc``, about a third cancelled at a random moment; their answers,
    and who was cancelled."""
    answers: dict[int, bool] = {}
    cancelled: set[int] = set()

    async def caller(i: int, scope: anyio.CancelScope) -> None:
        with scope:
            answers[i] = await gc.save([(f"k{i}", b"v", None)], "lease", 2)
        if scope.cancelled_caught:
            cancelled.add(i)

    with anyio.fail_after(10):  # a stalled caller would wait forever
        async with anyio.create_task_group() as tg:
            for i in range(60):
                scope = anyio.CancelScope()
                tg.start_soon(caller, i, scope)
                if rng.random() < 0.3:  # waiting, promoted or leading: whatever it is now
                    await anyio.sleep(rng.random() * 0.002)
                    scope.cancel()
                elif rng.random() < 0.3:
                    await anyio.sleep(rng.random() * 0.001)
    return answers, cancelled


@pytest.mark.parametrize("lone", [False, True])
@pytest.mark.parametrize("seed", range(12))
async def test_random_cancellations_never_stall_or_cross_answers(seed: int, lone: bool) -> None:
    """Many callers, flushes of random length, callers cancelled at random moments:
    every caller that is not cancelled gets its own answer, each group is flushed at most
    once, and nobody waits forever (with and without a lone-save path)."""
    rng = random.Random(seed)
    flushed: list[str] = []

    async def flush(groups: Sequence[Group]) -> list[bool]:
        await anyio.sleep(rng.random() * 0.004)
        keys = [entries[0][0] for entries, _, _ in groups]
        flushed.extend(keys)
        return [int(k[1:]) % 3 != 0 for k in keys]  # the answer depends on the caller

    async def alone(group: Group) -> bool:
        return (await flush([group]))[0]

    answers, cancelled = await _crowd(GroupCommit(flush, alone if lone else None), rng)
    assert len(flushed) == len(set(flushed))  # never flushed twice
    for i in range(60):
        if i in answers:
            assert answers[i] == (i % 3 != 0)  # its own answer
        else:
            assert i in cancelled  # only a cancelled caller has none
