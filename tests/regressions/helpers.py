"""What the regression tests share: an in-memory datasource, the calls a run made, and a
store that dies between a checkpoint and its head."""

from __future__ import annotations

from collections.abc import Sequence

from blokrun.config import DatasourceSettings
from blokrun.datasources import Datasource, Entry, build_datasource
from blokrun.datasources.memory import MemoryStore
from tests.integration import wfnodes

NODE = "tests.integration.wfnodes"


def mem(name: str = "default") -> Datasource:
    return build_datasource(DatasourceSettings(name=name, type="memory"))


def calls(rid: str) -> list[str]:
    return [s for r, s in wfnodes.CALLS if r == rid]


class CrashAfterFirst(MemoryStore):
    """save_batch of a batch holding `crash_key`: writes the first entry (the checkpoint),
    then 'dies' before the head (the process crash between checkpoint and head)."""

    __slots__ = ("crash_key",)

    def __init__(self) -> None:
        super().__init__()
        self.crash_key: str | None = None

    async def save_batch(self, entries: Sequence[Entry]) -> None:
        if self.crash_key is not None and any(k == self.crash_key for k, _, _ in entries):
            self.crash_key = None
            await super().save_batch(entries[:1])
            raise RuntimeError("simulated crash between checkpoint and head")
        await super().save_batch(entries)


def crashing(name: str = "default") -> tuple[Datasource, CrashAfterFirst]:
    st = CrashAfterFirst()
    return Datasource(DatasourceSettings(name=name, type="memory"), st), st
