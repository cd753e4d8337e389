"""The dashboard's HTML: server-rendered pages, every value escaped.

Text from runs (ids, step names, errors, vars) reaches a page only through :func:`esc`
(``html.escape`` with quotes), so a var holding ``<script>`` or ``"><img onerror=…>`` is
text. The pages work without JavaScript; ``app.js`` (in the package, no CDN) only refreshes
the runs table and the run's status while they are open.
"""

from __future__ import annotations

import html
import time
from typing import Any
from urllib.parse import quote

import orjson

__all__ = ["esc", "layout", "run_page", "runs_page", "state_tree"]

STATUSES = ("running", "interrupted", "completed", "failed", "cancelled", "suspended",
            "sleeping", "dead")  # fmt: skip


def esc(value: Any) -> str:
    return html.escape(value if isinstance(value, str) else str(value), quote=True)


def when(t: float | None) -> str:
    return "-" if t is None else time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(t))


def run_url(root: str, request_id: str) -> str:
    """The run page's path (ids hold ``:``: never a relative link, always quoted)."""
    return f"{root}/runs/{quote(request_id, safe='')}"


def layout(title: str, body: str, *, root: str, refresh: str = "") -> str:
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        f"<title>{esc(title)} - blokrun</title>"
        '<meta name=viewport content="width=device-width, initial-scale=1">'
        f'<link rel=stylesheet href="{esc(root)}/static/app.css"></head>'
        f'<body data-refresh="{esc(refresh)}" data-root="{esc(root)}">'
        f'<header><a href="{esc(root)}/">blokrun</a> <span>{esc(title)}</span></header>'
        f'<main>{body}</main><script src="{esc(root)}/static/app.js"></script></body></html>'
    )


def _filters(params: Any, root: str) -> str:
    options = "".join(
        f"<option{' selected' if params.get('status') == s else ''}>{s}</option>" for s in STATUSES
    )
    return (
        f'<form class=filters method=get action="{esc(root)}/">'
        f'<select name=status aria-label=status><option value="">any status</option>{options}'
        "</select>"
        f'<input name=workflow placeholder=workflow value="{esc(params.get("workflow", ""))}">'
        f'<input name=q placeholder="request id contains" value="{esc(params.get("q", ""))}">'
        f'<input name=tag placeholder="tag key=value" value="{esc(params.get("tag", ""))}">'
        "<button>filter</button></form>"
    )


def _tag_list(tags: dict[str, str]) -> str:
    return "".join(f" <span class=tag>{esc(k)}={esc(v)}</span>" for k, v in sorted(tags.items()))


def _row(r: dict[str, Any], root: str) -> str:
    step = r["stopped_at"] or r["last_done"] or ""
    link = esc(run_url(root, r["request_id"]))
    return (
        f'<tr class="st-{esc(r["status"])}"><td><a href="{link}">{esc(r["request_id"])}</a></td>'
        f"<td>{esc(r['workflow'])}{_tag_list(r.get('tags') or {})}</td>"
        f"<td class=status>{esc(r['status'])}</td>"
        f"<td>{esc(step)}</td><td>{r['attempt']}</td><td>{when(r['started_at'])}</td>"
        f"<td>{when(r['updated_at'])}</td><td class=error>{esc((r['error'] or '')[:200])}</td></tr>"
    )


def gc_page(report: dict[str, Any], *, root: str) -> str:
    """What ``blokrun gc`` would delete now (a dry run: nothing is deleted)."""
    runs = "".join(
        f'<li><a href="{esc(run_url(root, rid))}">{esc(rid)}</a></li>' for rid in report["runs"]
    )
    body = (
        f"<p>a dry run with the default ages (completed runs after 7 days, failed after 30): "
        f"{len(report['runs'])} run(s), {report['keys']} key(s), {report['bytes']} bytes "
        f"would be deleted; nothing was.</p><ul>{runs}</ul>"
        "<p>To delete them: <code>blokrun gc</code></p>"
    )
    return layout("gc preview", body, root=root)


def queue_section(queue: dict[str, Any] | None) -> str:
    """The queue's counts and the workers seen recently (when a queue is configured)."""
    if not queue or not queue.get("configured"):
        return ""
    now = time.time()
    workers = "".join(
        f"<li><b>{esc(w['name'])}</b> ({esc(w['host'])}, pid {w['pid']}) seen "
        f"{now - w['seen']:.0f}s ago · {len(w['running'])}/{w['concurrency']} running"
        f"{': ' + esc(', '.join(w['running'])) if w['running'] else ''}"
        f"{' · parked: ' + esc(', '.join(w['parked'])) if w['parked'] else ''}</li>"
        for w in queue["workers"]
    )
    return (
        f"<section id=queue><h2>queue</h2><p>{queue['waiting']} waiting · {queue['claimed']}"
        f" claimed · {queue['parked']} parked (in {esc(queue['datasource'])})</p>"
        f"<ul class=workers>{workers or '<li>no worker seen recently</li>'}</ul></section>"
    )


def runs_page(
    data: dict[str, Any],
    counts: dict[str, int],
    params: Any,
    *,
    root: str,
    queue: dict[str, Any] | None = None,
) -> str:
    rows = "".join(_row(r, root) for r in data["runs"])
    tally = " ".join(
        f'<a class="count st-{esc(s)}" href="?status={esc(s)}">{esc(s)} {n}</a>'
        for s, n in counts.items()
    )
    more = ""
    if data["cursor"]:
        keep = {k: v for k, v in params.items() if k != "cursor"}
        query = "&".join(f"{esc(k)}={esc(v)}" for k, v in keep.items())
        more = f'<a class=next href="?{query}&amp;cursor={esc(data["cursor"])}">older runs</a>'
    body = (
        f"<nav class=counts>{tally or 'no runs yet'} "
        f'<a class=gc href="{esc(root)}/gc">gc preview</a></nav>{_filters(params, root)}'
        "<table id=runs><thead><tr><th>request id</th><th>workflow</th><th>status</th>"
        "<th>step</th><th>attempt</th><th>started (UTC)</th><th>updated (UTC)</th>"
        f"<th>error</th></tr></thead><tbody>{rows}</tbody></table>{more}"
        f"{queue_section(queue)}"
    )
    return layout("runs", body, root=root, refresh="runs")


def _timeline(bars: list[dict[str, Any]]) -> str:
    """One row per stored step attempt: its name on the left, a bar placed by time."""
    if not bars:
        return "<p>no steps stored yet</p>"
    t0 = min(b["start"] for b in bars)
    span = max(max(b["end"] for b in bars) - t0, 1e-6)
    rows = []
    for b in bars:
        width = max(100 * (b["end"] - b["start"]) / span, 0.8)
        left = min(100 * (b["start"] - t0) / span, 100 - width)
        label = f"{b['step']} · attempt {b['attempt']} · {b['status']}"
        rows.append(
            f'<div class=row title="{esc(label)}"><span class=label>{esc(b["step"])}'
            f" <small>a{b['attempt']}</small></span><div class=track>"
            f'<div class="bar st-{esc(b["status"])} at-{b["attempt"] % 4}" '
            f'style="margin-left:{left:.2f}%;width:{width:.2f}%"></div></div></div>'
        )
    return f"<div class=timeline aria-label=timeline>{''.join(rows)}</div>"


def state_tree(value: Any, name: str = "vars", depth: int = 0) -> str:
    """A JSON value as nested ``<details>`` (open to the second level), every text escaped."""
    if isinstance(value, dict) and "$truncated" in value and "$size" in value:
        return (f'<div class=leaf><b>{esc(name)}</b>: <code>{esc(value["$truncated"])}</code>'
                f' <i>… ({value["$size"]} bytes)</i></div>')  # fmt: skip
    if isinstance(value, dict | list):
        items = value.items() if isinstance(value, dict) else enumerate(value)
        inner = "".join(state_tree(v, str(k), depth + 1) for k, v in items)
        kind = f"{{{len(value)}}}" if isinstance(value, dict) else f"[{len(value)}]"
        opened = " open" if depth < 2 else ""
        return f"<details{opened}><summary><b>{esc(name)}</b> {kind}</summary>{inner}</details>"
    text = orjson.dumps(value, default=str).decode()
    return f"<div class=leaf><b>{esc(name)}</b>: <code>{esc(text)}</code></div>"


def _actions(run: dict[str, Any], csrf: str, steps: dict[str, dict[str, Any]], root: str) -> str:
    rid = esc(run_url(root, run["request_id"]))
    token = f'<input type=hidden name=csrf value="{esc(csrf)}">'
    options = "".join(f"<option>{esc(s)}</option>" for s in steps)
    forms = (
        f'<form method=post action="{rid}/resume" class=action>{token}'
        "<button name=go value=resume>resume</button></form>"
        f'<form method=post action="{rid}/resume" class=action>{token}'
        f"<label>from step <select name=from_step>{options}</select></label>"
        "<label>set (key=value lines) <textarea name=set rows=2></textarea></label>"
        "<label><input type=checkbox name=dry_run value=1 checked> preview only</label>"
        "<button>resume from step</button></form>"
    )
    waiting = run.get("waiting_step")
    if run["status"] == "suspended" and waiting:
        schema = steps.get(waiting, {}).get("schema") or {}
        fields = (
            "".join(
                f'<label>{esc(prop)} <input name="in.{esc(prop)}" '
                f"{'type=number step=any' if spec.get('type') in ('number', 'integer') else ''}>"
                "</label>"
                for prop, spec in (schema.get("properties") or {}).items()
                if isinstance(spec, dict)
            )
            or "<label>input (JSON) <textarea name=input rows=3></textarea></label>"
        )
        forms += (
            f'<form method=post action="{rid}/input" class="action answer">{token}'
            f"<p>waiting at <b>{esc(waiting)}</b></p>{fields}"
            "<label>token <input name=token required></label><button>answer</button></form>"
        )
    return f"<section class=actions><h2>actions</h2>{forms}</section>"


def run_page(
    run: dict[str, Any],
    state: dict[str, Any] | None,
    diff: dict[str, Any] | None,
    *,
    csrf: str,
    steps: dict[str, dict[str, Any]],
    read_only: bool,
    root: str,
    notice: str = "",
) -> str:
    rid = run["request_id"]
    held = run.get("held_by")
    facts = [
        f'<p class=status>status <b id=status class="st-{esc(run["status"])}">'
        f"{esc(run['status'])}</b> · workflow {esc(run['workflow'])} {esc(run['version'])}"
        f" · attempt {esc(run['attempt'])}</p>"
    ]
    if held:
        facts.append(f"<p class=held>being run by {esc(held['owner'])}</p>")
    if run["error"]:
        facts.append(
            f"<pre class=error>{esc(run['failed_step'] or 'run')}: {esc(run['error'])}</pre>"
        )
    if run.get("trace"):
        facts.append(
            f"<details class=trace><summary>traceback</summary><pre>{esc(run['trace'])}</pre>"
            "</details>"
        )
    if notice:
        facts.append(f"<p class=notice>{esc(notice)}</p>")
    for child in run["children"]:
        facts.append(f'<p>child <a href="{esc(run_url(root, child["request_id"]))}">'
                     f'{esc(child["request_id"])}</a> {esc(child["status"])}</p>')  # fmt: skip
    rows = "".join(
        f'<tr><td><a href="?seq={c["seq"]}">#{c["seq"]}</a></td><td>{esc(c["step"])}</td>'
        f"<td>{esc(c['status'])}</td><td>{c['attempt']}</td><td>{when(c['time'])}</td>"
        f"<td>{c['duration'] * 1000:.1f} ms</td><td>{c['size']} B</td></tr>"
        for c in run["checkpoints"]
    )
    body = "".join(facts) + "<h2>timeline</h2>" + _timeline(run["timeline"])
    body += (
        "<h2>checkpoints</h2><table id=checkpoints><thead><tr><th>#</th><th>step</th>"
        "<th>status</th><th>attempt</th><th>time (UTC)</th><th>duration</th><th>size</th>"
        f"</tr></thead><tbody>{rows}</tbody></table>"
        "<form class=diff method=get><label>diff #<input name=a size=3></label>"
        "<label>with #<input name=b size=3></label><button>diff</button></form>"
    )
    if diff is not None:
        lines = "\n".join(diff["lines"]) or "(no change)"
        body += f"<h2>diff #{diff['a']} → #{diff['b']}</h2><pre class=diff>{esc(lines)}</pre>"
    if state is not None:
        body += (f'<h2>state at #{state["seq"]} ({esc(state["step"])})</h2>'
                 f'<div class=state>{state_tree(state["vars"])}</div>')  # fmt: skip
    if not read_only:
        body += _actions(run, csrf, steps, root)
    return layout(rid, body, root=root, refresh="run")
