"""``python -m scripts.span_tree < spans.txt``: the spans OpenTelemetry's console exporter
printed (``OTEL_TRACES_EXPORTER=console``, on stderr), as a tree: name, duration and the
blokrun attributes that tell spans apart. Used for the README's example."""

from __future__ import annotations

import json
import sys
from datetime import datetime
from typing import Any

SHOWN = (
    "blokrun.request_id",
    "blokrun.attempt",
    "blokrun.step",
    "blokrun.datasource",
    "blokrun.sequence",
    "blokrun.outcome",
    "blokrun.resume.from_step",
)


def spans(text: str) -> list[dict[str, Any]]:
    decoder, out, i = json.JSONDecoder(), [], 0
    while (start := text.find("{\n", i)) != -1:
        try:
            obj, i = decoder.raw_decode(text, start)
        except json.JSONDecodeError:
            i = start + 1
            continue
        if isinstance(obj, dict) and "context" in obj:
            out.append(obj)
    return out


def _ms(span: dict[str, Any]) -> float:
    start = datetime.fromisoformat(span["start_time"].rstrip("Z"))
    end = datetime.fromisoformat(span["end_time"].rstrip("Z"))
    return (end - start).total_seconds() * 1000


def tree(found: list[dict[str, Any]]) -> list[str]:
    ids = {s["context"]["span_id"] for s in found}
    lines: list[str] = []

    def show(span: dict[str, Any], depth: int) -> None:
        attrs = span["attributes"]
        shown = " ".join(f"{k.removeprefix('blokrun.')}={attrs[k]}" for k in SHOWN if k in attrs)
        status = span["status"]["status_code"]
        mark = " ERROR" if status == "ERROR" else ""
        links = " (links to an earlier attempt)" if span["links"] else ""
        lines.append(f"{'  ' * depth}{span['name']}  {_ms(span):.1f} ms  {shown}{mark}{links}")
        children = [c for c in found if c["parent_id"] == span["context"]["span_id"]]
        for child in sorted(children, key=lambda c: c["start_time"]):
            show(child, depth + 1)

    roots = [s for s in found if s["parent_id"] not in ids]
    for root in sorted(roots, key=lambda s: s["start_time"]):
        show(root, 0)
    return lines


if __name__ == "__main__":
    print("\n".join(tree(spans(sys.stdin.read()))))
