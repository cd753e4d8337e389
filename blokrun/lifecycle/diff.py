"""The change in a run's vars between two checkpoints, as lines a person reads.

``+ path = value`` (added), ``- path`` (removed), ``~ path: old -> new`` (changed); objects
are compared key by key, lists of one length item by item. Used by ``blokrun diff`` and the
dashboard.
"""

from __future__ import annotations

from typing import Any

import orjson

__all__ = ["diff_vars"]

_MAX_SHOWN = 120


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


def _show(value: Any) -> str:
    text = orjson.dumps(value, default=str).decode()
    return text if len(text) <= _MAX_SHOWN else text[: _MAX_SHOWN - 3] + "..."


def _path(base: str, key: Any) -> str:
    if isinstance(key, int):
        return f"{base}[{key}]"
    return f"{base}.{key}" if str(key).isidentifier() else f"{base}[{str(key)!r}]"
