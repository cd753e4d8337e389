"""The fenced blocks of README.md and docs/*.md, and running them the way a reader would.

Every block has a language, and what the language says is done with it:

``python``
    run as a program (``python block.py``) in the page's folder; it must exit 0.
``json``
    parsed; a workflow (an object with ``steps``) is checked with ``blokrun validate``.
``console``
    a shell session: each ``$ `` line is run with bash in the page's folder, and what it
    prints (stdout and stderr, in order) must match the lines under it; it must exit 0, or
    the code its ``# exit N`` comment names. Matching ignores runs of spaces, dates, times,
    durations and sizes (``2026-12-04 03:39:16``, ``0.1ms``, ``704B``); ``…`` in a line
    stands for any text, and a line that is only ``…`` for any number of lines.
``sh``
    every line is a command, run as in ``console``; what it prints is not checked.
``toml``
    parsed.
``text``
    not run: output shown without its command, diagrams. A line starting ``$ `` is refused
    (a session belongs in a ``console`` block, where it is run).

HTML comments on the lines right above a block's fence mark it:

``<!-- not-run: why -->``
    not run (counted; the reason is required).
``<!-- file: PATH -->``
    the block is written to ``PATH`` in the page's folder (later blocks use it), then
    checked as its language says (a python file is compiled, not run). When the repository
    has a file at ``PATH``, the block must equal it.
``<!-- env: NAME=VALUE ... -->``
    these variables are set for this block and every later one on the page.
``<!-- exit: N -->``
    a ``python`` block, or a workflow's ``blokrun validate``, must exit ``N`` (a sample of
    a mistake).
``<!-- output: what -->``
    on a ``text`` block: what the last ``python`` block printed must match it, as a
    ``console`` command's output does.

Each page gets its own folder holding a copy of ``examples/``, and its blocks run in order,
so a page reads as one session. The environment has no ``DATASOURCE_*`` or ``BLOKRUN_*``
variable: runs are kept by the embedded default, in the page's folder.

``python -m tests.docs.samples PAGE...`` runs the pages' blocks and prints what each command
printed, to write a sample's output from.
"""

from __future__ import annotations

import json
import os
import py_compile
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import tomllib
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]

RUN = frozenset({"python", "json", "console", "sh"})
PARSED = frozenset({"toml"})
PLAIN = frozenset({"text"})
ALIASES = {"bash": "sh", "shell": "sh", "py": "python"}
MARKERS = frozenset({"not-run", "file", "env", "exit", "output"})
TIMEOUT = 120

_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})\s*([^\s`{]*)")
_MARKER = re.compile(r"^<!--\s*([a-z-]+):\s*(.*?)\s*-->\s*$")
_EXIT = re.compile(r"#\s*exit\s+(\d+)\s*$")
_STRIPPED = ("DATASOURCE_", "BLOKRUN_", "PAYMENT_", "QUICKSTART_")
_TIME = re.compile(
    r"\d{4}-\d\d-\d\d(?:[ T]\d\d:\d\d(?::\d\d(?:\.\d+)?)?)?(?:Z|[+-]\d\d:\d\d)?(?: UTC)?"
)
_MEASURE = re.compile(r"(?<![\w.])\d+(?:\.\d+)?\s?(?:ms|µs|s|B|KB|MB|GB)\b")


@dataclass(frozen=True)
class Block:
    """One fenced block: where it is, its language, its text and the markers above it."""

    page: Path
    line: int
    lang: str
    text: str
    markers: tuple[tuple[str, str], ...] = ()

    def marker(self, name: str) -> str | None:
        return next((value for key, value in self.markers if key == name), None)

    @property
    def where(self) -> str:
        shown = self.page.relative_to(REPO) if self.page.is_relative_to(REPO) else self.page
        return f"{shown}:{self.line}"


@dataclass(frozen=True)
class Command:
    """A command of a ``console`` or ``sh`` block, the exit code and output it shows."""

    line: str
    exit: int
    expected: tuple[str, ...] | None  # None: output not checked (``sh``)


@dataclass
class Result:
    """What became of a page's blocks; ``failures`` name the block and what went wrong."""

    ran: int = 0
    parsed: int = 0
    not_run: int = 0
    failures: list[str] = field(default_factory=list)


@cache
def blocks(page: Path) -> tuple[Block, ...]:
    """The fenced blocks of ``page``, in order."""
    lines = page.read_text(encoding="utf-8").split("\n")
    found: list[Block] = []
    i = 0
    while i < len(lines):
        opening = _FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        fence, lang = opening.group(1), opening.group(2).lower()
        end = i + 1
        while end < len(lines) and not lines[end].strip().startswith(fence):
            end += 1
        text = "\n".join(lines[i + 1 : end]) + "\n"
        found.append(Block(page, i + 1, ALIASES.get(lang, lang), text, _markers(lines, i)))
        i = end + 1
    return tuple(found)


def _markers(lines: list[str], fence: int) -> tuple[tuple[str, str], ...]:
    """The ``<!-- name: value -->`` comments on the lines right above line ``fence``."""
    markers: list[tuple[str, str]] = []
    i = fence - 1
    while i >= 0 and (m := _MARKER.match(lines[i].strip())):
        markers.insert(0, (m.group(1), m.group(2)))
        i -= 1
    return tuple(markers)


def problems(block: Block) -> list[str]:
    """What is wrong with ``block`` before anything runs: its language, its markers."""
    found: list[str] = []
    if block.lang not in RUN | PARSED | PLAIN:
        found.append(
            f"language {block.lang!r}: use one of {', '.join(sorted(RUN | PARSED | PLAIN))}"
        )
    for key, value in block.markers:
        if key not in MARKERS:
            found.append(f"unknown marker {key!r}: use one of {', '.join(sorted(MARKERS))}")
        elif not value:
            found.append(f"marker {key!r} needs a value (not-run: say why)")
    if block.lang not in RUN and any(block.marker(m) is not None for m in ("file", "env", "exit")):
        found.append("file, env and exit markers go on a block that runs")
    if block.lang != "text" and block.marker("output") is not None:
        found.append("only a text block can be a program's output")
    if block.lang in PLAIN and block.marker("not-run") is not None:
        found.append("a text block is never run: drop its not-run marker")
    if block.lang in PLAIN and any(line.startswith("$ ") for line in block.text.splitlines()):
        found.append("a shell session in a text block: make it a console block, so it is run")
    return [f"{block.where}: {problem}" for problem in found]


def commands(block: Block) -> list[Command]:
    """The commands of a ``console`` or ``sh`` block (a ``\\`` at the end continues a line)."""
    groups: list[tuple[list[str], list[str]]] = []  # (the command's lines, the output shown)
    for raw in block.text.rstrip("\n").split("\n"):
        if groups and groups[-1][0][-1].endswith("\\"):
            groups[-1][0].append(raw)
        elif block.lang == "console" and raw.startswith("$ "):
            groups.append(([raw[2:]], []))
        elif block.lang == "console":
            if not groups:
                raise ValueError("output before the first '$ ' line")
            groups[-1][1].append(raw)
        elif raw.strip() and not raw.lstrip().startswith("#"):
            groups.append(([raw], []))
    found = []
    for lines, shown in groups:
        line = "\n".join(lines)
        code = _EXIT.search(line)
        expected = tuple(shown) if block.lang == "console" else None
        found.append(Command(line, int(code.group(1)) if code else 0, expected))
    return found


def normalise(line: str) -> str:
    """``line`` with dates, times, durations and sizes masked, and runs of spaces made one."""
    line = _TIME.sub("<time>", line)
    line = _MEASURE.sub("<n>", line)
    return " ".join(line.split())


def matches(expected: tuple[str, ...], actual: list[str]) -> bool:
    """Whether ``actual`` lines match the ``expected`` ones (``…`` wildcards, normalised)."""
    patterns = [None if e.strip() == "…" else _pattern(e) for e in expected]
    lines = [normalise(a) for a in actual]
    # reachable[j]: the patterns so far can match the first j lines
    reachable = [True] + [False] * len(lines)
    for pattern in patterns:
        step = [False] * (len(lines) + 1)
        for j in range(len(lines) + 1):
            if pattern is None:
                step[j] = reachable[j] or (j > 0 and step[j - 1])
            elif j > 0 and reachable[j - 1]:
                step[j] = pattern.fullmatch(lines[j - 1]) is not None
        reachable = step
    return reachable[len(lines)]


def _pattern(expected: str) -> re.Pattern[str]:
    parts = normalise(expected).split("…")
    return re.compile(".*".join(re.escape(part) for part in parts))


def environment(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment samples run in: this venv's commands first, no datasource config."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(_STRIPPED)}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


class Page:
    """One page's folder and environment; its blocks run in order with :meth:`run`."""

    def __init__(self, page: Path, root: Path, *, show: bool = False) -> None:
        self.page = page
        self.root = root
        self.show = show
        self.env: dict[str, str] = {}
        self.printed: list[str] | None = None  # what the last python block printed
        self.last: list[str] = []  # what the last command printed
        shutil.copytree(REPO / "examples", root / "examples", ignore=_ignored)

    def run(self) -> Result:
        result = Result()
        for block in blocks(self.page):
            try:
                self._one(block, result)
            except (ValueError, OSError, subprocess.TimeoutExpired) as exc:
                result.failures.append(f"{block.where}: {exc}")
        return result

    def _one(self, block: Block, result: Result) -> None:
        broken = problems(block)
        if broken:
            result.failures.extend(broken)
        elif block.marker("not-run") is not None:
            result.not_run += 1
        elif block.lang in RUN:
            self.env.update(_assignments(block.marker("env") or ""))
            failure = self._execute(block)
            if failure is not None:
                result.failures.append(f"{block.where}: {failure}")
            result.ran += 1
        elif block.lang in PARSED:
            tomllib.loads(block.text)
            result.parsed += 1
        elif block.marker("output") is not None:
            failure = self._output(block)
            if failure is not None:
                result.failures.append(f"{block.where}: {failure}")
            result.parsed += 1

    def _output(self, block: Block) -> str | None:
        if self.printed is None:
            return "no python block ran before this output"
        expected = tuple(block.text.rstrip("\n").split("\n"))
        printed, self.printed = self.printed, None
        if not matches(expected, printed):
            return "the program above printed:\n" + "\n".join(printed)
        return None

    def _execute(self, block: Block) -> str | None:
        target = block.marker("file")
        if target is not None:
            return self._file(block, target)
        if block.lang == "python":
            path = self.root / f"_sample_{block.line}.py"
            path.write_text(block.text, encoding="utf-8")
            failure = self._check(Command(f"python {path.name}", _exit(block), None))
            self.printed = self.last
            return failure
        if block.lang == "json":
            return self._json(block, self.root / f"_sample_{block.line}.json")
        for command in commands(block):
            failure = self._check(command)
            if failure is not None:
                return failure
        return None

    def _file(self, block: Block, target: str) -> str | None:
        path = self.root / target
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(block.text, encoding="utf-8")
        original = REPO / target
        if original.is_file() and not _same(block, original.read_text(encoding="utf-8")):
            return f"differs from {target} in the repository"
        if block.lang == "python":
            py_compile.compile(str(path), cfile=str(path) + "c", doraise=True)
            return None
        if block.lang == "json":
            return self._json(block, path)
        return None

    def _json(self, block: Block, path: Path) -> str | None:
        try:
            document = json.loads(block.text)
        except json.JSONDecodeError as exc:
            return f"not JSON: {exc}"
        if not (isinstance(document, dict) and "steps" in document):
            return None
        path.write_text(block.text, encoding="utf-8")
        command = f"blokrun validate {shlex.quote(str(path))}"
        return self._check(Command(command, _exit(block), None))

    def _check(self, command: Command) -> str | None:
        proc = subprocess.run(
            ["bash", "-c", command.line],
            cwd=self.root,
            env=environment(self.env),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=TIMEOUT,
        )
        actual = proc.stdout.rstrip("\n").split("\n") if proc.stdout.strip() else []
        if self.show:
            print(f"$ {command.line}  [exit {proc.returncode}]", *actual, sep="\n")
        self.last = actual
        if proc.returncode != command.exit:
            return f"`{command.line}` exited {proc.returncode}, not {command.exit}:\n{proc.stdout}"
        if command.expected is not None and not matches(command.expected, actual):
            shown = "\n".join(command.expected)
            return f"`{command.line}` printed:\n{proc.stdout}\nthe page shows:\n{shown}"
        return None


def _exit(block: Block) -> int:
    return int(block.marker("exit") or 0)


def _same(block: Block, original: str) -> bool:
    if block.lang == "json":
        return bool(json.loads(block.text) == json.loads(original))
    return block.text.strip() == original.strip()


def _assignments(text: str) -> dict[str, str]:
    pairs = (item.partition("=") for item in shlex.split(text))
    return {name: value for name, _, value in pairs}


def _ignored(folder: str, names: list[str]) -> set[str]:
    return {n for n in names if n in {"__pycache__", ".blokrun"} or n.endswith(".pyc")}


def run_page(page: Path, *, show: bool = False) -> Result:
    """Run every block of ``page`` in a fresh folder."""
    with tempfile.TemporaryDirectory(prefix="blokrun-docs-") as folder:
        return Page(page, Path(folder), show=show).run()


if __name__ == "__main__":
    for name in sys.argv[1:] or [str(p) for p in PAGES]:
        outcome = run_page(Path(name).resolve(), show=True)
        print(f"== {name}: {outcome.ran} ran, {outcome.parsed} parsed, {outcome.not_run} not run")
        print(*outcome.failures, sep="\n\n")
