"""The real command line: bad input, multirun, and DDP inside a multirun (subprocesses)."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from conftest import TINY

FAST = ["data=synthetic", "debug=fast", "print_config=false", "callbacks.progress_bar=null"]


def test_unknown_model_lists_the_available_ones(cli, tmp_path: Path) -> None:
    r = cli("genbench.train", "model=diffusion_gan", f"hydra.run.dir={tmp_path}/run")
    assert r.returncode != 0
    assert "Could not find 'model/diffusion_gan'" in r.stderr
    for name in ("gan", "vae", "ddpm"):
        assert name in r.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_impossible_image_size_is_rejected_before_training(cli, tmp_path: Path) -> None:
    r = cli("genbench.train", "model=gan", *FAST, "data.image_size=24", f"hydra.run.dir={tmp_path}/run")
    assert r.returncode == 1
    assert "genbench: error:" in r.stderr and "image size" in r.stderr and "data.image_size" in r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_missing_dataset_is_one_clear_error(cli, tmp_path: Path) -> None:
    r = cli("genbench.train", "model=vae", "data=mnist", f"data.root={tmp_path}/none", f"hydra.run.dir={tmp_path}/run")
    assert r.returncode == 1
    assert "mnist not found" in r.stderr and "data.download=true" in r.stderr
    assert "Traceback" not in r.stderr
    # found only when the data is prepared, yet reported once and before the config tree (print_config=true)
    assert (r.stdout + r.stderr).count("mnist not found") == 1
    assert "CONFIG" not in r.stdout


def test_corrupt_checkpoint_via_cli(cli, tmp_path: Path) -> None:
    bad = tmp_path / "last.ckpt"
    bad.write_text("garbage")
    r = cli("genbench.train", "model=vae", *FAST, f"ckpt_path={bad}", f"hydra.run.dir={tmp_path}/run")
    assert r.returncode == 1 and "corrupt" in r.stderr
    assert bad.read_text() == "garbage"


def _job_dirs(sweep: Path) -> list[Path]:
    return sorted(p for p in sweep.iterdir() if p.is_dir() and (p / ".hydra").is_dir())


def test_multirun_makes_one_directory_per_job(cli, tmp_path: Path) -> None:
    r = cli(
        "genbench.train",
        "-m",
        "model=vae",
        *TINY["vae"],
        *FAST,
        "logger=[csv,wandb]",
        "seed=1,2",
        f"hydra.sweep.dir={tmp_path}/sweep",
    )
    assert r.returncode == 0, r.stderr[-3000:]
    jobs = _job_dirs(tmp_path / "sweep")
    assert [p.name for p in jobs] == ["0", "1"]
    assert [yaml.safe_load((p / ".hydra" / "overrides.yaml").read_text())[-1] for p in jobs] == ["seed=1", "seed=2"]
    for job in jobs:
        assert (job / "checkpoints" / "last.ckpt").is_file()
        assert json.loads((job / "metrics.json").read_text())["global_step"] == 6
        assert len(list((job / "wandb").glob("offline-run-*"))) == 1  # each job is its own W&B run
    run_ids = {(job / "wandb_run_id").read_text() for job in jobs}
    assert len(run_ids) == 2


def test_ddp_inside_multirun(cli, tmp_path: Path) -> None:
    """The classic Hydra + Lightning trap: DDP children must not make run dirs or relaunch the sweep."""
    r = cli(
        "genbench.train",
        "-m",
        "model=gan",
        *TINY["gan"],
        *FAST,
        "trainer=ddp_cpu",
        "seed=1,2",
        f"hydra.sweep.dir={tmp_path}/sweep",
    )
    assert r.returncode == 0, r.stderr[-3000:]
    sweep = tmp_path / "sweep"
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["0", "1"]
    for job in _job_dirs(sweep):
        assert sorted(p.name for p in (job / ".hydra").iterdir()) == ["config.yaml", "hydra.yaml", "overrides.yaml"]
        assert len(list(job.glob("*.log"))) == 1, sorted(p.name for p in job.glob("*.log"))  # rank 1 writes none
        assert sorted(p.name for p in (job / "checkpoints").iterdir())[-1] == "last.ckpt"
        assert len(list((job / "checkpoints").iterdir())) == 2  # last + best, nothing from rank 1
        assert len(list(job.rglob("metrics.csv"))) == 1
        sync = json.loads((job / "ddp_sync.json").read_text())
        assert sync["world_size"] == 2 and sync["max_abs_diff_parameters"] == 0.0
        cfg = yaml.safe_load((job / "config_resolved.yaml").read_text())
        assert cfg["trainer"]["devices"] == 2
    # the sweep ran exactly once: no nested sweep directories, one "Launching" line, each job once
    assert list(sweep.rglob("multirun.yaml")) == [sweep / "multirun.yaml"]
    assert sorted(p.parent for p in sweep.rglob(".hydra")) == _job_dirs(sweep)
    output = r.stdout + r.stderr
    assert output.count("Launching") == 1 and "Launching 2 jobs" in output, output[-3000:]
    assert output.count("\t#0 : ") == output.count("\t#1 : ") == 1


def test_every_family_keeps_replicas_identical_under_ddp(cli, tmp_path: Path) -> None:
    """Also runs the evaluation callback under DDP: each rank samples its share, rank 0 computes."""
    r = cli(
        "genbench.train",
        "-m",
        "model=vae,ddpm",
        *FAST,
        "trainer=ddp_cpu",
        "model.sample_batch_size=16",
        "callbacks=[default,eval]",
        "callbacks.evaluation.num_samples=101",  # odd: 8 chunks of <= 13, the ranks draw 52 + 49, exactly 101
        "callbacks.evaluation.every_n_epochs=null",
        "callbacks.evaluation.metrics.extractor=in-domain",
        "callbacks.evaluation.metrics.kid_subset_size=50",
        "callbacks.evaluation.metrics.kid_subsets=5",
        "+callbacks.evaluation.metrics.extractor_training={epochs: 1, feature_dim: 16, width: 8}",
        "callbacks.evaluation.sampler.steps=3",
        "+callbacks.evaluation.metrics.likelihood={num_images: 16, iwae_k: 4, timesteps: 4, batch_size: 16}",
        f"paths.cache_dir={tmp_path}/cache",
        f"hydra.sweep.dir={tmp_path}/sweep",
    )
    assert r.returncode == 0, r.stderr[-3000:]
    jobs = _job_dirs(tmp_path / "sweep")
    assert len(jobs) == 2
    for job in jobs:
        sync = json.loads((job / "ddp_sync.json").read_text())
        assert sync["max_abs_diff_parameters"] == 0.0
        assert len(set(sync["rank_parameter_checksums"])) == 1
        final = json.loads((job / "eval" / "final.json").read_text())
        assert final["num_samples"] == 101 and final["fid"] > 0
        assert final["likelihood_images"] == 16 and final["bpd"] > 0  # computed on rank 0, broadcast
        assert len(list(job.rglob("final.json"))) == 1  # written by rank 0 only
