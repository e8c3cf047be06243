"""Stability over seeds, number formatting, the verdict, and what the budget records (issue #12.4-6).

The leaderboard and verdict tests read hand-made run directories (the files a run writes, with
numbers chosen so the expected statistics are computed by hand here); the budget tests train a
tiny model for real.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import pytest
import yaml

from genbench.callbacks import TrainingBudget
from genbench.errors import GenbenchError
from genbench.report.collect import find_runs
from genbench.report.leaderboard import (
    build_leaderboard,
    format_cell,
    format_interval,
    format_value,
    markdown_table,
    summarize,
    write_leaderboard,
)
from genbench.report.stability import loss_curves, per_seed_curves
from genbench.report.verdict import curve_crossings, fid_curves, training_cost_to_fid, verdict
from genbench.train import train

T_975_2DF = 4.302652729911275  # Student t, 97.5% quantile, 2 degrees of freedom (printed tables: 4.303)


# --- hand-made run directories --------------------------------------------------------------


def make_run(
    root: Path,
    family: str,
    seed: int,
    fids: list[float],
    *,
    extra: dict[str, Any] | None = None,
    budget: dict[str, Any] | None = None,
    losses: list[float] | None = None,
    sample_ips: float = 100.0,
) -> Path:
    """A finished run directory as genbench-train leaves it: config, metrics.json, budget.json,
    sampling.json, eval/metrics.jsonl (one line per FID in ``fids``, at 1000, 2000, ... images)
    and eval/final.json (the last), and optionally csv/metrics.csv with a training loss."""
    run = root / family / str(seed)
    (run / "eval").mkdir(parents=True)
    (run / "config_resolved.yaml").write_text(yaml.safe_dump({"seed": seed, "model": {}}))
    (run / "metrics.json").write_text(json.dumps({"family": family, "num_parameters": 1000}))
    spent = {"max_images": None, "max_train_seconds": 120, "images_seen": 1000 * len(fids), "train_seconds": 120.0}
    spent |= {"cpu_seconds": 200.0, "load_avg": 1.0, "cpu_count": 2, **(budget or {})}
    (run / "budget.json").write_text(json.dumps(spent))
    (run / "sampling.json").write_text(
        json.dumps([{"sampler": "default", "steps": 1, "images_per_second": sample_ips}])
    )
    history = [
        {"fid": f, "images_seen": 1000 * (i + 1), "train_seconds": 10.0 * (i + 1), "num_samples": 100, **(extra or {})}
        for i, f in enumerate(fids)
    ]
    (run / "eval" / "metrics.jsonl").write_text("".join(json.dumps(h) + "\n" for h in history))
    (run / "eval" / "final.json").write_text(json.dumps(history[-1]))
    if losses:
        (run / "csv").mkdir()
        with open(run / "csv" / "metrics.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=["step", "epoch", "train/d_loss", "val/d_loss"])
            w.writeheader()
            for i, v in enumerate(losses):
                w.writerow({"step": i, "epoch": 0, "train/d_loss": v, "val/d_loss": ""})
    return run


@pytest.fixture
def three_seed_runs(tmp_path: Path) -> Path:
    """GAN and VAE, 3 seeds each: the GAN's final FIDs 10, 12, 14 (mean 12, s 2), the VAE's
    30, 31, 32 (mean 31, s 1); the VAE has bits/dim, the GAN says it has no likelihood."""
    for seed, (g, v) in enumerate(zip([10.0, 12.0, 14.0], [30.0, 31.0, 32.0], strict=True)):
        gan_extra = {"likelihood": "none (implicit model: no likelihood)", "classes_covered": 6, "class_kl": 0.5}
        make_run(tmp_path, "gan", seed, [25.0, g], extra=gan_extra, losses=[1.0, 0.5, 2.0], sample_ips=5000.0)
        vae_extra = {"bpd": 4.0 + seed / 10, "classes_covered": 10, "class_kl": 0.05, "memorised_frac": 0.01}
        make_run(tmp_path, "vae", seed, [35.0, v], extra=vae_extra, budget={"load_avg": 20.0}, sample_ips=9000.0)
    return tmp_path


# --- statistics over seeds ------------------------------------------------------------------


def test_summary_is_mean_sample_std_and_student_t_interval() -> None:
    s = summarize([10.0, 12.0, 14.0])
    assert s["mean"] == 12.0 and math.isclose(s["std"], 2.0)  # sqrt(((-2)^2 + 0 + 2^2) / (3 - 1))
    half = T_975_2DF * 2.0 / math.sqrt(3)  # 4.968
    assert s["ci"] == pytest.approx([12.0 - half, 12.0 + half], rel=1e-9)
    assert s["range"] == 4.0 and math.isclose(s["cv"], 2.0 / 12.0) and s["n"] == 3
    # two seeds: t = 12.71, so the interval of a non-negative measure is clipped at 0
    T_975_1DF = 12.706204736174698
    assert summarize([0.0, 10.0], bounds=(0.0, None))["ci"] == pytest.approx([0.0, 5.0 + T_975_1DF * 5.0])
    assert summarize([0.9, 1.0], bounds=(0.0, 1.0))["ci"][1] == 1.0  # a fraction stays <= 100%
    one = summarize([7.0, None, float("nan")])  # missing and non-finite values are not seeds
    assert one == {"mean": 7.0, "std": None, "ci": None, "n": 1, "range": None, "cv": None}


def test_leaderboard_rows_carry_intervals_spread_new_keys_and_load(three_seed_runs: Path) -> None:
    rows = build_leaderboard(find_runs([three_seed_runs / "gan", three_seed_runs / "vae"]))
    assert [r["family"] for r in rows] == ["gan", "vae", "spread"]
    gan, vae, spread = rows
    half = T_975_2DF * 2.0 / math.sqrt(3)
    assert gan["fid"] == 12.0 and gan["fid_ci"] == pytest.approx([12 - half, 12 + half]) and gan["fid_n"] == 3
    assert vae["bpd"] == pytest.approx(4.1) and vae["bpd_std"] == pytest.approx(0.1)
    assert gan["classes_covered"] == 6 and vae["classes_covered"] == 10 and vae["memorised_frac"] == 0.01
    assert "bpd" not in gan and format_cell(gan, "bpd") == "no likelihood"  # stated, not blank
    assert spread["by_family"]["gan"]["fid"]["range"] == 4.0 and spread["fid"] == "gan 4.0 · vae 2.0"
    # the VAE's time budget ran at load 20 on 2 cores: warned; the GAN (load 1) is not
    assert gan["load_warning"] is None and "load 20.0 on 2 cores" in vae["load_warning"]
    assert vae["cpu_seconds"] == 200.0 and vae["cpu_count"] == 2 and gan["budget_kind"] == "time"
    assert gan["sample_images_per_second"] == 5000.0 and gan["sampler"] == "default"
    md = markdown_table(rows)
    assert "| spread |" in md and "no likelihood" in md and "⚠ loaded machine" in md
    assert "classes covered ↑" in md and "bpd ↓ (bits/dim)" in md


def test_one_seed_has_no_interval_and_no_spread_row(tmp_path: Path) -> None:
    make_run(tmp_path, "vae", 0, [20.0], budget={"max_train_seconds": None, "max_images": 3000, "load_avg": 30.0})
    (row,) = build_leaderboard(find_runs([tmp_path / "vae"]))
    assert row["fid_std"] is None and row["fid_ci"] is None and row["stability_note"].startswith("1 seed")
    assert row["budget_kind"] == "images" and row["load_warning"] is None  # an image budget is unaffected
    assert format_interval("fid", row["fid_ci"]) == "–"


def test_leaderboard_files_keep_interval_columns(three_seed_runs: Path, tmp_path: Path) -> None:
    rows = build_leaderboard(find_runs([three_seed_runs / "gan"]))
    paths = write_leaderboard(rows, tmp_path / "out")
    with open(paths["csv"]) as f:
        gan = next(csv.DictReader(f))
    half = T_975_2DF * 2.0 / math.sqrt(3)
    low, high = float(gan["fid_ci_low"]), float(gan["fid_ci_high"])
    assert (low, high) == pytest.approx((12 - half, 12 + half))


# --- number formatting (#10.6) --------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "value", "std", "text"),
    [
        ("is_mean", 1.0234, None, "1.02"),  # was "1"
        ("kid_mean", 4847168.0, None, "4.85e+06"),  # was "4,847,168"
        ("kid_mean", 0.00123, 0.0004, "1.23e-03 ± 4.00e-04"),
        ("fid", 161.234, 3.21, "161.2 ± 3.2"),
        ("fid", 1234.56, None, "1,234.6"),
        ("precision", 0.4567, None, "45.7%"),
        ("recall", 1.0, None, "100.0%"),
        ("memorised_frac", 0.0123, None, "1.2%"),
        ("bpd", 3.14159, 0.0123, "3.142 ± 0.012"),
        ("class_kl", 0.05, None, "0.050"),
        ("classes_covered", 7, None, "7"),
        ("classes_covered", 7.333, None, "7.3"),
        ("images_seen", 212608, None, "212,608"),
        ("load_avg", 19.84, None, "19.8"),
        ("cpu_seconds", 1234.4, None, "1,234"),
        ("sample_images_per_second", 0.512, None, "0.512"),
        ("sample_images_per_second", 2817.4, None, "2,817"),
        ("fid", None, None, "–"),
        ("fid", float("nan"), None, "–"),
        ("likelihood", "none (implicit model: no likelihood)", None, "none (implicit model: no likelihood)"),
    ],
)
def test_format_value(key: str, value: Any, std: Any, text: str) -> None:
    assert format_value(key, value, std) == text


# --- the per-seed curves ----------------------------------------------------------------------


def test_per_seed_curves_reads_losses_and_fid_and_plots(three_seed_runs: Path, tmp_path: Path) -> None:
    runs = find_runs([three_seed_runs / "gan", three_seed_runs / "vae"])
    gan0 = next(r for r in runs if r.family == "gan" and r.seed == 0)
    assert loss_curves(gan0) == {"d_loss": [(0, 1.0), (1, 0.5), (2, 2.0)]}  # train/ only, val/ left out
    out = per_seed_curves(runs, tmp_path / "fig" / "per_seed.png")
    assert out is not None and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000
    for run in runs:
        (run.run_dir / "eval" / "metrics.jsonl").unlink()
    assert per_seed_curves([r for r in find_runs([three_seed_runs / "vae"])], tmp_path / "none.png") is None


# --- the verdict ------------------------------------------------------------------------------


def _row(family: str, fid: float, ci: list[float] | None, n: int = 3, **extra: Any) -> dict[str, Any]:
    return {"family": family, "kind": "family", "status": "ok", "fid": fid, "fid_ci": ci, "fid_n": n, **extra}


def test_verdict_names_a_clear_winner_when_intervals_are_apart() -> None:
    rows = [_row("gan", 50.0, [45.0, 55.0]), _row("vae", 80.0, [75.0, 85.0]), _row("ddpm", 20.0, [18.0, 22.0])]
    quality = verdict(rows, [])[0]
    assert quality.startswith("Quality (FID, lower is better): ddpm wins clearly")
    assert "ddpm 20.0 [18.0, 22.0], gan 50.0 [45.0, 55.0], vae 80.0 [75.0, 85.0]" in quality


def test_verdict_says_no_clear_winner_when_intervals_overlap() -> None:
    rows = [_row("gan", 50.0, [40.0, 60.0]), _row("vae", 55.0, [52.0, 58.0]), _row("ddpm", 90.0, [85.0, 95.0])]
    quality = verdict(rows, [])[0]
    assert "no clear winner between gan, vae: their 95% intervals overlap" in quality
    # change the numbers and the sentence changes: nothing is hard-coded
    rows[1].update(fid=70.0, fid_ci=[65.0, 75.0])
    assert "gan wins clearly" in verdict(rows, [])[0]


def test_verdict_with_one_seed_says_the_ranking_is_uncertain() -> None:
    rows = [_row("gan", 50.0, None, n=1), _row("vae", 40.0, None, n=1)]
    quality = verdict(rows, [])[0]
    assert "vae leads (vae 40.0, gan 50.0), from one seed, so uncertain" in quality
    assert "Stability: no ranking" in verdict(rows, [])[6] and "two seeds" in verdict(rows, [])[6]


def test_verdict_explains_a_missing_metric() -> None:
    rows = [
        _row("gan", 50.0, None, n=1, likelihood="none (implicit model: no likelihood)"),
        _row("vae", 40.0, None, n=1, bpd=4.2, bpd_n=1),
        _row("ddpm", 30.0, None, n=1),
    ]
    sentences = verdict(rows, [])
    likelihood = sentences[2]
    assert "only vae 4.200 has it" in likelihood
    assert "gan has no likelihood (implicit model: no likelihood)" in likelihood
    assert "ddpm has no `bpd` in its evaluation results" in likelihood
    assert sentences[1].startswith("Diversity/coverage: no ranking") and "Sampling cost: no ranking" in sentences[3]
    assert "Training cost to reach a given FID: no ranking" in sentences[4]
    rows.append({"family": "dit", "kind": "family", "status": "failed"})
    assert verdict(rows, [])[-1] == "Not ranked: dit (no run finished; see the status column)."


def test_verdict_from_leaderboard_rows_and_training_cost(three_seed_runs: Path) -> None:
    runs = find_runs([three_seed_runs / "gan", three_seed_runs / "vae"])
    rows = build_leaderboard(runs)
    threshold, cost = training_cost_to_fid(runs)
    # the worst final FID of any run is the VAE seed 2's 32: the GAN (25, then 10-14) reaches it at
    # its 1st evaluation (1000 images), the VAE (35, then 30-32) at its 2nd (2000 images, 20 s)
    assert threshold == 32.0
    assert [c["images_seen"] for c in cost["gan"]] == [1000] * 3
    assert [(c["images_seen"], c["train_seconds"]) for c in cost["vae"]] == [(2000, 20.0)] * 3
    sentences = verdict(rows, runs)
    assert sentences[0].startswith("Quality (FID, lower is better): gan wins clearly")
    # every seed covered the same classes (std 0, a zero-width interval): a clear difference
    assert "by classes covered (higher is better) vae wins clearly" in sentences[1] and "gan 6" in sentences[1]
    assert sentences[3].startswith("Sampling cost") and "vae" in sentences[3]
    assert sentences[4].startswith("Training cost to reach FID 32.0 (the worst final FID of any run")
    assert "gan wins clearly" in sentences[4] and "(gan 1,000 images, vae 2,000 images)" in sentences[4]
    # curves: GAN 25 -> 12 (mean of 10, 12, 14), VAE 35 -> 31 at 10 s and 20 s: no crossing, and the
    # VAE's ratio to the GAN widens from 35/25 = 1.40x to 31/12 = 2.58x
    assert sentences[5] == (
        "FID against training time (mean over seeds, linear between evaluations, on the time every family "
        "covers): at 10.0 s gan 25.0, vae 35.0; at 20.0 s gan 12.0, vae 31.0; no curves cross; "
        "FID divided by 2.08 (gan), 1.13 (vae) from 10.0 s to 20.0 s; vae's FID ratio to gan widens from 1.40x to 2.58x."
    )
    # GAN cv = 2/12 = 16.7%, VAE 1/31 = 3.2%; with 3 seeds their chi-square intervals overlap
    assert sentences[6].startswith("Stability (coefficient of variation of FID over seeds") and "16.7%" in sentences[6]
    assert "no clear winner" in sentences[6]
    assert sentences[-1].startswith("Caution: vae trained under a time budget with load 20.0 on 2 cores")


def test_fid_curves_cross_where_the_later_family_catches_up(tmp_path: Path) -> None:
    """DDPM 60 -> 14 -> 8 against the GAN's 20 -> 15 -> 12 at 10, 20, 30 s: the difference
    (DDPM - GAN) goes from +40 at 10 s to -1 at 20 s, so the DDPM passes the GAN at
    10 + 10 * 40 / 41 = 19.76 s; evaluations are matched across seeds by budget fraction."""
    for seed, shift in ((0, -1.0), (1, 1.0)):  # two seeds whose mean is the curve above
        make_run(tmp_path, "gan", seed, [20.0 + shift, 15.0 + shift, 12.0 + shift])
        make_run(tmp_path, "ddpm", seed, [60.0 - shift, 14.0 - shift, 8.0 - shift])
    runs = find_runs([tmp_path / "gan", tmp_path / "ddpm"])
    curves = fid_curves(runs)
    assert curves["gan"] == [(10.0, 20.0), (20.0, 15.0), (30.0, 12.0)]
    assert curves["ddpm"] == [(10.0, 60.0), (20.0, 14.0), (30.0, 8.0)]
    [(x, sign)] = curve_crossings(curves["ddpm"], curves["gan"])
    assert x == pytest.approx(10 + 10 * 40 / 41) and sign == -1  # a (the DDPM) passes below b
    assert curve_crossings(curves["gan"], curves["ddpm"]) == [(pytest.approx(x), 1)]
    sentence = [s for s in verdict(build_leaderboard(runs), runs) if s.startswith("FID against training time")][0]
    assert "at 10.0 s gan 20.0, ddpm 60.0; at 30.0 s ddpm 8.0, gan 12.0; ddpm passes gan at about 19.8 s" in sentence
    assert "FID divided by 7.50 (ddpm), 1.67 (gan) from 10.0 s to 30.0 s" in sentence  # 60/8, 20/12
    assert "ratio" not in sentence  # the GAN was ahead at the start: no "gap closing" to report
    # one evaluation per family: no curve to compare
    one = find_runs([make_run(tmp_path / "one", f, 0, [30.0]).parent for f in ("gan", "vae")])
    assert "no comparison" in [s for s in verdict(build_leaderboard(one), one) if s.startswith("FID against")][0]


# --- the budget: CPU time, load, image counts (#12.6) -----------------------------------------


def test_image_budget_stops_at_the_batch_that_reaches_it_and_records_cpu_and_load(train_cfg, tmp_path: Path) -> None:
    """100 images at 32 per batch: the 4th batch reaches it, so exactly 128 images, every time."""
    run = tmp_path / "run"
    cfg = train_cfg(
        "model=vae",
        "data.batch_size=32",
        "data.num_train=96",  # 3 batches an epoch: the budget crosses an epoch boundary
        "trainer.max_epochs=-1",
        "trainer.max_steps=-1",
        "trainer.limit_train_batches=1.0",
        "+callbacks.budget={_target_: genbench.callbacks.TrainingBudget, max_images: 100, log_every_n_steps: 1}",
        output_dir=run,
    )
    train(cfg)
    spent = json.loads((run / "budget.json").read_text())
    assert spent["images_seen"] == 128 and spent["batches"] == 4 and spent["budget_fraction"] == 1.0
    assert spent["cpu_seconds"] > 0 and spent["load_avg"] >= 0 and spent["cpu_count"] >= 1
    assert spent["cpu_count"] <= (__import__("os").cpu_count() or 1)


def test_budget_progress_and_resume_state_carry_cpu_and_load() -> None:
    budget = TrainingBudget(max_images=10)
    budget._sample_load(0.0)
    budget._sample_load(1.0)  # within load_every_seconds of the first sample: not taken
    assert budget._load_samples == 1
    progress = budget.training_progress()
    assert {"cpu_seconds", "load_avg", "cpu_count"} <= set(progress) and progress["load_avg"] >= 0
    budget.cpu_seconds = 3.5
    restored = TrainingBudget(max_images=10)
    restored.load_state_dict(budget.state_dict())
    assert restored.training_progress()["cpu_seconds"] == 3.5 and restored.load_avg() == budget.load_avg()
    old = {"images_seen": 5, "train_seconds": 1.0, "batches": 1, "next_eval": 0}  # a checkpoint from before
    restored.load_state_dict(old)
    assert restored.cpu_seconds == 0.0 and restored.load_avg() is None


@pytest.mark.parametrize("bad", [0, -5, 2.5, True])
def test_image_budget_must_be_a_positive_whole_number(bad: Any) -> None:
    with pytest.raises(GenbenchError, match="callbacks.budget.max_images must be a positive whole number"):
        TrainingBudget(max_images=bad)


def test_verdict_calls_equal_values_level_not_a_lead() -> None:
    from genbench.report.verdict import Entry, rank

    entries = [Entry("gan", 10.0, None, 1), Entry("vae", 10.0, None, 1), Entry("ddpm", 8.0, None, 1)]
    body = rank(entries, lower_is_better=False, fmt=lambda v: f"{v:g}")
    assert body == "no clear winner: gan and vae are level (gan 10, vae 10, ddpm 8)"
    assert "leads" not in body


def test_a_run_that_fills_its_own_cores_is_not_flagged_as_loaded() -> None:
    """The load average counts the run's own threads: load 2.1 from a 2-thread run on 2 cores is
    the run itself; 3.0 means others took a third of the machine."""
    from genbench.report.leaderboard import _load_warning

    row = {"budget_kind": "time", "cpu_count": 2}
    assert _load_warning({**row, "load_avg": 2.1}) is None
    assert "load 3.0 on 2 cores" in _load_warning({**row, "load_avg": 3.0})
    assert _load_warning({**row, "budget_kind": "images", "load_avg": 30.0}) is None
