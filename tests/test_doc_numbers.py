"""The numbers in README.md and docs/performance.md come from committed result files
(scripts/doc_numbers.py): a documented number that differs from its source fails here."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from genbench import PROJECT_ROOT

SCRIPT = PROJECT_ROOT / "scripts" / "doc_numbers.py"
spec = importlib.util.spec_from_file_location("doc_numbers", SCRIPT)
doc_numbers = importlib.util.module_from_spec(spec)
sys.modules["doc_numbers"] = doc_numbers
spec.loader.exec_module(doc_numbers)


def test_documented_numbers_match_their_sources(capsys: pytest.CaptureFixture[str]) -> None:
    """`doc_numbers.py --check` over the real docs: every generated block equals its rendering."""
    assert doc_numbers.main(["--check"]) == 0, capsys.readouterr().err
    readme = (PROJECT_ROOT / "README.md").read_text()
    # the README's main table is one of the generated blocks, and its source is committed
    specs = [m["spec"] for m in doc_numbers.BLOCK.finditer(readme)]
    assert any(s.startswith("leaderboard source=docs/results/") for s in specs), specs
    for s in specs:
        for source in re.findall(r"source=(\S+)", s):
            assert (PROJECT_ROOT / source).is_file(), source
            if (PROJECT_ROOT / ".git").exists():  # in a checkout: committed, not only on this disk
                git = ["git", "ls-files", "--error-unmatch", source]
                assert subprocess.run(git, cwd=PROJECT_ROOT, capture_output=True).returncode == 0, source


def _cells(table: str, label_prefix: str) -> list[str]:
    row = next(line for line in table.splitlines() if line.startswith(f"| {label_prefix}"))
    return [c.strip().strip("*") for c in row.strip("|").split("|")]


def test_readme_table_numbers_against_the_json_independently() -> None:
    """Read the README's table as a user would (numbers in cells, thousands separators, percent,
    a real minus sign) and compare every value with the leaderboard.json value to within half a unit
    of the last printed digit: a renderer that swapped, scaled or mis-rounded a column fails."""
    readme = (PROJECT_ROOT / "README.md").read_text()
    m = next(m for m in doc_numbers.BLOCK.finditer(readme) if m["spec"].startswith("leaderboard "))
    board = json.loads((PROJECT_ROOT / m["spec"].split("source=")[1].strip()).read_text())
    header = [c.strip() for c in m["body"].splitlines()[0].strip("|").split("|")]
    keys = {"FID ↓": "fid", "KID ↓": "kid_mean", "IS ↑": "is_mean", "recall ↑": "recall", "class KL ↓": "class_kl"}
    keys |= {"params": "num_parameters", "images seen": "images_seen", "train img/s": "train_images_per_second"}
    checked = 0
    for row in board:
        if row.get("kind") != "family":
            continue
        from genbench.registry import families

        cells = dict(zip(header, _cells(m["body"], families()[row["family"]].title), strict=True))
        for heading, key in keys.items():
            text = cells[heading].replace(",", "").replace("−", "-").replace(" %", "")
            value = row[key] * (100 if heading == "recall ↑" else 1)
            decimals = len(text.split(".")[1]) if "." in text else 0
            assert abs(float(text) - value) <= 0.5 * 10**-decimals + 1e-9, (row["family"], heading, text, value)
            checked += 1
    assert checked >= 4 * len(keys)


def test_check_fails_on_a_changed_number_and_rendering_repairs_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A copy of the README with one FID changed by hand: --check names the block and exits 1;
    the default mode rewrites it from the source, after which --check passes."""
    readme = (PROJECT_ROOT / "README.md").read_text()
    m = next(m for m in doc_numbers.BLOCK.finditer(readme) if m["spec"].startswith("leaderboard "))
    first_row = m["body"].splitlines()[2]
    fid = first_row.split("|")[2]
    changed = readme.replace(first_row, first_row.replace(fid, " 99.9 ", 1), 1)
    assert changed != readme
    copy = tmp_path / "README.md"
    copy.write_text(changed)
    assert doc_numbers.main(["--check", str(copy)]) == 1
    err = capsys.readouterr().err
    assert "leaderboard source=" in err and "differs from its source" in err
    assert copy.read_text() == changed  # check mode changes nothing
    assert doc_numbers.main([str(copy)]) == 0
    assert copy.read_text() == readme


def test_bold_marks_a_unique_best_only() -> None:
    rows = [{"fid": 3.0}, {"fid": 1.0}, {"fid": 2.0}]
    assert doc_numbers.unique_best(rows, "fid", "min") == 1
    assert doc_numbers.unique_best(rows, "fid", "max") == 0
    assert doc_numbers.unique_best([{"c": 10}, {"c": 10}, {"c": 9}], "c", "max") is None  # a tie: no bold
    assert doc_numbers.unique_best(rows, "fid", None) is None


def test_a_missing_source_is_one_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    doc = tmp_path / "doc.md"
    doc.write_text(
        "<!-- doc-numbers: leaderboard source=docs/results/nowhere/leaderboard.json -->\n<!-- /doc-numbers -->\n"
    )
    assert doc_numbers.main(["--check", str(doc)]) == 2
    assert "docs/results/nowhere/leaderboard.json does not exist" in capsys.readouterr().err
    with pytest.raises(doc_numbers.DocNumbersError, match="unknown doc-numbers renderer"):
        doc_numbers.render_block("nonsense source=x")
