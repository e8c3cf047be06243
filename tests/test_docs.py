"""The documentation speaks to the user: how to run things and what they give, never how the
project's own work was organised (work rounds, plans, tracker numbers, how machines were shared)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from genbench import PROJECT_ROOT

#: words that describe the project's own process rather than the user's runs
PROCESS_WORDS = re.compile(r"\bround \d|\bblueprint|\bissue #|\bloan|\bborrow|\bdevice tool\b", re.IGNORECASE)


def user_facing_files() -> list[Path]:
    """README.md, docs/*.md and every config under conf/."""
    return [PROJECT_ROOT / "README.md", *sorted((PROJECT_ROOT / "docs").glob("*.md"))] + sorted(
        (PROJECT_ROOT / "conf").rglob("*.yaml")
    )


@pytest.mark.parametrize("path", user_facing_files(), ids=lambda p: str(p.relative_to(PROJECT_ROOT)))
def test_no_process_words_in_user_facing_text(path: Path) -> None:
    found = [
        f"{path.relative_to(PROJECT_ROOT)}:{n}: {line.strip()}"
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if PROCESS_WORDS.search(line)
    ]
    assert not found, "write for the user (how to run it, what it gives):\n" + "\n".join(found)


def test_the_check_finds_what_it_looks_for() -> None:
    for text in ("Round 1 found", "the blueprint says", "see issue #11", "one GPU loan", "borrowing the GPU"):
        assert PROCESS_WORDS.search(text), text
    for text in ("3 rounds, interleaved", "pytorch/pytorch#171622", "around 2 minutes", "rounding errors"):
        assert PROCESS_WORDS.search(text) is None, text
