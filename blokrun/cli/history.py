"""``blokrun inspect ID --step NAME`` and ``blokrun diff ID A B``: a run's context in time."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    import argparse

    from blokrun.runner import Runner

__all__ = ["add_diff_parser", "diff_vars", "run_diff", "show_step"]

_MAX_SHOWN = 120


def _show(value: Any) -> str:
    text = orjson.dumps(value, default=str).decode()
    return text if len(text) <= _MAX_SHOWN else text[: _MAX_SHOWN - 3] + "..."


def _path(base: str, key: Any) -> str:
    if isinstance(key, int):
        return f"{base}[{key}]"
    return f"{base}.{key}" if str(key).isidentifier() else f"{base}[{str(key)!r}]"


def diff_vars(old: Any, new: Any, path: str = "vars") -> list[str]:
    """Lines ``+ path = value``, ``- path``, ``~ path: old -> new`` (objects key by key)."""
    if isinstance(old, dict) and isinstance(new, dict):
        lines: list[str] = []
        for key in sorted(set(old) | set(new), key=str):
            where = _path(path, key)
            if key not in old:
                lines.append(f"+ {where} = {_show(new[key])}")
            elif key not in new:
                lines.append(f"- {where}")
            else:
                lines.extend(diff_vars(old[key], new[key], where))
        return lines
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        out: list[str] = []
        for i, (a, b) in enumerate(zip(old, new, strict=True)):
            out.extend(diff_vars(a, b, _path(path, i)))
        return out
    if old == new and type(old) is type(new):
        return []
    return [f"~ {path}: {_show(old)} -> {_show(new)}"]


def _point(text: str, step_names: set[str]) -> dict[str, Any]:
    """A checkpoint named by step name, or ``#N`` / ``N`` for sequence number N."""
    if text in step_names:
        return {"step": text}
    digits = text.removeprefix("#")
    if digits.isdigit():
        return {"seq": int(digits)}
    return {"step": text}


async def show_step(args: argparse.Namespace, runner: Runner) -> int:
    from blokrun.cli.output import dump_json

    info, state = await runner.state_at(args.request_id, **_point(args.step, set()))
    sys.stderr.write(f"run {args.request_id} at checkpoint #{info.seq} ({info.step})\n")
    dump_json(state, sys.stdout)
    return 0


def add_diff_parser(sub: Any) -> None:
    p = sub.add_parser("diff", help="the change in a run's context between two checkpoints")
    p.add_argument("request_id", metavar="REQUEST_ID")
    p.add_argument("a", metavar="A", help="a step name, or #N for checkpoint number N")
    p.add_argument("b", metavar="B", help="a step name, or #N")
    p.add_argument("--json", action="store_true", help="print the two states' changes as JSON")


async def run_diff(args: argparse.Namespace, runner: Runner) -> int:
    a_info, a = await runner.state_at(args.request_id, **_point(args.a, set()))
    b_info, b = await runner.state_at(args.request_id, **_point(args.b, set()))
    lines = diff_vars(a, b)
    if args.json:
        sys.stdout.write(
            orjson.dumps({"from": a_info.seq, "to": b_info.seq, "changes": lines}).decode() + "\n"
        )
        return 0
    sys.stdout.write(f"--- #{a_info.seq} {a_info.step}\n+++ #{b_info.seq} {b_info.step}\n")
    sys.stdout.write("\n".join(lines) + ("\n" if lines else "(no change)\n"))
    return 0
