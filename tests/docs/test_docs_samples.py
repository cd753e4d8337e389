"""Every code sample of README.md and docs/ runs, and shows what it really does.

The rules a block follows (its language, the markers above it) are in ``tests.docs.samples``.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.docs.samples import (
    PAGES,
    PARSED,
    REPO,
    RUN,
    Block,
    Page,
    blocks,
    commands,
    matches,
    problems,
)

#: at least this many blocks run in all (today: more); a rule that skipped them would fail
MIN_RUN = 30
#: the README stays an introduction (with the speed figures issue 18 asks for), the reference
#: lives in docs/
README_MAX_LINES = 130


def _runnable(page: Path) -> list[Block]:
    return [b for b in blocks(page) if b.lang in RUN and b.marker("not-run") is None]


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(REPO)) for p in PAGES])
def test_every_sample_of_the_page_runs_as_shown(page: Path, tmp_path: Path) -> None:
    result = Page(page, tmp_path).run()
    assert not result.failures, "\n\n".join(result.failures)
    assert result.ran == len(_runnable(page))


def test_every_block_has_a_language_and_runs_or_says_why_not() -> None:
    everything = [block for page in PAGES for block in blocks(page)]
    assert not [p for block in everything for p in problems(block)]
    runnable = [b for b in everything if b.lang in RUN and b.marker("not-run") is None]
    skipped = [b for b in everything if b.marker("not-run") is not None]
    assert len(runnable) >= MIN_RUN, f"only {len(runnable)} blocks run"
    assert all(b.marker("not-run") for b in skipped)
    assert len(skipped) < len(runnable) // 2, [b.where for b in skipped]


def test_the_readme_is_short_and_its_links_resolve() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= README_MAX_LINES
    assert readme.index("make run") < readme.index("## ")  # the two commands come first
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        for target in re.findall(r"\]\(([^)#\s]+\.md)(?:#[^)]*)?\)", text):
            assert (page.parent / target).is_file(), f"{page.name}: broken link {target}"


def _page(tmp_path: Path, text: str) -> Path:
    page = tmp_path / "page.md"
    page.write_text(text, encoding="utf-8")
    return page


@pytest.mark.parametrize(
    ("text", "wanted"),
    [
        ("```python\nraise SystemExit(3)\n```\n", "exited 3, not 0"),
        ("```console\n$ blokrun validate nowhere.json\n```\n", "exited 2, not 0"),
        ("```console\n$ echo hello\nhullo\n```\n", "the page shows:\nhullo"),
        ("```console\n$ exit 1  # exit 2\n```\n", "exited 1, not 2"),
        (
            '```json\n{"name": "w", "version": "1", "steps": [{"name": "a", "node": "x:y"}]}\n```\n',
            "exited 2, not 0",
        ),
        ("```json\n{not json\n```\n", "not JSON"),
        ("```yaml\na: 1\n```\n", "language 'yaml'"),
        ("```\nplain\n```\n", "language ''"),
        ("```text\n$ blokrun runs\n```\n", "make it a console block"),
        ("<!-- not-run: -->\n```python\npass\n```\n", "needs a value"),
        ("<!-- skip: x -->\n```python\npass\n```\n", "unknown marker 'skip'"),
        (
            '<!-- file: examples/quickstart/input.json -->\n```json\n{"order": {}}\n```\n',
            "differs from examples/quickstart/input.json",
        ),
        ("<!-- file: notes.txt -->\n```text\nnotes\n```\n", "markers go on a block that runs"),
        (
            "```python\nprint('one')\n```\n<!-- output: above -->\n```text\ntwo\n```\n",
            "printed:\none",
        ),
    ],
)
def test_a_sample_that_does_not_do_what_it_shows_fails(
    tmp_path: Path, text: str, wanted: str
) -> None:
    result = Page(_page(tmp_path, text), tmp_path / "run").run()
    assert result.failures
    assert wanted in result.failures[0]


def test_marked_blocks_are_counted_not_run(tmp_path: Path) -> None:
    text = (
        "<!-- not-run: needs a server -->\n```python\nraise SystemExit(1)\n```\n"
        "```toml\n[a]\nb = 1\n```\n"
        "<!-- env: GREETING=hello -->\n"
        '```console\n$ echo "$GREETING"\nhello\n$ test -f examples/quickstart/workflow.json\n```\n'
    )
    result = Page(_page(tmp_path, text), tmp_path / "run").run()
    assert not result.failures, result.failures
    assert (result.ran, result.parsed, result.not_run) == (1, 1, 1)


def test_console_blocks_split_into_commands_with_their_exit_codes(tmp_path: Path) -> None:
    text = "```console\n$ first --a \\\n    --b  # exit 3\nout 1\nout 2\n$ second\n```\n"
    (block,) = blocks(_page(tmp_path, text))
    first, second = commands(block)
    assert (first.line, first.exit, first.expected) == (
        "first --a \\\n    --b  # exit 3",
        3,
        ("out 1", "out 2"),
    )
    assert (second.line, second.exit, second.expected) == ("second", 0, ())


def test_output_matching_masks_only_what_changes_between_runs() -> None:
    shown = ("   1  greet   completed  2026-12-04 03:39:16      0.1ms      704B",)
    assert matches(shown, ["1 greet completed 2031-01-02 11:22:33 12.5ms 1.2KB"])
    assert not matches(shown, ["1 greet failed 2031-01-02 11:22:33 12.5ms 1.2KB"])
    assert not matches(("8 key(s)",), ["9 key(s)"])
    assert matches(('{"a":…,"z":1}', "…", "end"), ['{"a":{"b":2},"z":1}', "x", "y", "end"])
    assert matches(("start", "…"), ["start"])
    assert not matches(("start",), ["start", "more"])


def test_parsed_languages_are_not_run() -> None:
    assert not PARSED & RUN
