"""A new user's first session with blokrun, performed for real, written as a docs page.

``python -m scripts.first_session docs/first-session.md`` (``make docs`` runs it) writes two
files and runs the commands of a first session in a temporary folder -- validate, a run that
fails half-way, ``runs``, ``inspect``, the fix, ``resume``, ``runs`` -- then renders the
files, the commands and what they printed into the page. What changes from one session to
the next is replaced (the random request id, times, durations, sizes, the folder), so the
page is the same every time unless blokrun's behaviour or output changed.

When the page on disk differs from the one rendered, it is rewritten and the command exits
1: commit the page with the change that changed it. ``tests/docs/test_transcript.py`` checks
the same, so the page cannot drift from the product.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import textwrap
from dataclasses import dataclass
from pathlib import Path

WORKFLOW = """\
{
  "name": "word-report",
  "version": "1.0.0",
  "description": "Greet, count the words of notes.txt, summarise.",
  "steps": [
    {"name": "greet", "node": "echo", "inputs": {"message": "Hello, ${ctx.vars.name}"}},
    {"name": "count-words", "node": "report_steps:count_words", "inputs": {"path": "notes.txt"}},
    {"name": "summarise", "node": "report_steps:summarise",
     "inputs": {"who": "${ctx.vars.name}", "words": "${ctx.vars.count-words.words}"}}
  ]
}
"""

STEPS = '''\
"""The functions report.json names (``"node": "report_steps:count_words"``)."""

from pathlib import Path
from typing import Any

from blokrun import Context


async def count_words(ctx: Context, inputs: dict[str, Any]) -> dict[str, Any]:
    text = Path(inputs["path"]).read_text(encoding="utf-8")
    return {"words": len(text.split())}


def summarise(ctx: Context, inputs: dict[str, Any]) -> str:
    # a plain function is fine too: blokrun runs it in a worker thread
    return f"{inputs['who']} wrote {inputs['words']} words"
'''


@dataclass(frozen=True)
class Step:
    """A part of the session: a heading, what the user thinks, the commands they type."""

    title: str
    prose: str
    commands: tuple[str, ...]


SESSION = (
    Step(
        "Check the workflow",
        "`validate` loads the file as `run` would — every field, expression and node import "
        "— and runs nothing.",
        ("blokrun validate report.json",),
    ),
    Step(
        "Run it",
        "There is no `notes.txt` yet, so the second step fails. The first step's checkpoint "
        "is stored (in `./.blokrun`: no server, nothing to configure), and blokrun says how "
        "to continue.",
        ('blokrun run report.json --input \'{"name": "Ada"}\'',),
    ),
    Step(
        "Look at what is stored",
        "`runs` lists every run, newest first; `inspect` shows one run's checkpoints.",
        ("blokrun runs", "blokrun inspect {id}"),
    ),
    Step(
        "Fix the cause and resume",
        "`resume` continues after the last checkpoint and prints the run's final vars. "
        "`greet` did not run again: its only checkpoint is attempt 1's.",
        (
            "echo 'four words of notes' > notes.txt",
            "blokrun resume {id}",
            "blokrun runs",
            "blokrun inspect {id}",
        ),
    ),
)

#: what stands for the run's random id on the page (as long as a real one)
SHOWN_ID = "AbCdEfGhIjKlMnOpQrStUv"
_ID = re.compile(r"blokrun resume ([A-Za-z0-9_-]{22})\b")
_TIME = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d")
_DATE = re.compile(r"\d{4}-\d\d-\d\d")
#: a right-aligned duration or size, with the spaces before it (their width is kept)
_MEASURE = re.compile(r" +\d+(?:\.\d+)?(ms|s|B|KB|MB)(?=\s|$)")
_SHOWN_MEASURE = {"ms": "n.nms", "s": "n.ns", "B": "nnnB", "KB": "n.nKB", "MB": "n.nMB"}


@dataclass(frozen=True)
class Transcript:
    """What one command printed (stdout and stderr, in order) and its exit code."""

    command: str
    output: str
    code: int


def environment() -> dict[str, str]:
    """A new user's environment: this venv's ``blokrun`` on PATH, no blokrun settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATASOURCE_", "BLOKRUN_"))}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONUNBUFFERED"] = "1"
    return env


def perform(folder: Path) -> tuple[list[list[Transcript]], str]:
    """Write the files and run the session in ``folder``: each step's transcripts, the id."""
    (folder / "report.json").write_text(WORKFLOW, encoding="utf-8")
    (folder / "report_steps.py").write_text(STEPS, encoding="utf-8")
    env = environment()
    run_id = ""
    done: list[list[Transcript]] = []
    for step in SESSION:
        done.append([])
        for command in step.commands:
            line = command.replace("{id}", run_id)
            proc = subprocess.run(
                ["bash", "-c", line],
                cwd=folder,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                timeout=120,
            )
            found = _ID.search(proc.stdout)
            run_id = found.group(1) if found and not run_id else run_id
            done[-1].append(Transcript(command, proc.stdout, proc.returncode))
    if not run_id:
        raise RuntimeError("the failed run printed no 'blokrun resume ID' line")
    return done, run_id


def normalise(text: str, run_id: str, folder: Path) -> str:
    """``text`` with what changes from one session to the next replaced, widths kept."""
    text = text.replace(str(folder), "~/first-steps").replace(run_id, SHOWN_ID)
    text = _TIME.sub("YYYY-MM-DD hh:mm:ss", text)
    text = _DATE.sub("YYYY-MM-DD", text)
    return _MEASURE.sub(_measure, text)


def _measure(match: re.Match[str]) -> str:
    shown = _SHOWN_MEASURE[match.group(1)]
    return shown.rjust(len(match.group(0))) if len(match.group(0)) > len(shown) else " " + shown


def render() -> str:
    """The page: the session performed now, in a temporary folder."""
    with tempfile.TemporaryDirectory(prefix="blokrun-first-session-") as name:
        folder = Path(name).resolve()
        done, run_id = perform(folder)
        parts = [_HEADER.format(id=SHOWN_ID)]
        for number, (step, transcripts) in enumerate(zip(SESSION, done, strict=True), 2):
            prose = textwrap.fill(step.prose, width=92)
            parts.append(f"## {number}. {step.title}\n\n{prose}\n\n{_NOT_RUN}\n```console\n")
            for t in transcripts:
                command = t.command.replace("{id}", SHOWN_ID)
                shown = command + (f"  # exit {t.code}" if t.code else "")
                parts.append(f"$ {shown}\n{normalise(t.output, run_id, folder)}")
            parts.append("```\n\n")
        return "".join(parts).rstrip("\n") + "\n"


_NOT_RUN = (
    "<!-- not-run: the transcript's commands; scripts/first_session.py runs them, "
    "tests/docs/test_transcript.py checks this page -->"
)

_HEADER = f"""# A first session

<!-- Written by `python -m scripts.first_session docs/first-session.md` (`make docs`): do not
edit by hand. -->

A new user's first session, performed for real by `scripts/first_session.py` each time the
docs are built: every command below ran, and printed what is shown under it (stdout and
stderr, in order; a non-zero exit code is shown after the command). What changes from one
session to the next is replaced: the run's random id is shown as
`{{id}}`, times as `YYYY-MM-DD hh:mm:ss`, durations and sizes as `n.nms` and
`nnnB`.

## 1. Write the steps and a workflow

In an empty folder, a module of step functions — plain Python, nothing to register:

<!-- file: report_steps.py -->
```python
{STEPS.replace("{", "{{").replace("}", "}}")}```

and a workflow file beside it: three steps, the first a built-in, the other two the
functions above:

<!-- file: report.json -->
```json
{WORKFLOW.replace("{", "{{").replace("}", "}}")}```

"""


def main(argv: list[str]) -> int:
    """Write the page to ``argv[0]``; 1 when it was there and differed (commit the new one)."""
    if len(argv) != 1:
        print("usage: python -m scripts.first_session PAGE.md", file=sys.stderr)
        return 2
    page = Path(argv[0])
    text = render()
    old = page.read_text(encoding="utf-8") if page.exists() else None
    if old == text:
        return 0
    page.write_text(text, encoding="utf-8")
    if old is None:
        return 0
    print(
        f"{page}: out of date with what blokrun prints now; rewritten: review and commit it",
        file=sys.stderr,
    )
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
