"""genbench-compare of a sweep: a row per family and configuration, seeds averaged within a row.

A learning-rate sweep's points are different models: averaging them as if they were seeds gives
an interval that describes nothing. These tests run a real sweep and compare it as a user would,
and check on hand-made run directories that the rows, the verdict and a benchmark's report (one
configuration per family) name what they should.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import run_cli, vae_sweep
from genbench import GenbenchError
from genbench.report.build import write_report
from genbench.report.collect import find_runs
from genbench.report.leaderboard import build_leaderboard, group_runs, named_runs, parse_overrides
from genbench.report.verdict import verdict

LR = "model.optimizer.lr"


def _family_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in rows if r["kind"] == "family"]


@pytest.mark.slow
def test_compare_of_a_learning_rate_sweep_has_a_row_per_learning_rate(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    res = vae_sweep(sweep, f"{LR}=0.001,0.01", "seed=0,1", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert len(list(sweep.glob("*/checkpoints/last.ckpt"))) == 4

    r = run_cli("genbench.compare", str(sweep), "--out", str(tmp_path / "cmp"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = _family_rows(json.loads((tmp_path / "cmp" / "leaderboard.json").read_text()))
    assert [row["family"] for row in rows] == [f"vae ({LR}=0.001)", f"vae ({LR}=0.01)"]
    assert all(row["model_family"] == "vae" and row["seeds"] == [0, 1] for row in rows)
    assert [row["overrides"] for row in rows] == [{LR: "0.001"}, {LR: "0.01"}]
    assert f"| vae ({LR}=0.001) |" in r.stdout and f"| vae ({LR}=0.01) |" in r.stdout
    html = (tmp_path / "cmp" / "report.html").read_text()
    assert f"vae ({LR}=0.001)" in html

    r = run_cli("genbench.compare", str(sweep), "--out", str(tmp_path / "pooled"), "--group-by", "family", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    (row,) = _family_rows(json.loads((tmp_path / "pooled" / "leaderboard.json").read_text()))
    assert row["family"] == "vae" and row["config"] == "" and row["seeds"] == [0, 0, 1, 1]


# --- hand-made run directories -------------------------------------------------------------------


def _run(
    root: Path, name: str, family: str, seed: int, fid: float, overrides: list[str] | None, lr: float = 1e-3
) -> Path:
    """A finished, evaluated run directory; ``overrides`` as Hydra records them (None: no .hydra)."""
    run = root / name
    (run / "eval").mkdir(parents=True)
    config = {"seed": seed, "paths": {"output_dir": str(run)}, "model": {"optimizer": {"lr": lr}}}
    config["trainer"] = {"default_root_dir": str(run)}
    (run / "config_resolved.yaml").write_text(yaml.safe_dump(config))
    if overrides is not None:
        (run / ".hydra").mkdir()
        (run / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    (run / "metrics.json").write_text(json.dumps({"family": family, "num_parameters": 1000}))
    (run / "eval" / "final.json").write_text(json.dumps({"fid": fid, "num_samples": 100}))
    return run


@pytest.fixture
def lr_sweep(tmp_path: Path) -> Path:
    """A VAE at two learning rates x two seeds (FIDs 10, 12 and 30, 32) and a GAN at one setting."""
    root = tmp_path / "runs"
    for i, (lr, seed, fid) in enumerate([(0.001, 0, 10.0), (0.001, 1, 12.0), (0.01, 0, 30.0), (0.01, 1, 32.0)]):
        common = ["model=vae", "data=synthetic", f"paths.cache_dir={tmp_path}/cache"]
        _run(root, f"vae{i}", "vae", seed, fid, [*common, f"{LR}={lr}", f"seed={seed}"], lr=lr)
    for seed in (0, 1):
        _run(root, f"gan{seed}", "gan", seed, 20.0 + seed, ["model=gan", f"seed={seed}"])
    return root


def test_rows_average_seeds_within_a_configuration_never_across(lr_sweep: Path) -> None:
    rows = _family_rows(build_leaderboard(find_runs([lr_sweep])))
    by_name = {r["family"]: r for r in rows}
    assert list(by_name) == ["gan", f"vae ({LR}=0.001)", f"vae ({LR}=0.01)"]  # the registry's order, then by value
    assert by_name[f"vae ({LR}=0.001)"]["fid"] == 11.0 and by_name[f"vae ({LR}=0.001)"]["fid_n"] == 2
    assert by_name[f"vae ({LR}=0.01)"]["fid"] == 31.0
    assert by_name["gan"]["config"] == "" and by_name["gan"]["model_family"] == "gan"
    # the family's likelihood note still comes from its registry entry
    assert str(by_name["gan"]["likelihood"]).startswith("none")
    (pooled,) = [r for r in build_leaderboard(find_runs([lr_sweep]), group_by="family") if r["family"] == "vae"]
    assert pooled["fid"] == 21.0 and pooled["fid_n"] == 4


def test_the_verdict_names_the_configurations(lr_sweep: Path) -> None:
    runs = find_runs([lr_sweep])
    sentences = verdict(build_leaderboard(runs), named_runs(runs))
    quality = next(s for s in sentences if s.startswith("Quality"))
    assert f"vae ({LR}=0.001) 11.0" in quality and f"vae ({LR}=0.01) 31.0" in quality
    assert re.search(r"\bvae\b(?! \()", quality) is None  # never the bare, pooled name


def test_a_report_of_a_sweep_keeps_its_points_apart(lr_sweep: Path, tmp_path: Path) -> None:
    report = write_report(find_runs([lr_sweep]), tmp_path / "report")
    md = report["paths"]["md"].read_text()
    assert f"| vae ({LR}=0.001) | 11.0 ± 1.4 |" in md
    html = report["paths"]["html"].read_text()
    assert f"vae ({LR}=0.01) 31.0" in html  # the verdict


def test_one_configuration_per_family_looks_as_before(tmp_path: Path) -> None:
    """A benchmark's runs differ in seed (and their directories) only: rows named by family alone."""
    for family in ("gan", "vae"):
        for seed in (0, 1):
            _run(tmp_path / family, str(seed), family, seed, 10.0 + seed, ["model=" + family, f"seed={seed}"])
    runs = find_runs([tmp_path / "gan", tmp_path / "vae"])
    rows = _family_rows(build_leaderboard(runs))
    assert [(r["family"], r["config"], r["seeds"]) for r in rows] == [("gan", "", [0, 1]), ("vae", "", [0, 1])]
    assert named_runs(runs) == runs


def test_seed_paths_and_logging_are_not_configuration() -> None:
    overrides = [
        "seed=3",
        "paths.cache_dir=/tmp/c",
        "hydra.run.dir=/tmp/r",
        "hydra/launcher=local",
        "logger=wandb",
        "ckpt_path=/tmp/r/checkpoints/last.ckpt",
        "trainer.default_root_dir=/x",
        "print_config=false",
        "+model.beta=2",
        "~callbacks.evaluation",
        "experiment=benchmark/cpu",
    ]
    assert parse_overrides(overrides) == {"model.beta": "2", "callbacks.evaluation": "~", "experiment": "benchmark/cpu"}


def test_a_value_typed_differently_is_the_same_configuration(tmp_path: Path) -> None:
    """``lr=1e-3`` on one command line and the default 0.001 of another run are one setting: the
    values compared are the resolved config's."""
    _run(tmp_path, "a", "vae", 0, 10.0, ["model=vae", f"{LR}=1e-3", "seed=0"], lr=0.001)
    _run(tmp_path, "b", "vae", 1, 12.0, ["model=vae", "seed=1"], lr=0.001)
    _run(tmp_path, "c", "vae", 2, 30.0, ["model=vae", f"{LR}=0.01", "seed=2"], lr=0.01)
    groups = group_runs(find_runs([tmp_path]))
    assert [(g.label, len(g.runs)) for g in groups] == [(f"vae ({LR}=0.001)", 2), (f"vae ({LR}=0.01)", 1)]


def test_runs_without_recorded_overrides_are_told_apart_by_their_configs(tmp_path: Path) -> None:
    """Runs without Hydra's files (written by other tools): the resolved configs' differing
    values, the run's own directories not counted."""
    for i, (lr, seed) in enumerate([(0.001, 0), (0.001, 1), (0.01, 0)]):
        _run(tmp_path, f"r{i}", "vae", seed, 10.0 + i, None, lr=lr)
    groups = group_runs(find_runs([tmp_path]))
    assert [(g.label, [r.seed for r in g.runs]) for g in groups] == [
        (f"vae ({LR}=0.001)", [0, 1]),
        (f"vae ({LR}=0.01)", [0]),
    ]


def test_an_unknown_group_by_is_one_clear_error(lr_sweep: Path) -> None:
    with pytest.raises(GenbenchError, match="group_by='seed'.*config, family"):
        build_leaderboard(find_runs([lr_sweep]), group_by="seed")
