"""The executor: runs an attempt of a workflow's remaining steps and emits hook events.

It knows nothing about storage: checkpointing is a hook, and ``ctx.datasource()`` reads
through a reader the caller injects. :func:`run_attempt` emits
:class:`~blokrun.execution.events.RunStarted`, runs every step not yet done, and emits
:class:`~blokrun.execution.events.RunEnded` however the attempt ends. For each step it
evaluates the inputs, calls the node (async in the run's task; sync in a worker thread)
with its timeout and retry policy, merges the output into ``vars`` and awaits every hook's
``after_step`` -- so a step's checkpoint is durable before any step that depends on it
starts.

Steps declare ``depends_on`` (by default, the step before). A linear workflow runs in a
plain loop; otherwise every step whose dependencies are done starts at once in one task
group. After-step hooks of one run are serialised (checkpoints get consecutive sequence
numbers) and shielded, so a branch that finished keeps its checkpoint even when a sibling
fails; a failing branch cancels the running siblings, which are then not done.
"""

from __future__ import annotations

import hashlib
import logging
import random
import secrets
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeAlias

import anyio

from blokrun.errors import (
    BlokrunError,
    ExpressionError,
    RunError,
    StepFailed,
    ValueNotStorable,
)
from blokrun.execution.builtins import Sleeping, Suspend, wake_time
from blokrun.execution.context import Context, PersistenceInfo, RequestInfo, WorkflowInfo
from blokrun.execution.events import (
    ItemFinished,
    RunEnded,
    RunStarted,
    StepFinished,
    StepStarted,
    Suspension,
    TimerSet,
)
from blokrun.execution.groups import first_failure
from blokrun.execution.hooks import Hook
from blokrun.execution.mapping import MapRun, fingerprint, run_map
from blokrun.execution.threads import run_in_daemon_thread

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Mapping, Sequence

    from blokrun.execution.context import DatasourceReader
    from blokrun.execution.events import Ending
    from blokrun.spec.loader import Step, Workflow
    from blokrun.spec.model import RetrySpec

__all__ = [
    "Attempt",
    "ChildRunner",
    "Outcome",
    "child_id",
    "emit_end",
    "run_attempt",
    "token_hash",
]

#: ``await runner(workflow, child_request_id, inputs)``: a child run's final vars.
ChildRunner: TypeAlias = "Callable[[Workflow, str, dict[str, Any]], Awaitable[dict[str, Any]]]"


def child_id(request_id: str, step: str, index: int | None = None) -> str:
    """The request id of a sub-workflow step's child run: derived from the parent's, so a
    resumed parent finds the child it started (``<id>:<step>``, ``<id>:<step>:<item>``)."""
    return f"{request_id}:{step}" if index is None else f"{request_id}:{step}:{index}"


log = logging.getLogger("blokrun")


def token_hash(request_id: str, step: str, token: str) -> str:
    """How a resume token is stored: hashed, bound to its run and step."""
    return hashlib.sha256(f"{request_id}:{step}:{token}".encode()).hexdigest()


@dataclass(slots=True, eq=False)
class Attempt:
    """One attempt of a run as the executor drives it (mutable; owned by the executor).

    ``done`` lists the steps completed so far (before and during this attempt);
    ``provided`` holds the answer of a suspended ``await-input`` step being resumed;
    ``items`` the stored results of the items of map steps not yet done.
    """

    request_id: str
    workflow: Workflow
    vars: dict[str, Any]
    started_at: float
    attempt: int = 1
    resumed: bool = False
    done: list[str] = field(default_factory=list)
    steps_run: list[str] = field(default_factory=list)
    provided: dict[str, Any] = field(default_factory=dict)
    #: wake-up times of timer steps set before this attempt (step -> Unix seconds)
    timers: dict[str, float] = field(default_factory=dict)
    #: a timer with more than this many seconds left parks the run ("sleeping") instead of
    #: waiting in the process (workers: the slot is freed); None: always wait in-process
    park_after: float | None = None
    #: runs a sub-workflow step's child run: ``await children(workflow, child_id, inputs)``
    #: -> its final vars (given by whoever drives the run; None: sub-workflows fail)
    children: ChildRunner | None = None
    #: results of map items stored before this attempt:
    #: (step, fingerprint of its list of items) -> index -> result
    items: dict[tuple[str, str], dict[int, Any]] = field(default_factory=dict)
    #: this attempt's trace context (W3C ``traceparent``...), filled by the hooks that run
    #: before the recorder (``Hook.first``) and stored with the run's head
    context: dict[str, str] = field(default_factory=dict)
    #: a resume: the trace context the attempt it continues stored, and the checkpoint
    #: (step, sequence number) it continues from
    previous: dict[str, str] = field(default_factory=dict)
    from_step: str | None = None
    from_seq: int = 0

    @property
    def view(self) -> Mapping[str, Any]:
        """The vars as hooks get them: read-only by contract (no copy per event)."""
        return self.vars


@dataclass(frozen=True, slots=True)
class Outcome:
    """How :func:`run_attempt` ended without an error: completed, or suspended for input
    (then ``suspension`` and the resume ``token``, shown to the caller once)."""

    status: Ending
    suspension: Suspension | None = None
    token: str | None = None
    wake_at: float | None = None


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


def _retryable(exc: BaseException, retry: RetrySpec) -> bool:
    names = {cls.__name__ for cls in type(exc).__mro__}
    if retry.on:
        return bool(names.intersection(retry.on))
    return not isinstance(exc, BlokrunError)  # a bad expression will not fix itself


def _delay(retry: RetrySpec, attempt: int) -> float:
    base = min(retry.max_delay, retry.delay * retry.backoff ** (attempt - 1))
    return max(0.0, base * (1 + retry.jitter * (2 * random.random() - 1)))  # noqa: S311


class _Skipped:
    """What a step that did not run returns (its ``when`` or its branch said no)."""

    __slots__ = ()


SKIPPED = _Skipped()


def _boolean(value: Any, source: str, path: str) -> bool:
    if value is True or value is False:
        return value
    raise ExpressionError(f"expected a boolean, got {value!r}", source=source, path=path)


async def _call(step: Step, ctx: Context, inputs: dict[str, Any]) -> Any:
    node = step.node
    if node.is_async:
        return await node.fn(ctx, inputs)
    # A thread cannot be interrupted: on timeout or cancellation we stop waiting for it, and
    # it runs on as a daemon thread that never keeps the process alive.
    return await run_in_daemon_thread(node.fn, ctx, inputs)


#: :class:`Hook`'s own ``before_step``, which does nothing
_NO_BEFORE = Hook.before_step


def _noop(method: Any) -> bool:
    """Whether the bound hook method ``method`` is :class:`Hook`'s own no-op ``before_step``:
    a step's start event is neither built nor awaited for hooks that only inherit it.
    Looked up at each step, as the call it replaces was (a hook may gain one mid-run)."""
    return getattr(method, "__func__", None) is _NO_BEFORE


class _Executor:
    __slots__ = ("_hook_lock", "_make_ctx", "hooks", "parallel", "run")

    def __init__(self, run: Attempt, hooks: Sequence[Hook], reader: DatasourceReader) -> None:
        self.run = run
        self.hooks = hooks
        self._hook_lock = anyio.Lock()
        self.parallel = False
        wf = run.workflow
        request = RequestInfo(run.request_id, run.started_at)
        info = WorkflowInfo(wf.name, wf.version, wf.definition_hash)
        persistence = PersistenceInfo(
            wf.persistence_enabled, wf.auto_save, wf.targets, wf.key_pattern
        )

        def make_ctx(step: str) -> Context:
            ctx = Context(
                request=request,
                workflow=info,
                vars=run.vars,
                reader=reader,
                allowed=wf.datasources,
                logger=logging.LoggerAdapter(
                    _node_log, {"request_id": run.request_id, "step": step}
                ),
                persistence=persistence,
            )
            ctx.step = step
            return ctx

        self._make_ctx: Callable[[str], Context] = make_ctx

    async def step(self, step: Step) -> tuple[Any, float, int]:
        """Run one step with its timeout and retries: (output, seconds, attempts)."""
        run = self.run
        if step.name in run.provided:  # a suspended step's input
            return run.provided.pop(step.name), 0.0, 1
        ctx = self._make_ctx(step.name)
        if step.guard is not None or step.when is not None or step.branches:
            decided = await self._decide(step, ctx)
            if decided is not None:
                return decided, 0.0, 1
        event: StepStarted | None = None
        for hook in self.hooks:
            before = hook.before_step
            if _noop(before):
                continue
            if event is None:
                event = StepStarted(run.request_id, run.workflow, run.attempt, step)
            await before(event)
        if step.map is not None:
            return await self._map(step, ctx)
        if step.node.timer:
            return await self._timer(step, ctx)
        if step.child is not None:
            started = time.perf_counter()
            output = await self._child(step, ctx, None)
            return output, time.perf_counter() - started, 1
        return await self._tries(step, ctx)

    async def _child(self, step: Step, ctx: Context, index: int | None) -> Any:
        """Run the step's sub-workflow as a child run (its inputs are the child's)."""
        run = self.run
        assert step.child is not None
        try:
            inputs = await step.inputs.evaluate(_StepScope(ctx, step.name))
        except ExpressionError as exc:
            raise self._failure(step, exc, 1) from exc
        if run.children is None:
            raise StepFailed(
                "sub-workflows need a runner to start child runs",
                request_id=run.request_id,
                step=step.name,
            )
        cid = child_id(run.request_id, step.name, index)
        try:
            return await run.children(step.child, cid, dict(inputs))
        except RunError as exc:
            raise StepFailed(
                f"child run {cid} ({step.child.name}) failed: {exc.detail}; its own steps "
                f"are checkpointed: resuming this run continues it",
                request_id=run.request_id,
                step=step.name,
            ) from exc

    async def _timer(self, step: Step, ctx: Context) -> tuple[Any, float, int]:
        """A durable wait: its wake-up time is told to the hooks (stored) before it waits,
        and a resume waits only what is left."""
        run = self.run
        started = time.perf_counter()
        wake = run.timers.get(step.name)
        if wake is None:
            try:
                inputs = await step.inputs.evaluate(_StepScope(ctx, step.name))
                wake = wake_time(step.node.name, inputs, time.time())
            except (ExpressionError, ValueError) as exc:
                raise self._failure(step, exc, 1) from exc
            event = TimerSet(run.request_id, run.workflow, run.attempt, step, wake)
            for hook in self.hooks:
                await hook.on_timer(event)
            run.timers[step.name] = wake
        left = wake - time.time()
        if run.park_after is not None and left > run.park_after:
            raise Sleeping(step.name, wake)
        if left > 0:
            await anyio.sleep(left)
        return None, time.perf_counter() - started, 1

    async def _map(self, step: Step, ctx: Context) -> tuple[Any, float, int]:
        plan = step.map
        assert plan is not None
        run = self.run
        started = time.perf_counter()
        try:
            items = await plan.items.evaluate(_StepScope(ctx, step.name))
        except ExpressionError as exc:
            raise self._failure(step, exc, 1) from exc
        if not isinstance(items, list | tuple):
            raise StepFailed(
                f"{step.at}.map.items: expected a list, got {type(items).__name__}",
                request_id=run.request_id,
                step=step.name,
            )

        async def call(index: int, item: Any) -> Any:
            item_ctx = self._make_ctx(step.name)
            item_ctx.item, item_ctx.index = item, index
            if step.child is not None:
                return await self._child(step, item_ctx, index)
            output, _, _ = await self._tries(step, item_ctx)
            return output

        of = fingerprint(items)

        async def stored(index: int, output: Any) -> None:
            event = ItemFinished(run.request_id, run.workflow, run.attempt, step, index, output, of)
            try:
                for hook in self.hooks:
                    await hook.after_item(event)
            except ValueNotStorable as exc:
                raise StepFailed(
                    f"item {index} returned a value that cannot be stored: {exc}",
                    request_id=run.request_id,
                    step=step.name,
                ) from exc

        mapped = MapRun(
            request_id=run.request_id,
            step=step.name,
            items=list(items),
            done=run.items.get((step.name, of), {}),
            concurrency=plan.concurrency,
            tolerate=plan.tolerate,
            call=call,
            stored=stored,
        )
        output = await run_map(mapped)
        run.items.pop((step.name, of), None)
        return output, time.perf_counter() - started, 1

    async def _tries(self, step: Step, ctx: Context) -> tuple[Any, float, int]:
        """Call the step's node with its timeout, as its retry policy says."""
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
                        attempts,
                        retry.attempts,
                        type(exc).__name__,
                        exc,
                        wait,
                    )
                    await anyio.sleep(wait)
                    continue
                raise self._failure(step, exc, attempts) from exc

    async def _decide(self, step: Step, ctx: Context) -> Any:
        """SKIPPED when ``step`` must not run; a choice's decision; None: run its node."""
        if step.guard is not None:
            choice, index = step.guard
            chosen = self.run.vars.get(choice)
            if not isinstance(chosen, dict) or chosen.get("branch") != index:
                return SKIPPED
        source = self.run.workflow.source
        try:
            if step.when is not None:
                held = await step.when.evaluate(_StepScope(ctx, step.name))
                if not _boolean(held, source, f"{step.at}.when"):
                    return SKIPPED
            for i, branch in enumerate(step.branches):
                if branch.when is None or _boolean(
                    await branch.when.evaluate(_StepScope(ctx, step.name)),
                    source,
                    f"{step.at}.choice[{i}].when",
                ):
                    return {"branch": i, "label": branch.label}
        except ExpressionError as exc:
            raise self._failure(step, exc, 1) from exc
        if step.branches:
            raise StepFailed(
                "no branch of the choice matched, and it has no default (a last branch "
                "without 'when')",
                request_id=self.run.request_id,
                step=step.name,
            )
        return None

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
        stores = step.checkpoint or (step.publish is not None and output is not SKIPPED)
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
        skipped = output is SKIPPED
        if skipped:
            output = None
        elif output is not None:
            run.vars[step.name] = output
        run.done.append(step.name)
        run.steps_run.append(step.name)
        if not self.hooks:
            return
        event = StepFinished(
            run.request_id,
            run.workflow,
            run.attempt,
            step,
            output,
            duration,
            attempts,
            last,
            tuple(run.done),
            run.view,
            skipped,
        )
        try:
            for hook in self.hooks:
                await hook.after_step(event)
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
            failure = first_failure(group)
            raise failure from failure.__cause__  # its own cause kept (the node's error)
        if pending:  # cannot happen with an acyclic graph; guard against a silent stop
            raise RunError(
                f"steps never became ready: {', '.join(s.name for s in pending)}",
                request_id=self.run.request_id,
            )


async def _execute(run: Attempt, hooks: Sequence[Hook], reader: DatasourceReader) -> None:
    """Run every step of ``run.workflow`` not in ``run.done``; raise RunError on failure."""
    wf = run.workflow
    done = set(run.done)
    remaining = [s for s in wf.steps if s.name not in done]
    executor = _Executor(run, hooks, reader)
    if wf.linear:
        await executor.linear(remaining)
    else:
        await executor.graph(remaining)


async def emit_end(
    run: Attempt,
    hooks: Sequence[Hook],
    status: Ending,
    error: BaseException | None = None,
    *,
    suspension: Suspension | None = None,
    sleeping: tuple[str, float] | None = None,
) -> None:
    """Tell every hook how the attempt ended (in order; the first error propagates)."""
    event = RunEnded(
        run.request_id,
        run.workflow,
        run.attempt,
        status,
        error,
        tuple(run.done),
        tuple(run.steps_run),
        run.view,
        suspension,
        sleeping,
    )
    for hook in _end_order(hooks):
        await hook.on_run_end(event)


def _end_order(hooks: Sequence[Hook]) -> list[Hook]:
    """The order hooks hear of a run's end: the ``first`` hooks (which ran before the
    recorder) last, so they see the whole attempt -- its final status stored too."""
    return [h for h in hooks if not h.first] + [h for h in hooks if h.first]


def new_resume_token() -> str:
    """A suspended run's resume token: 128 random bits as 32 hex digits. Never starting
    with ``-`` (``secrets.token_urlsafe`` did 1 time in 64): the printed ``blokrun resume
    ... --token TOKEN`` must parse as it is shown."""
    return secrets.token_hex(16)


async def run_attempt(run: Attempt, *, hooks: Sequence[Hook], reader: DatasourceReader) -> Outcome:
    """Run one attempt: emit RunStarted, run the remaining steps, emit RunEnded.

    Returns the :class:`Outcome` when the attempt completed or suspended; raises the
    :class:`~blokrun.errors.RunError` (or cancellation) it failed with otherwise -- after
    every hook was told (shielded from cancellation, so a cancelled run is still recorded).
    A hook that fails while a failure is being reported is logged, not raised: it must not
    hide the run's own error. A hook that fails on completion fails the run.
    """
    started = RunStarted(
        run.request_id,
        run.workflow,
        run.attempt,
        run.resumed,
        run.started_at,
        tuple(run.done),
        run.view,
        run.context,
        run.previous,
        run.from_step,
        run.from_seq,
    )
    try:
        for hook in hooks:
            await hook.on_run_start(started)
        await _execute(run, hooks, reader)
    except Suspend as sus:
        token = new_resume_token()
        suspension = Suspension(sus.step, sus.prompt, token_hash(run.request_id, sus.step, token))
        with anyio.CancelScope(shield=True):
            await emit_end(run, hooks, "suspended", sus, suspension=suspension)
        return Outcome("suspended", suspension, token)
    except Sleeping as nap:
        with anyio.CancelScope(shield=True):
            await emit_end(run, hooks, "sleeping", nap, sleeping=(nap.step, nap.wake_at))
        return Outcome("sleeping", wake_at=nap.wake_at)
    except BaseException as exc:
        status: Ending = (
            "cancelled" if isinstance(exc, anyio.get_cancelled_exc_class()) else "failed"
        )
        event = RunEnded(
            run.request_id,
            run.workflow,
            run.attempt,
            status,
            exc,
            tuple(run.done),
            tuple(run.steps_run),
            run.view,
        )
        for hook in _end_order(hooks):
            try:
                with anyio.CancelScope(shield=True):
                    await hook.on_run_end(event)
            except Exception:  # a failing hook must not hide the run's own error
                log.exception("on_run_end hook failed for run %s", run.request_id)
        raise
    await emit_end(run, hooks, "completed")
    return Outcome("completed")
