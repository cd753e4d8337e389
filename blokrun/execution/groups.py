"""Task groups report failures as exception groups; callers want the one that matters."""

from __future__ import annotations

__all__ = ["first_failure"]


def first_failure(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The error to report from a failed task group: a RunError when there is one, else the
    first leaf (a KeyboardInterrupt or cancellation is reported as itself)."""
    from blokrun.errors import RunError

    leaves: list[BaseException] = []

    def walk(exc: BaseException) -> None:
        if isinstance(exc, BaseExceptionGroup):
            for inner in exc.exceptions:
                walk(inner)
        else:
            leaves.append(exc)

    walk(group)
    for exc in leaves:
        if isinstance(exc, RunError):
            return exc
    return leaves[0] if leaves else group
