"""A run's lease heartbeat starts from a timer after one interval (``Lease.keep``), so a
run shorter than that never spawns a task for it. Attacked: a short run leaves no timer
armed and no task behind; a long run renews on time and still loses its run to a takeover;
a run ending exactly as the timer fires neither hangs nor renews a released lease.
"""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from blokrun import Runner
from blokrun.config import DatasourceSettings
from blokrun.datasources import build_datasource
from blokrun.errors import LeaseLost
from blokrun.persistence import leases
from tests.integration import wfnodes

NODE = "tests.integration.wfnodes"


def napping(seconds: float, steps: int = 1) -> dict[str, Any]:
    return {
        "name": "napping",
        "version": "1",
        "steps": [
            {"name": f"s{i}", "node": f"{NODE}:nap", "inputs": {"seconds": seconds}}
            for i in range(steps)
        ],
    }


@pytest.fixture
def kept(monkeypatch: pytest.MonkeyPatch) -> list[tuple[leases.Lease, Any]]:
    """Every (lease, timer) ``Lease.keep`` armed."""
    seen: list[tuple[leases.Lease, Any]] = []
    original = leases.Lease.keep

    def keep(self: leases.Lease, tg: Any) -> Any:
        handle = original(self, tg)
        seen.append((self, handle))
        return handle

    monkeypatch.setattr(leases.Lease, "keep", keep)
    return seen


def _ds() -> Any:
    return build_datasource(DatasourceSettings(name="default", type="memory"))


async def test_a_short_run_starts_no_heartbeat_and_leaves_no_timer(
    kept: list[tuple[leases.Lease, Any]],
) -> None:
    async with Runner([_ds()], lease_ttl=30) as runner:
        for i in range(20):
            await runner.run(napping(0), request_id=f"short-{i}")
    assert len(kept) == 20
    assert all(not lease.beating and handle.cancelled() for lease, handle in kept)
    assert all(lease.renewals == 0 for lease, _ in kept)


async def test_a_long_run_renews_on_time(kept: list[tuple[leases.Lease, Any]]) -> None:
    async with Runner([_ds()], lease_ttl=0.3) as runner:  # a beat every 0.1 s
        await runner.run(napping(0.45), request_id="long-1")
    ((lease, _),) = kept
    assert lease.beating  # the timer fired
    assert 3 <= lease.renewals <= 5


async def test_a_late_started_heartbeat_still_stops_a_run_taken_over(
    kept: list[tuple[leases.Lease, Any]],
) -> None:
    ds = _ds()
    async with Runner([ds], lease_ttl=0.3) as runner:

        async def steal() -> None:
            await anyio.sleep(0.05)  # before the heartbeat's first beat (0.1 s)
            lease = kept[0][0]
            await ds.release_lease(lease.key, lease.owner, lease.token)  # ended elsewhere
            taken = await ds.acquire_lease(lease.key, "thief", 30)
            assert taken.token > lease.token

        async with anyio.create_task_group() as tg:
            tg.start_soon(steal)
            with pytest.raises(LeaseLost), anyio.fail_after(5):
                await runner.run(napping(2.0), request_id="stolen-1")
    lease = kept[0][0]
    assert lease.beating and lease.lost
    assert wfnodes.TIMES  # the nap started
    started, ended = wfnodes.TIMES[("stolen-1", "s0")]
    assert ended - started < 1.0  # cancelled by the heartbeat, not left to sleep 2 s


@pytest.mark.parametrize("nap", [0.095, 0.1, 0.105])
async def test_a_run_ending_as_the_timer_fires_ends_cleanly(
    kept: list[tuple[leases.Lease, Any]], nap: float
) -> None:
    async with Runner([_ds()], lease_ttl=0.3) as runner:
        for i in range(2):
            with anyio.fail_after(5):
                result = await runner.run(napping(nap), request_id=f"edge-{nap}-{i}")
            assert result.status == "completed"
            await anyio.sleep(0.15)  # a heartbeat left running would renew meanwhile
    await anyio.sleep(0.15)  # a renewal of a released lease would be counted meanwhile
    for lease, _ in kept:
        assert lease.released
        assert lease.renewals <= 1
