"""Bad input ends in one ``genbench: error:`` line that names the key or path, exit status 1, no
traceback, and leaves an existing run as it was (docs/reliability.md lists every case).

The config-value checks run in-process (``validate_config(compose_train(...))``): a subprocess
would add only its ~4 s of imports. A handful of true CLI runs prove the whole path for each kind
of failure: a value, a resume of another architecture, an unreachable SLURM, evaluation counts and
an unwritable output.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from conftest import FAST, QUIET, TINY, compose_train, run_cli, tiny
from genbench import CONFIG_DIR, GenbenchError
from genbench.evaluate import check_writable, evaluate
from genbench.schema import LIGHTNING_PRECISIONS, all_rules, validate_config

# the in-domain extractor of the evaluation tests: as small as it gets (trained on first use)
TINY_EXTRACTOR = [
    "metrics.extractor_training.epochs=1",
    "metrics.extractor_training.min_steps=1",
    "metrics.extractor_training.width=8",
    "metrics.extractor_training.feature_dim=16",
]


def one_error(r: subprocess.CompletedProcess, *words: str) -> str:
    """The one ``genbench: error:`` line of a failed CLI run; it must contain every word."""
    assert r.returncode == 1, f"rc={r.returncode}\n{r.stderr[-3000:]}"
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    errors = [line for line in r.stderr.splitlines() if line.startswith("genbench: error:")]
    assert len(errors) == 1, r.stderr[-3000:]
    for word in words:
        assert word in errors[0], errors[0]
    return errors[0]


def compose_eval(*overrides: str) -> DictConfig:
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name="eval", overrides=list(overrides))


def snapshot(run: Path, skip: tuple[str, ...] = ()) -> dict[str, bytes]:
    """Every file of a run directory and its bytes (``skip``: path prefixes left out)."""
    return {
        str(p.relative_to(run)): p.read_bytes()
        for p in sorted(run.rglob("*"))
        if p.is_file() and not str(p.relative_to(run)).startswith(skip)
    }


@pytest.fixture(scope="module")
def vae_run(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """A tiny VAE (latent_dim=8) trained for a few steps, in-process (no CLI import cost)."""
    from genbench.train import train

    root = tmp_path_factory.mktemp("bad_inputs")
    train(compose_train([*FAST, *tiny("vae"), "callbacks.sample_grid=null"], root / "run"))
    ckpt = root / "run" / "checkpoints" / "last.ckpt"
    assert ckpt.is_file()
    return SimpleNamespace(root=root, run=root / "run", ckpt=ckpt)


# --- config values (in-process) --------------------------------------------------------------------

BAD_VALUES = [
    # (overrides, the key the message must name)
    (["data.batch_size=0"], "data.batch_size"),
    (["data.batch_size=-4"], "data.batch_size"),
    (["data.batch_size=2.5"], "data.batch_size"),
    (["data.batch_size=true"], "data.batch_size"),
    (["data.num_workers=-1"], "data.num_workers"),
    (["data.image_size=4"], "data.image_size"),
    (["data.channels=2"], "data.channels"),
    (["seed=abc"], "seed"),
    (["seed=-1"], "seed"),
    (["trainer.max_steps=abc"], "trainer.max_steps"),
    (["trainer.max_steps=0"], "trainer.max_steps"),
    (["trainer.max_epochs=1.5"], "trainer.max_epochs"),
    (["trainer.limit_val_batches=1.5"], "trainer.limit_val_batches"),
    (["trainer.devices=abc"], "trainer.devices"),
    (["trainer.precision=15"], "trainer.precision"),
    (["trainer.accelerator=gpus"], "trainer.accelerator"),
    (["model=ddpm", "model.net.base_channels=abc"], "model.net.base_channels"),
    (["model=ddpm", "model.net.channel_mults=[1,a]"], "model.net.channel_mults"),
    (["model=ddpm", "model.schedule.timesteps=0"], "model.schedule.timesteps"),
    (["model=ddpm", "model.sampler.steps=0"], "model.sampler.steps"),
    (["model=ddpm", "model.ema_decay=1.0"], "model.ema_decay"),
    (["model=ddpm", "model.optimizer.lr=0"], "model.optimizer.lr"),
    (["model=gan", "model.generator.z_dim=0"], "model.generator.z_dim"),
    (["model=gan", "model.discriminator.width=abc"], "model.discriminator.width"),
    (["model=gan", "model.optimizer_d.lr=-2e-4"], "model.optimizer_d.lr"),
    (["model=gan", "model.loss=wasserstein"], "model.loss"),
    (["model=vae", "model.latent_dim=abc"], "model.latent_dim"),
    (["model=vae", "model.beta=-1"], "model.beta"),
    (["callbacks.resume.every_n_train_steps=0"], "callbacks.resume.every_n_train_steps"),
    (["callbacks=[default,eval]", "callbacks.evaluation.num_samples=1"], "callbacks.evaluation.num_samples"),
]


@pytest.mark.parametrize(("overrides", "key"), BAD_VALUES, ids=[" ".join(o) for o, _ in BAD_VALUES])
def test_bad_config_value_names_key_value_type_and_fix(overrides: list[str], key: str) -> None:
    with pytest.raises(GenbenchError) as info:
        validate_config(compose_train(["data=synthetic", *overrides]))
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"Bad config value: {key}="), message
    assert " is not " in message and f"set e.g. {key}=" in message, message  # expected type, then the fix


def test_a_value_set_once_is_reported_once_where_it_was_set() -> None:
    """model.encoder/decoder.latent_dim follow model.latent_dim by interpolation: one report."""
    with pytest.raises(GenbenchError) as info:
        validate_config(compose_train(["data=synthetic", "model=vae", "model.latent_dim=abc"]))
    assert str(info.value).count("latent_dim=") == 2  # "model.latent_dim='abc' ... set e.g. model.latent_dim=32"
    assert "encoder" not in str(info.value)


def test_several_bad_values_are_one_line() -> None:
    with pytest.raises(GenbenchError, match=r"^2 bad config values: data\.batch_size=0 .*; trainer\.max_steps='abc'"):
        validate_config(compose_train(["data=synthetic", "data.batch_size=0", "trainer.max_steps=abc"]))


def _experiments() -> list[str]:
    root = CONFIG_DIR / "experiment"
    return sorted(str(p.relative_to(root).with_suffix("")) for p in root.rglob("*.yaml") if not p.name.startswith("_"))


@pytest.mark.parametrize(
    "overrides",
    [[f"experiment={e}"] for e in _experiments()]
    + [[f"model={m}", f"data={d}"] for m in ("gan", "vae", "ddpm") for d in ("synthetic", "fashion_mnist", "cifar10")]
    + [[f"trainer={t}", "callbacks=[default,eval]"] for t in ("cpu", "gpu", "ddp", "ddp_cpu")]
    + [[f"debug={d}"] for d in ("fast", "fdr", "overfit")]
    + [["data=folder"], ["data=mnist"], ["callbacks=none"], ["trainer.devices=[0,1]"], ["trainer.devices='0,1'"]],
    ids=lambda o: " ".join(o),
)
def test_every_shipped_config_passes(overrides: list[str]) -> None:
    validate_config(compose_train(overrides))


@pytest.mark.parametrize(
    "overrides",
    [[], ["metrics=cpu", "sampler=ddim"], ["sampler=ancestral", "data=synthetic"]],
    ids=["default", "cpu", "ancestral"],
)
def test_shipped_eval_configs_pass(overrides: list[str]) -> None:
    validate_config(compose_eval(*overrides))


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["metrics.num_samples=1"], "metrics.num_samples"),
        (["seed=abc"], "seed"),
        (["sampler=ddim", "sampler.steps=0"], "sampler.steps"),
        (["metrics.kid_subset_size=1"], "metrics.kid_subset_size"),
        (["device=gpu"], "device"),
    ],
    ids=["metrics.num_samples=1", "seed=abc", "sampler.steps=0", "metrics.kid_subset_size=1", "device=gpu"],
)
def test_bad_eval_value_stops_evaluate_first(overrides: list[str], key: str, tmp_path: Path) -> None:
    cfg = compose_eval(*overrides, f"paths.cache_dir={tmp_path}/cache", f"ckpt_path={tmp_path}/none.ckpt")
    with pytest.raises(GenbenchError, match=rf"(^|: ){key}="):
        evaluate(cfg)


def test_precisions_are_lightnings() -> None:
    import typing

    from lightning_fabric.connector import _PRECISION_INPUT

    lightning = {v for lit in typing.get_args(_PRECISION_INPUT) for v in typing.get_args(lit)}
    assert lightning == set(LIGHTNING_PRECISIONS)


def test_every_rule_example_passes_its_own_check() -> None:
    import yaml

    for rule in all_rules():  # the general rules and every registered family's
        assert rule.spec.accepts(yaml.safe_load(rule.example)), rule


# --- the CLI: true runs -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        pytest.param(["model=vae", *TINY["vae"], "data.batch_size=0"], "data.batch_size", id="batch_size=0"),
        pytest.param(
            ["model=ddpm", *TINY["ddpm"], "model.net.base_channels=abc"],
            "model.net.base_channels",
            id="base_channels=abc",
        ),
    ],
)
def test_cli_bad_value_is_one_line_and_writes_nothing(overrides: list[str], key: str, tmp_path: Path) -> None:
    r = run_cli("genbench.train", *QUIET, *overrides, f"hydra.run.dir={tmp_path}/run")
    one_error(r, key, "set e.g.")
    assert not (tmp_path / "run" / "checkpoints").exists()
    assert not (tmp_path / "run" / "config_resolved.yaml").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_gpu_trainer_without_a_gpu_names_trainer_cpu_and_writes_nothing(tmp_path: Path) -> None:
    """Not Lightning's bare "No supported gpu backend found!": one line with the way out."""
    r = run_cli("genbench.train", *QUIET, "model=vae", *TINY["vae"], "trainer=gpu", f"hydra.run.dir={tmp_path}/run")
    one_error(r, "trainer.accelerator=gpu", "trainer=cpu")
    assert "No supported gpu backend" not in r.stderr
    assert not (tmp_path / "run" / "config_resolved.yaml").exists() and not (tmp_path / "run" / "checkpoints").exists()


def test_unwritable_checkpoint_directory_fails_before_training(tmp_path: Path) -> None:
    """Not after training: a run that cannot save its checkpoints must not start."""
    r = run_cli(
        "genbench.train",
        *QUIET,
        "model=vae",
        *TINY["vae"],
        "callbacks.model_checkpoint.dirpath=/proc/genbench-checkpoints",
        f"hydra.run.dir={tmp_path}/run",
    )
    one_error(r, "callbacks.model_checkpoint.dirpath=/proc/genbench-checkpoints", "cannot be written")
    assert not (tmp_path / "run" / "metrics.json").exists() and not (tmp_path / "run" / "csv").exists()


@pytest.mark.parametrize("same_dir", [False, True], ids=["new run dir", "same run dir, ckpt_path=auto"])
def test_resume_of_another_architecture_names_shapes_and_config(vae_run: SimpleNamespace, same_dir: bool) -> None:
    # Hydra itself rewrites .hydra/ (and appends to the log) of the directory it runs in, before genbench starts
    skip = (".hydra", "train.log") if same_dir else ()
    before = snapshot(vae_run.run, skip)
    target = vae_run.run if same_dir else vae_run.root / "resumed"
    ckpt = "auto" if same_dir else str(vae_run.ckpt)
    r = run_cli(
        "genbench.train",
        "model=vae",
        *QUIET,
        *TINY["vae"],
        "model.latent_dim=16",
        f"ckpt_path={ckpt}",
        f"hydra.run.dir={target}",
    )
    one_error(r, "in the checkpoint but", "in this model", "[16, 512]", "model.latent_dim=8", "without ckpt_path")
    assert snapshot(vae_run.run, skip) == before
    if not same_dir:
        assert not (target / "checkpoints").exists() and not (target / "config_resolved.yaml").exists()


def test_unreachable_slurm_is_refused_before_submission(tmp_path: Path) -> None:
    """The real sinfo/sbatch with an unusable SLURM_CONF (what a login node without a working
    controller looks like); a stand-in sinfo/sbatch that fail the same way where SLURM is absent."""
    env = {"SLURM_CONF": str(tmp_path / "slurm.conf")}
    (tmp_path / "slurm.conf").write_text("")
    if shutil.which("sinfo") is None or shutil.which("sbatch") is None:
        bin_dir = tmp_path / "bin"
        bin_dir.mkdir()
        for tool in ("sinfo", "sbatch"):
            (bin_dir / tool).write_text(
                f"#!/bin/sh\necho '{tool}: fatal: Unable to process configuration file' >&2\nexit 1\n"
            )
            (bin_dir / tool).chmod(0o755)
        env["PATH"] = f"{bin_dir}{os.pathsep}{os.environ['PATH']}"
    sweep = tmp_path / "sweep"
    r = run_cli(
        "genbench.train",
        "-m",
        "model=vae",
        *QUIET,
        "seed=1,2",
        "hydra/launcher=slurm",
        f"hydra.sweep.dir={sweep}",
        env=env,
    )
    one_error(
        r, "SLURM is not reachable", "sinfo", "fatal", f"SLURM_CONF={tmp_path / 'slurm.conf'}", "hydra/launcher=local"
    )
    assert not (sweep / ".submitit").exists()


def test_sinfo_that_does_not_answer_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from genbench.cluster import preflight

    def hang(*args: object, **kwargs: object) -> None:
        raise subprocess.TimeoutExpired("sinfo", preflight.SINFO_TIMEOUT_S)

    monkeypatch.setattr(preflight.shutil, "which", lambda name: f"/usr/bin/{name}")
    monkeypatch.setattr(preflight.subprocess, "run", hang)
    with pytest.raises(GenbenchError, match=r"SLURM is not reachable \(sinfo did not answer within 30 s\)"):
        preflight.check_partition(None, 0, 1, 1)


def test_eval_sample_counts_are_checked_before_sampling(vae_run: SimpleNamespace, tmp_path: Path) -> None:
    r = run_cli(
        "genbench.evaluate",
        f"ckpt_path={vae_run.ckpt}",
        "metrics.num_samples=200",
        "metrics.kid_subset_size=500",
        *TINY_EXTRACTOR,
        f"paths.cache_dir={tmp_path}/cache",
        f"hydra.run.dir={tmp_path}/eval",
    )
    one_error(r, "metrics.kid_subset_size", "500")
    assert "Drawing" not in r.stdout  # the sampling log line: nothing was sampled
    assert not (vae_run.run / "checkpoints" / "metrics.json").exists()


def test_eval_unwritable_output_is_refused_before_any_work(vae_run: SimpleNamespace, tmp_path: Path) -> None:
    r = run_cli(
        "genbench.evaluate",
        f"ckpt_path={vae_run.ckpt}",
        "output=/proc/genbench/metrics.json",
        *TINY_EXTRACTOR,
        f"paths.cache_dir={tmp_path}/cache",
        f"hydra.run.dir={tmp_path}/eval",
    )
    one_error(r, "output=/proc/genbench/metrics.json", "cannot be written")
    assert not (tmp_path / "cache").exists()  # not even the extractor was trained


def test_output_that_is_a_directory_or_under_a_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(GenbenchError, match="is a directory"):
        check_writable(tmp_path)
    (tmp_path / "file").write_text("")
    with pytest.raises(GenbenchError, match="is a file, not a directory"):
        check_writable(tmp_path / "file" / "metrics.json")
    check_writable(tmp_path / "new" / "dir" / "metrics.json")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]  # the probe left nothing behind


def test_batch_larger_than_the_training_split_names_data_batch_size() -> None:
    """A valid type whose problem only the data can show: refused when the loader is built."""
    from genbench.data import SyntheticDataModule

    dm = SyntheticDataModule(num_train=64, num_test=16, batch_size=128)
    with pytest.raises(GenbenchError, match=r"fewer than data\.batch_size=128\. Lower data\.batch_size"):
        dm.train_dataloader()


def test_eval_of_a_missing_checkpoint_names_it(tmp_path: Path) -> None:
    cfg = compose_eval(f"ckpt_path={tmp_path}/missing.ckpt", f"paths.cache_dir={tmp_path}/cache")
    with pytest.raises(GenbenchError, match=r"missing\.ckpt does not exist\. Pass ckpt_path="):
        evaluate(cfg)


def test_compare_sources_checks_a_checkpoints_count_before_sampling(
    vae_run: SimpleNamespace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import genbench.evaluate

    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("sampled before the sample counts were checked")

    monkeypatch.setattr(genbench.evaluate, "sample_share", never)
    cfg = compose_eval(
        "data=synthetic",
        f"input1={vae_run.ckpt}",
        "metrics.num_samples=10",
        *TINY_EXTRACTOR,
        f"output={tmp_path}/m.json",
        f"paths.cache_dir={tmp_path}/cache",
    )
    with pytest.raises(GenbenchError, match=r"FID needs more samples than feature dimensions.*metrics\.num_samples"):
        evaluate(cfg)
