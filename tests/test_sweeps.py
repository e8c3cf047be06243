"""Sweeps without a cluster: Optuna searches, the submitit local launcher, the launcher checks
that run before submission, and resume details (CSV history, W&B run id) that requeued jobs use."""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from conftest import QUIET, TINY, run_cli, vae_sweep
from genbench import CONFIG_DIR, PROJECT_ROOT, GenbenchError
from genbench.cluster import check_launcher
from genbench.train import train


def compose_with_hydra(overrides: list[str]) -> DictConfig:
    """The composed config *with* its hydra node, resolved as the launcher would see it."""
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    return cfg


def train_steps(run: Path, key: str = "train/loss") -> list[int]:
    with open(run / "csv" / "metrics.csv") as f:
        return [int(r["step"]) for r in csv.DictReader(f) if r.get(key)]


# --- Optuna ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("family", "metric"), [("gan", "val/g_loss"), ("vae", "val/neg_elbo"), ("ddpm", "val/loss_ema")]
)
def test_hparams_search_configs_compose_and_name_a_logged_metric(family: str, metric: str) -> None:
    cfg = compose_with_hydra([f"hparams_search={family}_optuna", "data=synthetic"])
    assert cfg.model._target_ == f"genbench.models.{family.upper()}"
    assert cfg.optimized_metric == metric
    assert cfg.hydra.sweeper._target_.endswith("OptunaSweeper")
    assert cfg.hydra.sweeper.direction == "minimize"
    for key in cfg.hydra.sweeper.params:  # every searched key exists in the model config
        node = cfg
        for part in key.split("."):
            assert part in node, f"{key} is not a config key of model={family}"
            node = node[part]


def optuna_sweep(log_dir: Path, sweep: Path, n_trials: int, **kwargs) -> subprocess.CompletedProcess:
    """`genbench-train hparams_search=vae_optuna` of tiny VAEs, its study stored under ``log_dir``."""
    return run_cli("genbench.train", *optuna_args(log_dir, sweep, n_trials), **kwargs)


def optuna_args(log_dir: Path, sweep: Path, n_trials: int) -> list[str]:
    return [
        "hparams_search=vae_optuna",
        *QUIET,
        *TINY["vae"][:2],
        f"hydra.sweeper.n_trials={n_trials}",
        "hydra.sweeper.n_jobs=1",
        f"paths.log_dir={log_dir}",
        f"hydra.sweep.dir={sweep}",
    ]


def stored_trials(db: Path, study: str = "vae") -> list[optuna.trial.FrozenTrial]:
    """The trials of ``study`` in the SQLite file ``db``, read as a user would (optuna.load_study)."""
    return optuna.load_study(study_name=study, storage=f"sqlite:///{db}").get_trials()


def complete(trials: list[optuna.trial.FrozenTrial]) -> list[optuna.trial.FrozenTrial]:
    return [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]


@pytest.mark.slow
def test_optuna_sweep_of_two_trials_writes_its_results(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    res = optuna_sweep(tmp_path / "out", sweep, n_trials=2)
    assert res.returncode == 0, res.stderr[-3000:]
    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert results["name"] == "optuna"
    assert set(results["best_params"]) == {"model.optimizer.lr", "model.latent_dim", "model.beta"}
    trials = sorted(p for p in sweep.iterdir() if p.is_dir() and p.name.isdigit())
    assert [p.name for p in trials] == ["0", "1"]
    values = [json.loads((p / "metrics.json").read_text())["val/neg_elbo"] for p in trials]
    assert all(math.isfinite(v) for v in values)
    assert results["best_value"] == pytest.approx(min(values))  # the sweeper got what train returned
    # the trials really differ: the sampler chose different hyperparameters
    sampled = [
        {o.split("=")[0]: o.split("=")[1] for o in yaml.safe_load((p / ".hydra" / "overrides.yaml").read_text())}
        for p in trials
    ]
    assert all("model.optimizer.lr" in s and "model.beta" in s for s in sampled)
    assert sampled[0]["model.optimizer.lr"] != sampled[1]["model.optimizer.lr"]

    # the study is on disk, under the outputs: a second invocation of the same search continues it.
    # n_trials is the size of the whole study, so n_trials=3 runs exactly one more trial.
    db = tmp_path / "out" / "optuna" / "vae.db"
    assert [t.value for t in complete(stored_trials(db))] == pytest.approx(values)
    sweep2 = tmp_path / "sweep2"
    res = optuna_sweep(tmp_path / "out", sweep2, n_trials=3)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "2 of 3 trials finished, 1 to run" in res.stdout + res.stderr
    assert [p.name for p in sweep2.iterdir() if p.is_dir() and p.name.isdigit()] == ["0"]
    new_value = json.loads((sweep2 / "0" / "metrics.json").read_text())["val/neg_elbo"]
    stored = complete(stored_trials(db))
    assert [t.value for t in stored] == pytest.approx([*values, new_value])
    results = yaml.safe_load((sweep2 / "optimization_results.yaml").read_text())
    assert results["best_value"] == pytest.approx(min(t.value for t in stored))  # best of both runs


@pytest.mark.slow
def test_killed_optuna_sweep_resumes_with_its_finished_trials(tmp_path: Path) -> None:
    """SIGKILL the whole sweep once one trial is stored; the same command again finishes the study."""
    log_dir, db = tmp_path / "out", tmp_path / "out" / "optuna" / "vae.db"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "WANDB_MODE": "offline"}
    args = [sys.executable, "-m", "genbench.train", *optuna_args(log_dir, tmp_path / "sweep1", n_trials=3)]
    proc = subprocess.Popen(
        args, cwd=PROJECT_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    before: list[optuna.trial.FrozenTrial] = []
    try:
        deadline = time.monotonic() + 300
        while not before and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.5)
            with contextlib.suppress(Exception):  # no file or no study yet, or the writer holds it
                before = complete(stored_trials(db))
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert before, "the sweep ended or stalled before its first trial was stored"
    done = len(complete(stored_trials(db)))
    assert done < 3, "the sweep finished before it could be killed"

    res = optuna_sweep(log_dir, tmp_path / "sweep2", n_trials=3)
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"{done} of 3 trials finished, {3 - done} to run" in res.stdout + res.stderr
    after = complete(stored_trials(db))
    assert len(after) == 3
    kept = {t.number: (t.params, t.value) for t in after}
    assert all(kept[t.number] == (t.params, t.value) for t in before)  # the finished trial is still there
    results = yaml.safe_load((tmp_path / "sweep2" / "optimization_results.yaml").read_text())
    assert results["best_value"] == pytest.approx(min(t.value for t in after))


# --- submitit local launcher --------------------------------------------------------------------------


@pytest.mark.slow
def test_local_launcher_multirun_runs_two_jobs(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    res = vae_sweep(
        sweep,
        "seed=1,2",
        "hydra/launcher=local",
    )
    assert res.returncode == 0, res.stderr[-3000:]
    metrics = {}
    for num, seed in (("0", 1), ("1", 2)):
        run = sweep / num
        assert (run / "checkpoints" / "last.ckpt").is_file()
        cfg = yaml.safe_load((run / "config_resolved.yaml").read_text())
        assert cfg["seed"] == seed
        metrics[seed] = json.loads((run / "metrics.json").read_text())
        assert metrics[seed]["global_step"] == 6
    assert metrics[1]["val/loss"] != metrics[2]["val/loss"]
    # each job ran in its own submitit process, with its own log
    logs = sorted((sweep / ".submitit").glob("*/*_log.out"))
    assert len(logs) == 2
    assert all("Job completed successfully" in p.read_text() for p in logs)


# --- checks before submission ---------------------------------------------------------------------


def test_slurm_launcher_request_follows_the_trainer() -> None:
    cfg = compose_with_hydra(["hydra/launcher=slurm", "trainer=ddp_cpu", "trainer.num_nodes=2", "data=synthetic"])
    launcher = cfg.hydra.launcher
    assert launcher.tasks_per_node == 2 and launcher.nodes == 2
    assert launcher.gpus_per_node is None and launcher.cpus_per_task == 1
    assert launcher.signal_delay_s > 0 and launcher.max_num_timeout > 0
    gpu = compose_with_hydra(["hydra/launcher=slurm", "trainer=ddp", "trainer.devices=4", "data=synthetic"])
    assert gpu.hydra.launcher.tasks_per_node == 4 and gpu.hydra.launcher.gpus_per_node == 4


def test_slurm_launcher_partition_account_qos_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SBATCH_PARTITION", "gpu-long")
    monkeypatch.setenv("SBATCH_ACCOUNT", "lab")
    monkeypatch.delenv("SBATCH_QOS", raising=False)
    launcher = compose_with_hydra(["hydra/launcher=slurm"]).hydra.launcher
    assert (launcher.partition, launcher.account, launcher.qos) == ("gpu-long", "lab", None)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["trainer=gpu", "trainer.devices=4", "hydra.launcher.gpus_per_node=2"], "more GPUs per node than the job"),
        (["trainer=ddp"], "cannot size a SLURM request"),
        (["trainer=ddp_cpu", "hydra.launcher.tasks_per_node=1"], "one task per device"),
        (["trainer.num_nodes=2", "hydra.launcher.nodes=1"], "trainer.num_nodes=2"),
        (["trainer=gpu", "hydra.launcher.gpus_per_node=0"], "asks for no GPUs"),
    ],
)
def test_inconsistent_slurm_request_is_refused(overrides: list[str], message: str) -> None:
    cfg = compose_with_hydra(["hydra/launcher=slurm", "data=synthetic", *overrides])
    with pytest.raises(GenbenchError, match=message):
        check_launcher(cfg)


def test_missing_submitit_is_one_clear_error_before_anything_runs(tmp_path: Path) -> None:
    # A module that fails to import stands in for an environment without submitit.
    fake = tmp_path / "site"
    fake.mkdir()
    (fake / "submitit.py").write_text("raise ImportError(\"No module named 'submitit'\")\n")
    sweep = tmp_path / "sweep"
    res = vae_sweep(
        sweep,
        "seed=1,2",
        "hydra/launcher=local",
        tiny=False,
        env={"PYTHONPATH": f"{fake}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"},
    )
    assert res.returncode == 1
    errors = [line for line in res.stderr.splitlines() if line.startswith("genbench: error:")]
    assert len(errors) == 1 and "needs submitit" in errors[0] and "pip install" in errors[0], res.stderr[-2000:]
    assert "Traceback" not in res.stderr
    assert not (sweep / ".submitit").exists() and not (sweep / "0").exists()


# --- resume pieces that requeued jobs rely on --------------------------------------------------------


def test_resume_drops_log_rows_the_checkpoint_does_not_contain(train_cfg, tmp_path: Path) -> None:
    """A job killed after its last checkpoint logged steps that the resumed run trains again."""
    train(train_cfg("model=vae"))  # 6 steps, last.ckpt at step 6
    run = tmp_path / "run"
    path = run / "csv" / "metrics.csv"
    rows = list(csv.DictReader(path.open()))
    extra = dict(rows[-2], step="6")  # a row of step 6 logged after the checkpoint, then killed
    with path.open("a", newline="") as f:
        csv.DictWriter(f, fieldnames=list(rows[0])).writerow(extra)
    train(train_cfg("model=vae", "ckpt_path=auto", "trainer.max_steps=9", "trainer.max_epochs=3"))
    steps = train_steps(run)
    assert steps[:6] == list(range(6))  # the history before the checkpoint is kept...
    assert len(steps) == 9 and steps == sorted(set(steps))  # ...and no step is logged twice
    # (Lightning numbers the first step after an end-of-epoch checkpoint one higher: a gap, never a repeat)
    assert steps[6] in (6, 7)


def test_wandb_run_resumes_with_the_run_directory(train_cfg, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    train(train_cfg("model=vae", "logger=wandb"))
    run = tmp_path / "run"
    run_id = (run / "wandb_run_id").read_text().strip()
    train(train_cfg("model=vae", "logger=wandb", "ckpt_path=auto", "trainer.max_steps=8", "trainer.max_epochs=3"))
    offline = sorted((run / "wandb").glob("offline-run-*"))
    assert len(offline) == 2
    assert all(p.name.endswith(f"-{run_id}") for p in offline)  # one W&B run, continued
    other = tmp_path / "other"
    train(train_cfg("model=vae", "logger=wandb", output_dir=other))
    assert (other / "wandb_run_id").read_text().strip() != run_id
