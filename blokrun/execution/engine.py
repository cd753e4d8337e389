"""The executor: runs a workflow's remaining steps in order and emits hook events.

It knows nothing about storage: checkpointing is a hook. For each step not yet done it
evaluates the inputs, calls the node (async in the run's task; sync in a worker thread),
merges the output into ``vars`` and awaits every hook's ``after_step`` before the next step
starts -- so a step's checkpoint is durable before the next step runs.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

import anyio

from blokrun.context import Context, RequestInfo, WorkflowInfo
from blokrun.errors import BlokrunError, RunError, StepFailed, ValueNotStorable
from blokrun.execution.hooks import StepOutcome

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from blokrun.datasources import Datasource
    from blokrun.execution.hooks import Hook, RunState
    from blokrun.persistence.codec import Opener
    from blokrun.spec.loader import Step

__all__ = ["execute"]

_node_log = logging.getLogger("blokrun.node")


class _StepScope:
    """Expression scope of one step: ``ctx`` as a mapping, ``stepName``, datasource reads."""

    __slots__ = ("_ctx", "_mapping", "_step")

    def __init__(self, ctx: Context, step: str) -> None:
        self._ctx = ctx
        self._step = step
        self._mapping: dict[str, Any] | None = None

    def lookup_root(self, name: str) -> Any:
        if name == "stepName":
            return self._step
        if self._mapping is None:
            self._mapping = self._ctx.as_mapping()
        return self._mapping

    async def call_datasource(self, name: Any, key: Any) -> Any:
        return await self._ctx.datasource(name, key)


async def _call(step: Step, ctx: Context, inputs: dict[str, Any]) -> Any:
    node = step.node
    if node.is_async:
        return await node.fn(ctx, inputs)
    return await anyio.to_thread.run_sync(node.fn, ctx, inputs)


async def execute(
    run: RunState,
    *,
    datasources: Mapping[str, Datasource],
    hooks: Sequence[Hook],
    envelope: Opener,
) -> None:
    """Run every step of ``run.workflow`` not in ``run.done``; raise RunError on failure."""
    wf = run.workflow
    ctx = Context(
        request=RequestInfo(run.request_id, run.started_at),
        workflow=WorkflowInfo(wf.name, wf.version, wf.definition_hash),
        vars=run.vars,
        datasources=datasources,
        allowed=wf.datasources,
        logger=_node_log,
        envelope=envelope,
    )
    done = set(run.done)
    remaining = [s for s in wf.steps if s.name not in done]
    for position, step in enumerate(remaining):
        ctx.step = step.name
        ctx.logger = logging.LoggerAdapter(
            _node_log, {"request_id": run.request_id, "step": step.name}
        )
        for hook in hooks:
            await hook.before_step(run, step)
        started = time.perf_counter()
        try:
            if step.inputs.is_constant:
                inputs = dict(step.inputs.evaluate_static(_StepScope(ctx, step.name)))
            else:
                inputs = await step.inputs.evaluate(_StepScope(ctx, step.name))
            output = await _call(step, ctx, inputs)
        except RunError:
            raise
        except BlokrunError as exc:
            raise StepFailed(str(exc), request_id=run.request_id, step=step.name) from exc
        except Exception as exc:
            raise StepFailed(
                f"{type(exc).__name__}: {exc}", request_id=run.request_id, step=step.name
            ) from exc
        duration = time.perf_counter() - started
        if output is not None:
            run.vars[step.name] = output
        run.done.append(step.name)
        run.steps_run.append(step.name)
        outcome = StepOutcome(step, output, duration, position == len(remaining) - 1)
        try:
            for hook in hooks:
                await hook.after_step(run, outcome)
        except ValueNotStorable as exc:
            run.done.pop()
            raise StepFailed(
                f"returned a value that cannot be stored: {exc}",
                request_id=run.request_id,
                step=step.name,
            ) from exc
        except RunError:
            raise
        except Exception as exc:
            raise RunError(
                f"after-step hook failed: {type(exc).__name__}: {exc}",
                request_id=run.request_id,
                step=step.name,
            ) from exc
