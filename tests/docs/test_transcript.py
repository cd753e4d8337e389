"""docs/first-session.md is what a first session prints today (scripts/first_session.py)."""

from __future__ import annotations

import difflib
from pathlib import Path

import pytest

from scripts import first_session
from tests.docs.samples import REPO

PAGE = REPO / "docs" / "first-session.md"


def test_the_first_session_page_is_what_blokrun_prints_now() -> None:
    fresh = first_session.render()
    committed = PAGE.read_text(encoding="utf-8")
    diff = "".join(
        difflib.unified_diff(
            committed.splitlines(keepends=True),
            fresh.splitlines(keepends=True),
            "docs/first-session.md (committed)",
            "a first session now",
        )
    )
    assert not diff, f"regenerate with `make docs` and commit it:\n{diff}"


def test_the_session_fails_half_way_then_resumes_without_running_a_step_twice() -> None:
    text = PAGE.read_text(encoding="utf-8")
    assert "# exit 1\nblokrun: run failed:" in text
    assert "status completed  attempt 2" in text
    greet = [line for line in text.splitlines() if line.startswith("   1  greet ")]
    assert len(greet) == 2 and all(" completed        1 " in line for line in greet)


def test_a_stale_page_is_rewritten_and_the_command_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(first_session, "render", lambda: "# now\n")
    page = tmp_path / "first-session.md"
    assert first_session.main([str(page)]) == 0  # a new page is written
    assert page.read_text(encoding="utf-8") == "# now\n"
    assert first_session.main([str(page)]) == 0  # unchanged
    page.write_text("# then\n", encoding="utf-8")
    assert first_session.main([str(page)]) == 1  # stale: rewritten, and the command fails
    assert page.read_text(encoding="utf-8") == "# now\n"
    assert first_session.main([]) == 2


def test_what_changes_between_sessions_is_replaced_keeping_columns() -> None:
    folder = Path("/tmp/blokrun-first-session-x")
    rid = "Zz9_Zz9-Zz9_Zz9-Zz9_Zz"
    line = f"   1  greet  {rid}  2026-12-04 03:39:16     12.5ms      704B  {folder}/notes.txt"
    shown = first_session.normalise(line, rid, folder)
    assert shown == (
        f"   1  greet  {first_session.SHOWN_ID}  YYYY-MM-DD hh:mm:ss      n.nms"
        "      nnnB  ~/first-steps/notes.txt"
    )
    assert len(shown.partition("  ~/")[0]) == len(line.partition(f"  {folder}")[0])  # columns
