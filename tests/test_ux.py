"""What a run tells its user: input errors first and once, train.log holding the run's log, the
end-of-command summary, no third-party noise, concise W&B names/tags/groups, per-command --help,
the cheap debug=fast grid, the VAE search's metric, and the in-domain extractor's log lines."""

from __future__ import annotations

import logging
import math
import re
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict

from conftest import TINY, TINY_EVAL, compose_train, run_cli
from genbench import CONFIG_DIR, GenbenchError
from genbench.summary import format_summary

NOISE = ("💡 Tip", "litlogger", "Trainer already configured with model summary")


def test_input_error_comes_first_and_once(tmp_path: Path) -> None:
    """A bad value is reported once (not on stdout via the log and again on stderr), and before
    any config tree."""
    r = run_cli("genbench.train", "model=vae", "data=synthetic", "data.batch_size=0", f"hydra.run.dir={tmp_path}/a")
    out = r.stdout + r.stderr
    assert r.returncode == 1
    assert out.count("data.batch_size=0") == 1, out
    assert "CONFIG" not in out and "Traceback" not in out  # print_config=true: the tree would have come first
    # a missing dataset (found only when the data is prepared): tests/test_cli.py


@pytest.fixture(scope="module")
def job(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, str]:
    """One real single-job multirun of a tiny VAE with the default callbacks (model summary on) and
    W&B offline: (job dir, sweep dir name, console output)."""
    sweep = tmp_path_factory.mktemp("ux") / "my_sweep"
    r = run_cli(
        "genbench.train",
        "-m",
        "model=vae",
        *TINY["vae"],
        "data=synthetic",
        "debug=fast",
        "print_config=false",
        "callbacks.progress_bar=null",
        "logger=[csv,wandb]",
        "tags=[ux_test,smoke]",
        "seed=3",
        "model.beta=2.0",
        f"hydra.sweep.dir={sweep}",
    )
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    return sweep / "0", sweep.name, r.stdout + r.stderr


def test_train_log_holds_the_run_and_the_summary(job: tuple[Path, str, str]) -> None:
    run, _, console = job
    text = (run / "train.log").read_text()
    # Lightning's own lines (they bypassed Hydra's file handler: train.log was 0 bytes) ...
    assert "Seed set to 3" in text and "`Trainer.fit` stopped: `max_steps=6` reached." in text
    # ... and the summary: where everything is, and the final metrics
    last = run / "checkpoints" / "last.ckpt"
    assert last.is_file()
    for needle in ("genbench-train: done", f"run directory   : {run}", f"last checkpoint : {last}", "val/neg_elbo"):
        assert needle in text, needle
        assert needle in console, needle
    assert console.count("genbench-train: done") == 1  # printed once, not again by the console log handler
    assert text.count("genbench-train: done") == 1


def test_third_party_noise_is_gone(job: tuple[Path, str, str]) -> None:
    run, _, console = job
    text = (run / "train.log").read_text()
    assert "RichModelSummary" not in text  # the model summary callback ran: the table is on the console ...
    assert "Trainable params" in console  # ... (ours, configured once: Lightning added no second one)
    for noise in NOISE:
        assert noise not in console and noise not in text, noise


def test_wandb_run_is_named_tagged_and_grouped(job: tuple[Path, str, str]) -> None:
    """The offline run's own record file holds the short name, the group and the tags."""
    run, sweep_name, _ = job
    (record,) = (run / "wandb").glob("offline-run-*/run-*.wandb")
    data = record.read_bytes()
    names = set(re.findall(rb"vae-synthetic-s3-[0-9a-f]{6}", data))
    assert len(names) == 1, names  # model.beta=2.0 and the tiny sizes: a digest of the other overrides
    assert sweep_name.encode() in data  # the multirun's group
    for tag in (b"ux_test", b"smoke", b"vae", b"synthetic"):
        assert tag in data
    assert "tags:\n- ux_test\n- smoke\n" in (run / "config_resolved.yaml").read_text()  # saved with the run


def test_wandb_experiment_object(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The logger's experiment (a real offline W&B run): name, tags and group as configured."""
    import wandb

    from genbench.loggers import build_loggers

    monkeypatch.setenv("WANDB_MODE", "offline")
    overrides = ["experiment=fashion_mnist_vae", "data=synthetic", "seed=5", "tags=[t1]", "logger=wandb"]
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    try:
        with open_dict(cfg):
            cfg.paths.output_dir = str(tmp_path)
        (logger,) = build_loggers(cfg)
        exp = logger.experiment
        assert exp.name == "vae-synthetic-s5"  # nothing overridden beyond model, data and seed: no digest
        assert exp.group == "fashion_mnist_vae"  # a single run: its experiment
        assert list(exp.tags) == ["t1", "vae", "synthetic"]
    finally:
        wandb.finish()
        HydraConfig.instance().cfg = None


def test_tags_are_required_in_a_multirun() -> None:
    from genbench.train import enforce_tags

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=["tags=[]", "hydra.mode=MULTIRUN"], return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    try:
        with pytest.raises(GenbenchError, match="No tags for a multirun"):
            enforce_tags(cfg)
    finally:
        HydraConfig.instance().cfg = None


def test_untagged_single_run_is_warned(caplog: pytest.LogCaptureFixture) -> None:
    from genbench.train import enforce_tags

    cfg = compose_train(["tags=[]"])
    with caplog.at_level(logging.WARNING, logger="genbench.train"):
        enforce_tags(cfg)
    assert "No tags given" in caplog.text
    with pytest.raises(GenbenchError, match="tags"):
        enforce_tags(compose_train(["tags=['',x]"]))


GROUPS = {
    "genbench.train": ({"data", "model", "trainer", "callbacks", "logger", "experiment", "hparams_search", "debug"},
                       {"budget", "metrics", "sampler", "experiment/benchmark"}),
    "genbench.benchmark": ({"budget"}, {"model", "trainer", "metrics", "sampler", "debug"}),
    "genbench.train_extractor": ({"data"}, {"model", "budget", "metrics", "sampler", "trainer"}),
}  # fmt: skip


@pytest.mark.parametrize("module", sorted(GROUPS))
def test_help_lists_only_the_groups_that_apply(module: str) -> None:
    r = run_cli(module, "--help")
    assert r.returncode == 0, r.stderr
    section = r.stdout.split("== Config groups (group=option) ==")[1].split("== Config (")[0]
    listed = {line.split(":")[0] for line in section.strip().splitlines()}
    wanted, unwanted = GROUPS[module]
    assert wanted <= listed, listed
    assert not (unwanted & listed), listed
    assert r.stdout.startswith("genbench-" + module.split(".")[1].replace("_", "-"))
    if module == "genbench.train":
        assert "model: ddpm, flow_matching, gan, vae" in section
        assert "hydra/launcher: basic (default), local, slurm" in section


def test_debug_fast_draws_the_ddpm_grid_with_few_steps() -> None:
    """debug=fast's grid decodes with 4 DDIM steps: 4 UNet calls per chunk (the model's own sampler: 50)."""
    from genbench.config import build

    cfg = compose_train(["debug=fast", "model=ddpm", *TINY["ddpm"]])
    grid = build(cfg.callbacks.sample_grid, "callback 'sample_grid'")
    model = build(cfg.model, "model")
    calls = []
    for net in (model.net, model.ema.shadow):
        net.register_forward_hook(lambda *_: calls.append(1))
    images = model.sample(grid.num_samples, generator=torch.Generator().manual_seed(0), **grid.sample_kwargs)
    assert images.shape[0] == 16
    assert len(calls) == 4 * math.ceil(16 / model.sample_batch_size)
    assert grid.interpolation_rows * grid.interpolation_steps <= 8


def test_vae_search_minimises_the_neg_elbo(train_cfg) -> None:
    """hparams_search=vae_optuna optimises val/neg_elbo (beta-free), which a VAE run logs: recon + KL,
    while val/loss = recon + beta * KL would reward small beta by construction."""
    from genbench.train import objective, train

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        search = compose(config_name="train", overrides=["hparams_search=vae_optuna"], return_hydra_config=True)
    assert search.optimized_metric == "val/neg_elbo"
    assert search.hydra.sweeper.direction == "minimize"
    assert "model.beta" in search.hydra.sweeper.params

    cfg = train_cfg("model=vae", "model.beta=2.0", "callbacks.sample_grid=null", "optimized_metric=val/neg_elbo")
    metrics = train(cfg)
    recon, kl = metrics["val/recon"], metrics["val/kl"]
    assert metrics["val/neg_elbo"] == pytest.approx(recon + kl, rel=1e-4)
    assert metrics["val/loss"] == pytest.approx(recon + 2.0 * kl, rel=1e-4)
    assert objective(cfg, metrics) == metrics["val/neg_elbo"]


def test_extractor_training_leaves_progress_and_result_in_the_log(tmp_path: Path, caplog) -> None:
    from genbench.data import SyntheticDataModule
    from genbench.metrics.in_domain_training import ensure_in_domain_extractor

    dm = SyntheticDataModule(num_train=256, num_test=64, batch_size=32)
    with caplog.at_level(logging.INFO, logger="genbench.metrics"):
        path = ensure_in_domain_extractor(
            dm, tmp_path, epochs=1, min_steps=8, batch_size=32, width=4, feature_dim=8, progress=False
        )
    lines = [r.getMessage() for r in caplog.records if r.name == "genbench.metrics"]
    assert any(line.startswith("Training the in-domain extractor for synthetic") for line in lines), lines
    per_epoch = len(dm.real_images("train")) // 32
    total = max(1, -(-8 // per_epoch)) * per_epoch  # min_steps=8 raises the epochs when one is shorter
    steps = [line for line in lines if re.search(rf"step \d+/{total}, loss", line)]
    assert len(steps) == 3, lines  # a quarter, half, three quarters
    (end,) = [line for line in lines if "test accuracy" in line]
    assert str(path) in end and re.search(r"\d+\.\d\d% test accuracy", end)


def test_summary_format() -> None:
    text = format_summary("t", {"a": 1.23456, "bb": None, "metrics": {"val/loss": 1234.5678, "fid": 1e-5}})
    assert text.splitlines()[1:] == ["  a       : 1.235", "  metrics : val/loss 1,234.6  fid 1.000e-05"]


def test_benchmark_logs_each_family_and_ends_with_a_summary(tmp_path: Path) -> None:
    """Families that fail at once (no training: seconds): the benchmark's log keeps a start and an
    end line per family (i/n, status, elapsed) and the command ends with its summary."""
    out = tmp_path / "bench"
    r = run_cli(
        "genbench.benchmark",
        "budget=tiny",
        "families=[vae,ddpm]",
        "print_config=false",
        "floor=false",
        f"hydra.run.dir={out}",
        "+family_overrides.vae=['data.image_size=20']",  # refused while building: impossible size
        "+family_overrides.ddpm=['model.no_such_option=1']",  # refused while composing
    )
    assert r.returncode == 1, r.stdout[-2000:] + r.stderr[-3000:]  # both failed: reported, then status 1
    text = (out / "benchmark.log").read_text()
    assert re.search(r"\[1/2\] vae: training 1 seed\(s\) \(elapsed \d+ s; job output: .*launcher\.log\)", text), text
    assert re.search(r"\[1/2\] vae: FAILED \(0 job\(s\) done, 1 failed, exit status 0\) in \d+ s; elapsed", text), text
    assert re.search(r"\[2/2\] ddpm: FAILED .* elapsed \d+ s", text), text
    assert r.stdout.count("genbench-benchmark: done") == 1 and "genbench-benchmark: done" in text
    assert re.search(rf"report \(html\) +: {re.escape(str(out / 'report.html'))}", r.stdout), r.stdout
    assert "vae" in r.stdout and "FAILED: 0 done, 1 failed" in r.stdout


def test_genbench_eval_logs_into_the_runs_own_wandb_run(job: tuple[Path, str, str]) -> None:
    """One results path on the dashboard too: genbench-eval resumes the run's W&B run by its id."""
    run, _, _ = job
    run_id = (run / "wandb_run_id").read_text().strip()
    r = run_cli(
        "genbench.evaluate",
        f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}",
        *TINY_EVAL,
        "latent_grids=false",
        f"paths.cache_dir={run.parent / 'cache'}",
    )
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    runs = sorted((run / "wandb").glob(f"offline-run-*-{run_id}"))
    assert len(runs) == 2, runs  # the training's and the evaluation's, one W&B run id
    (record,) = runs[-1].glob("run-*.wandb")
    data = record.read_bytes()
    assert b"eval/fid" in data and b"genbench-eval" in data
