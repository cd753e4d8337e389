"""The last step of the resume workflow of ``bench_blokrun.py``: fails while ``FAIL`` is set.

A module of its own so the workflow can name it (``blokrun_nodes:last``) both in the
benchmark process and in the new process that resumes the run (where ``FAIL`` is false).
"""

from __future__ import annotations

from typing import Any

FAIL = False


async def last(ctx: Any, inputs: dict[str, Any]) -> None:
    if FAIL:
        raise RuntimeError("the last step failed on purpose (the benchmark's crash)")
    ctx.vars.update(inputs)
