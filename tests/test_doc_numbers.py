"""The numbers in README.md and docs/*.md come from committed result files
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


# ------------------------------------------------------------------------------------------------
# the verdict renderer: the report's own verdict of a committed leaderboard
# ------------------------------------------------------------------------------------------------
COMMITTED_BOARDS = sorted((PROJECT_ROOT / "docs" / "results").glob("*/leaderboard.json"))
#: the boards that rank families (two or more): a one-family run has no order to check
RANKED_BOARDS = [b for b in COMMITTED_BOARDS if sum(r.get("kind") == "family" for r in json.loads(b.read_text())) >= 2]


@pytest.mark.parametrize("board", RANKED_BOARDS, ids=lambda p: p.parent.name)
def test_verdict_block_is_the_reports_verdict_of_the_committed_leaderboard(board: Path) -> None:
    """The block is the report code's sentences for the same rows, one bullet each; the sentences
    that need run histories (which a leaderboard has not) are left out, not stated as missing."""
    from genbench.report.verdict import verdict

    rows = json.loads(board.read_text())
    source = board.relative_to(PROJECT_ROOT).as_posix()
    body = doc_numbers.render_block(f"verdict source={source}")
    sentences = verdict(rows, None)
    assert body == "".join(f"- {s}\n" for s in sentences)
    # with runs (here: none with an evaluation history) the report adds the history sentences;
    # everything else is the same text in the same order
    with_runs = verdict(rows, [])
    assert [s for s in with_runs if s in sentences] == sentences
    extra = [s for s in with_runs if s not in sentences]
    assert extra and all(s.startswith(("Training cost", "FID against training time")) for s in extra)
    # independently of the report code: the quality sentence orders the families by their FID
    families = sorted(
        (r for r in rows if r.get("kind") == "family" and r.get("fid") is not None), key=lambda r: r["fid"]
    )
    quality = next(s for s in sentences if s.startswith("Quality"))
    listing = quality[quality.index("(", quality.index("better")) :]
    positions = [listing.index(f"{r['family']} {r['fid']:.1f}") for r in families]
    assert positions == sorted(positions), quality
    assert quality.split(":", 1)[1].strip().startswith(f"{families[0]['family']} leads"), quality


def test_verdict_of_a_changed_leaderboard_changes(tmp_path: Path) -> None:
    """Nothing in the verdict is typed: swap two families' FIDs and the leader changes."""
    from genbench.report.verdict import verdict

    rows = json.loads(COMMITTED_BOARDS[0].read_text())
    fam = [r for r in rows if r.get("kind") == "family" and r.get("fid") is not None]
    best = min(fam, key=lambda r: r["fid"])
    worst = max(fam, key=lambda r: r["fid"])
    best["fid"], worst["fid"] = worst["fid"], best["fid"]
    quality = verdict(rows, None)[0]
    assert quality.split(":", 1)[1].strip().startswith(f"{worst['family']} leads"), quality


# ------------------------------------------------------------------------------------------------
# the inline value renderer
# ------------------------------------------------------------------------------------------------
def test_lookup_follows_names_indices_and_selectors() -> None:
    data = {
        "rows": [
            {"family": "gan", "threads": 1, "r": 2.0},
            {"family": "gan", "threads": 2, "r": 1.0},
            {"family": "vae", "threads": 1, "r": 1.5},
        ],
        "load": [6.4, 4.6],
    }
    assert doc_numbers.lookup(data, "rows.[family=gan,threads=2].r") == 1.0
    assert doc_numbers.lookup(data, "rows.[family=vae].r") == 1.5
    assert doc_numbers.lookup(data, "load.1") == 4.6
    assert doc_numbers.lookup(data, "rows.2.family") == "vae"
    with pytest.raises(doc_numbers.DocNumbersError, match="2 items match"):
        doc_numbers.lookup(data, "rows.[family=gan].r")
    with pytest.raises(doc_numbers.DocNumbersError, match="no 'speed'"):
        doc_numbers.lookup(data, "rows.0.speed")
    with pytest.raises(doc_numbers.DocNumbersError, match="outside a list of 2"):
        doc_numbers.lookup(data, "load.5")


def test_value_formats_scales_and_signs() -> None:
    board = "docs/results/2026-12-05-cpu/leaderboard.json"
    rows = json.loads((PROJECT_ROOT / board).read_text())
    floor = next(r for r in rows if r["kind"] == "floor")
    text = doc_numbers.render_block(f"value source={board} key=[kind=floor].recall scale=100 format={{:.1f}}", True)
    assert text == f"{round(100 * floor['recall'], 1):.1f}"
    vae = next(r for r in rows if r.get("family") == "vae")
    text = doc_numbers.render_block(f"value source={board} key=[family=vae].images_seen format={{:,.0f}}", True)
    assert int(text.replace(",", "")) == round(vae["images_seen"])
    assert doc_numbers.render_block(f"value source={board} key=[kind=floor].kid_mean format={{:.3f}}", True) == (
        f"{floor['kid_mean']:.3f}".replace("-", "−")
    )
    with pytest.raises(doc_numbers.DocNumbersError, match="unknown option"):
        doc_numbers.render_block(f"value source={board} key=[kind=floor].fid digits=2", True)
    with pytest.raises(doc_numbers.DocNumbersError, match="needs key="):
        doc_numbers.render_block(f"value source={board}", True)


def _inline_blocks() -> list[tuple[str, re.Match[str]]]:
    found = []
    for name in doc_numbers.DOCS:
        for m in doc_numbers.BLOCK.finditer((PROJECT_ROOT / name).read_text()):
            if not m["newline"]:
                found.append((name, m))
    return found


def test_every_inline_number_read_back_matches_its_json_value() -> None:
    """Each inline number of the docs, read as a user reads it, equals the JSON value (times its
    scale) to within half a unit of its last printed digit; and there are inline numbers at all."""
    blocks = _inline_blocks()
    assert len(blocks) >= 10
    for name, m in blocks:
        args = dict(a.split("=", 1) for a in m["spec"].split()[1:])
        data = json.loads((PROJECT_ROOT / args["source"]).read_text())
        value = doc_numbers.lookup(data, args["key"]) * float(args.get("scale", 1))
        text = m["body"].replace(",", "").replace("−", "-")
        decimals = len(text.split(".")[1]) if "." in text else 0
        assert abs(float(text) - value) <= 0.5 * 10**-decimals + 1e-9, (name, m["spec"], text, value)


def test_an_inline_number_changed_by_hand_fails_and_is_repaired(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Inside a sentence: --check names it, rendering restores it and leaves the sentence around it
    (no line break added, the text after the closing marker unchanged)."""
    board = "docs/results/2026-12-05-cpu/leaderboard.json"
    fid = json.loads((PROJECT_ROOT / board).read_text())[0]["fid"]
    marker = f"<!-- doc-numbers: value source={board} key=0.fid format={{:.1f}} -->"
    right = f"The first row scored FID {marker}{fid:.1f}<!-- /doc-numbers --> on 1,000 samples.\n"
    doc = tmp_path / "doc.md"
    doc.write_text(right.replace(f"{fid:.1f}<", "12.3<"))
    assert doc_numbers.main(["--check", str(doc)]) == 1
    assert "value source=" in capsys.readouterr().err
    assert doc_numbers.main([str(doc)]) == 0
    assert doc.read_text() == right
    assert doc_numbers.main(["--check", str(doc)]) == 0


def test_perf_precision_table_cells_are_the_json_rows() -> None:
    source = "docs/results/2026-12-05-cpu-perf-precision/precision.json"
    rows = json.loads((PROJECT_ROOT / source).read_text())["rows"]
    lines = [
        line
        for line in doc_numbers.render_block(f"perf-precision source={source}").splitlines()
        if line.startswith("| ") and not line.startswith("| family")
    ]
    assert len(lines) == len(rows)
    for line, row in zip(lines, rows, strict=True):
        cells = [c.strip().strip("*") for c in line.strip("|").split("|")]
        assert cells[0] == row["family"] and int(cells[1]) == row["threads"]
        assert abs(float(cells[5]) - row["fp32_images"]) <= 0.05 + 1e-9
        assert abs(float(cells[7].split()[0].strip("*")) - row["ratio_median"]) <= 0.005 + 1e-9


@pytest.mark.parametrize(
    "record", sorted((PROJECT_ROOT / "docs" / "results" / "tuning").glob("*.json")), ids=lambda p: p.stem
)
def test_tuning_row_is_the_searchs_record(record: Path) -> None:
    """A family's search row: its trial count, the hand-set trial's and the smallest objective of the
    record's trials (recomputed here from the trials, not read from the record's own summary), and
    with a time check the finalists' values under it and the preset: the finalist that scored lowest."""
    data = json.loads(record.read_text())
    (row,) = doc_numbers.render_tuning([str(record.relative_to(PROJECT_ROOT))])[2:]
    cells = [c.strip() for c in row.strip("|").split("|")]
    values = [t["value"] for t in data["trials"] if t["value"] is not None]
    finished = [t for t in data["trials"] if t["state"] in ("COMPLETE", "FAIL", "PRUNED")]
    hand = [t["value"] for t in data["trials"] if t.get("hand_set")]
    assert int(cells[1]) == len(finished)
    assert cells[5] == f"{min(values):.1f}"
    assert len(hand) == 1 and cells[4] == f"{hand[0]:.1f}" and min(values) <= hand[0]
    check = data.get("time_check")
    if check is None:
        assert cells[6] == "–"
        return
    finalists = {f["search_trial"]: f for f in check["finalists"]}
    best = min((t for t in data["trials"] if t["value"] is not None), key=lambda t: t["value"])
    hand_trial = next(t for t in data["trials"] if t.get("hand_set"))
    assert cells[6] == f"{finalists[hand_trial['number']]['value']:.1f} / {finalists[best['number']]['value']:.1f}"
    winner = min((f for f in check["finalists"] if f["value"] is not None), key=lambda f: f["value"])
    assert data["chosen"]["number"] == winner["search_trial"]
    assert (cells[7] == "the hand-set preset") == winner["hand_set"]
