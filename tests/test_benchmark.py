"""The benchmark end to end on the tiny preset, the leaderboard against the runs' own files,
genbench-compare, and a benchmark in which families fail."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest

from conftest import run_cli, run_tiny_benchmark
from genbench.report.collect import find_runs
from genbench.report.leaderboard import METRICS

#: genbench's families, in display order: the benchmark's default
FAMILIES = ["gan", "vae", "ddpm", "flow_matching"]


@pytest.fixture(scope="module")
def tiny_benchmark(tmp_path_factory) -> Path:
    return run_tiny_benchmark(tmp_path_factory.mktemp("bench") / "report", tmp_path_factory.mktemp("cache"))


def test_benchmark_writes_every_artifact(tiny_benchmark: Path) -> None:
    out = tiny_benchmark
    for name in (
        "leaderboard.md",
        "leaderboard.csv",
        "leaderboard.json",
        "report.html",
        "metrics_vs_time.png",
        "metrics_vs_images.png",
        "quality_vs_steps.png",
        "quality_vs_cost.png",
        "samples_side_by_side.png",
        "real.png",
        "benchmark_config.yaml",
    ):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 5  # self-contained: images embedded
    assert 'src="http' not in html
    assert "git_commit" in html and "torch" in html and "Budget" in html
    # the protocol comes first: extractor and its accuracy, sample count, seeds, sampler, budget, machine
    protocol = html[html.index("<h2>Protocol</h2>") : html.index("<h2>Leaderboard</h2>")]
    for label in (
        "Extractor",
        "Samples per evaluation",
        "Real split",
        "Seeds",
        "Sampler",
        "Training budget",
        "Machine",
    ):
        assert f"<td>{label}</td>" in protocol, label
    assert "test accuracy" in protocol and "images: 320 training images" in protocol
    assert "<h2>Models</h2>" in html and "DCGANGenerator(" in html  # per-family architecture summary
    # sample grids enlarged to a readable cell (32-px cells drawn 2x, nearest neighbour)
    from PIL import Image

    grid = Image.open(out / "runs" / "gan" / "0" / "samples" / "final.png")
    assert Image.open(out / "grids" / "gan_samples.png").size == (2 * grid.width, 2 * grid.height)
    # and the other grids the runs hold: real images, the VAE's reconstructions, interpolations, closest pairs
    for name in ("real", "vae_recon", "gan_interp", "vae_interp", "ddpm_interp", "ddpm_pairs", "flow_matching_interp"):
        assert (out / "grids" / f"{name}.png").is_file(), name
    rows = json.loads((out / "leaderboard.json").read_text())
    assert [r["family"] for r in rows] == [*FAMILIES, "real vs real (floor)"]  # every registered family
    assert all(r["status"] == "ok" for r in rows[:4])
    ddpm = rows[2]
    assert {"ddim-4", "ddim-2", "ancestral-100"} <= set(ddpm["sampling_images_per_second"])  # <name>-<steps>
    with open(out / "leaderboard.csv") as f:
        assert [r["family"] for r in csv.DictReader(f)] == [r["family"] for r in rows]
    md = (out / "leaderboard.md").read_text()
    assert md.startswith("| family | FID ↓") and "real vs real (floor)" in md


def test_leaderboard_numbers_equal_the_runs_own_metrics(tiny_benchmark: Path) -> None:
    rows = {r["family"]: r for r in json.loads((tiny_benchmark / "leaderboard.json").read_text())}
    for family in FAMILIES:
        run = tiny_benchmark / "runs" / family / "0"
        final = json.loads((run / "eval" / "final.json").read_text())
        budget = json.loads((run / "budget.json").read_text())
        train = json.loads((run / "metrics.json").read_text())
        for key, _, _ in METRICS:
            assert math.isclose(rows[family][key], final[key], rel_tol=1e-12), (family, key)
        assert rows[family]["num_parameters"] == train["num_parameters"]
        assert rows[family]["images_seen"] == budget["images_seen"] >= budget["max_images"]
        assert rows[family]["num_samples"] == final["num_samples"] == 200
        # each family was evaluated at the budget's fractions, with the progress recorded
        history = [json.loads(line) for line in (run / "eval" / "metrics.jsonl").read_text().splitlines()]
        fractions = [h["budget_fraction"] for h in history]
        # one evaluation at each eval_at fraction ([0.5, 1.0]), in order; none before the first
        assert fractions == budget["eval_at"] == [0.5, 1.0], (family, fractions)
        assert [h["step"] for h in history] == sorted({h["step"] for h in history}), family
        assert history[-1]["images_seen"] == budget["images_seen"]
    floor = rows["real vs real (floor)"]
    assert floor["fid"] < min(rows[f]["fid"] for f in FAMILIES)


def test_compare_rebuilds_the_same_leaderboard(tiny_benchmark: Path, tmp_path: Path) -> None:
    runs = [str(tiny_benchmark / "runs" / f) for f in FAMILIES]
    r = run_cli("genbench.compare", *runs, "--out", str(tmp_path / "cmp"))
    assert r.returncode == 0, r.stderr[-2000:]
    original = [row for row in json.loads((tiny_benchmark / "leaderboard.json").read_text()) if row["seeds"]]
    rebuilt = json.loads((tmp_path / "cmp" / "leaderboard.json").read_text())
    assert rebuilt == original
    assert (tmp_path / "cmp" / "report.html").is_file()
    assert len(find_runs([runs[0]])) == 1
    # the benchmark's summary says `genbench-compare <out>/runs`: a directory of sweeps works too
    assert sorted(r.family for r in find_runs([tiny_benchmark / "runs"])) == sorted(FAMILIES)


def test_failed_families_are_reported_and_the_others_kept(tmp_path: Path) -> None:
    out, cache = tmp_path / "report", tmp_path / "cache"
    r = run_cli(
        "genbench.benchmark",
        "budget=tiny",
        "families=[gan,vae,ddpm]",
        "print_config=false",
        "floor=false",
        "wandb=true",
        f"hydra.run.dir={out}",
        f'train_overrides=["paths.cache_dir={cache}"]',
        "+family_overrides.vae=['data.image_size=20']",  # breaks while building: impossible size
        "+family_overrides.ddpm=['model.no_such_option=1']",  # breaks while composing the config
        timeout=900,
    )
    # the report is written, and the exit status says that not every family finished
    assert r.returncode == 1, r.stderr[-3000:]
    assert "2 of 3 run(s) did not finish: vae seed 0 (failed), ddpm (failed)" in r.stderr, r.stderr[-2000:]
    rows = {row["family"]: row for row in json.loads((out / "leaderboard.json").read_text())}
    assert rows["gan"]["status"] == "ok" and rows["gan"]["fid"] is not None
    assert rows["vae"]["status"] == "failed" and "image size" in rows["vae"]["errors"][0]
    assert rows["ddpm"]["status"] == "failed" and "no_such_option" in rows["ddpm"]["errors"][0]
    assert (out / "runs" / "gan" / "0" / "checkpoints" / "last.ckpt").is_file()
    assert "failed" in (out / "leaderboard.md").read_text()
    assert (out / "report.html").is_file()
    # W&B (offline here): the report run with the leaderboard table, and the training job's own run
    report_runs = list((out / "wandb").glob("offline-run-*"))
    assert len(report_runs) == 1 and list(report_runs[0].glob("run-*.wandb"))
    assert list((out / "runs" / "gan" / "0" / "wandb").glob("offline-run-*"))
    # genbench-compare of the same runs: its report too, then status 1 with the same line
    r = run_cli("genbench.compare", str(out / "runs"), "--out", str(tmp_path / "cmp"))
    assert r.returncode == 1 and (tmp_path / "cmp" / "report.html").is_file(), r.stderr[-2000:]
    assert "genbench-compare: 2 of 3 run(s) did not finish" in r.stderr
