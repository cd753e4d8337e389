"""The executor: runs a workflow's remaining steps and emits hook events.

It knows nothing about storage: checkpointing is a hook. For each step not yet done it
evaluates the inputs, calls the node (async in the run's task; sync in a worker thread) with
its timeout and retry policy, merges the output into ``vars`` and awaits every hook's
``after_step`` -- so a step's checkpoint is durable before any step that depends on it
starts.

Steps declare ``depends_on`` (by default, the step before). A linear workflow runs in a
plain loop; otherwise every step whose dependencies are done starts at once in one task
group. After-step hooks of one run are serialised (checkpoints get consecutive sequence
numbers) and shielded, so a branch that finished keeps its checkpoint even when a sibling
fails; a failing branch cancels the running siblings, which are then not done.
"""

from __future__ import annotations

import logging
import random
import time
from typing import TYPE_CHECKING, Any

import anyio

from blokrun.context import Context, RequestInfo, WorkflowInfo
from blokrun.errors import BlokrunError, RunError, StepFailed, ValueNotStorable
from blokrun.execution.groups import first_failure
from blokrun.execution.hooks import StepOutcome

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

    from blokrun.datasources import Datasource
    from blokrun.execution.hooks import Hook, RunState
    from blokrun.persistence.codec import Opener
    from blokrun.spec.loader import Step, Workflow
    from blokrun.spec.model import RetrySpec

__all__ = ["execute", "is_linear"]

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


def is_linear(wf: Workflow) -> bool:
    """Whether every step waits exactly for the one before it (the default)."""
    return all(
        s.depends_on == ((wf.steps[i - 1].name,) if i else ()) for i, s in enumerate(wf.steps)
    )


def _retryable(exc: BaseException, retry: RetrySpec) -> bool:
    names = {cls.__name__ for cls in type(exc).__mro__}
    if retry.on:
        return bool(names.intersection(retry.on))
    return not isinstance(exc, BlokrunError)  # a bad expression will not fix itself


def _delay(retry: RetrySpec, attempt: int) -> float:
    base = min(retry.max_delay, retry.delay * retry.backoff ** (attempt - 1))
    return max(0.0, base * (1 + retry.jitter * (2 * random.random() - 1)))  # noqa: S311


async def _call(step: Step, ctx: Context, inputs: dict[str, Any]) -> Any:
    node = step.node
    if node.is_async:
        return await node.fn(ctx, inputs)
    # A thread cannot be interrupted: on timeout or cancellation we stop waiting for it.
    return await anyio.to_thread.run_sync(node.fn, ctx, inputs, abandon_on_cancel=True)


class _Executor:
    __slots__ = ("_hook_lock", "_make_ctx", "datasources", "envelope", "hooks", "parallel", "run")

    def __init__(
        self,
        run: RunState,
        datasources: Mapping[str, Datasource],
        hooks: Sequence[Hook],
        envelope: Opener,
    ) -> None:
        self.run = run
        self.datasources = datasources
        self.hooks = hooks
        self.envelope = envelope
        self._hook_lock = anyio.Lock()
        self.parallel = False
        wf = run.workflow
        request = RequestInfo(run.request_id, run.started_at)
        info = WorkflowInfo(wf.name, wf.version, wf.definition_hash)

        def make_ctx(step: str) -> Context:
            ctx = Context(
                request=request,
                workflow=info,
                vars=run.vars,
                datasources=datasources,
                allowed=wf.datasources,
                logger=logging.LoggerAdapter(
                    _node_log, {"request_id": run.request_id, "step": step}
                ),
                envelope=envelope,
            )
            ctx.step = step
            return ctx

        self._make_ctx: Callable[[str], Context] = make_ctx

    async def step(self, step: Step) -> tuple[Any, float, int]:
        """Run one step with its timeout and retries: (output, seconds, attempts)."""
        run = self.run
        provided = run.extras.get("provided_input")
        if isinstance(provided, dict) and step.name in provided:  # a suspended step's input
            return provided.pop(step.name), 0.0, 1
        ctx = self._make_ctx(step.name)
        for hook in self.hooks:
            await hook.before_step(run, step)
        started = time.perf_counter()
        attempts = 0
        while True:
            attempts += 1
            try:
                if step.inputs.is_constant:
                    inputs = dict(step.inputs.evaluate_static(_StepScope(ctx, step.name)))
                else:
                    inputs = await step.inputs.evaluate(_StepScope(ctx, step.name))
                if step.timeout is None:
                    output = await _call(step, ctx, inputs)
                else:
                    with anyio.fail_after(step.timeout):
                        output = await _call(step, ctx, inputs)
                return output, time.perf_counter() - started, attempts
            except RunError:
                raise
            except Exception as exc:
                retry = step.retry
                if retry is not None and attempts < retry.attempts and _retryable(exc, retry):
                    wait = _delay(retry, attempts)
                    ctx.logger.warning(
                        "attempt %d of %d failed (%s: %s); retrying in %.2fs",
                        attempts, retry.attempts, type(exc).__name__, exc, wait,
                    )  # fmt: skip
                    await anyio.sleep(wait)
                    continue
                raise self._failure(step, exc, attempts) from exc

    def _failure(self, step: Step, exc: Exception, attempts: int) -> StepFailed:
        if isinstance(exc, TimeoutError) and step.timeout is not None:
            detail = f"timed out after {step.timeout:g}s"
        elif isinstance(exc, BlokrunError):
            detail = str(exc)
        else:
            detail = f"{type(exc).__name__}: {exc}"
        if attempts > 1:
            detail += f" (after {attempts} attempts)"
        return StepFailed(detail, request_id=self.run.request_id, step=step.name)

    async def finish(
        self, step: Step, output: Any, duration: float, attempts: int, *, last: bool
    ) -> None:
        """Merge a step's output and run the after-step hooks (its checkpoint first).

        In a parallel graph, hooks of one run take turns (a lock) so checkpoints get
        consecutive numbers; a step that stores something is shielded from cancellation so a
        finished branch keeps its checkpoint when a sibling fails. A linear run needs
        neither lock nor shield for a step that stores nothing (the hot path).
        """
        stores = step.checkpoint or step.publish is not None
        if self.parallel:
            with anyio.CancelScope(shield=True):  # shielded while it waits for the lock too
                async with self._hook_lock:
                    await self._after(step, output, duration, attempts, last)
        elif stores:
            with anyio.CancelScope(shield=True):
                await self._after(step, output, duration, attempts, last)
        else:
            await self._after(step, output, duration, attempts, last)

    async def _after(
        self, step: Step, output: Any, duration: float, attempts: int, last: bool
    ) -> None:
        run = self.run
        if output is not None:
            run.vars[step.name] = output
        run.done.append(step.name)
        run.steps_run.append(step.name)
        outcome = StepOutcome(step, output, duration, last, attempts)
        try:
            for hook in self.hooks:
                await hook.after_step(run, outcome)
        except ValueNotStorable as exc:
            run.done.remove(step.name)
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

    async def linear(self, remaining: Sequence[Step]) -> None:
        for position, step in enumerate(remaining):
            output, duration, attempts = await self.step(step)
            await self.finish(step, output, duration, attempts, last=position == len(remaining) - 1)

    async def graph(self, remaining: Sequence[Step]) -> None:
        self.parallel = True
        done = set(self.run.done)
        pending = list(remaining)
        running: set[str] = set()

        async def branch(step: Step) -> None:
            output, duration, attempts = await self.step(step)
            running.discard(step.name)
            await self.finish(step, output, duration, attempts, last=not pending and not running)
            done.add(step.name)
            launch()

        def launch() -> None:
            for step in list(pending):
                if all(dep in done for dep in step.depends_on):
                    pending.remove(step)
                    running.add(step.name)
                    tg.start_soon(branch, step, name=f"blokrun step {step.name}")

        try:
            async with anyio.create_task_group() as tg:
                launch()
        except BaseExceptionGroup as group:
            raise first_failure(group) from None
        if pending:  # cannot happen with an acyclic graph; guard against a silent stop
            raise RunError(
                f"steps never became ready: {', '.join(s.name for s in pending)}",
                request_id=self.run.request_id,
            )


async def execute(
    run: RunState,
    *,
    datasources: Mapping[str, Datasource],
    hooks: Sequence[Hook],
    envelope: Opener,
) -> None:
    """Run every step of ``run.workflow`` not in ``run.done``; raise RunError on failure."""
    wf = run.workflow
    done = set(run.done)
    remaining = [s for s in wf.steps if s.name not in done]
    executor = _Executor(run, datasources, hooks, envelope)
    if is_linear(wf):
        await executor.linear(remaining)
    else:
        await executor.graph(remaining)
