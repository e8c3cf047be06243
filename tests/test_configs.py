"""Every config combination composes, and the model of each model x data pair can be built."""

from __future__ import annotations

from itertools import product

import pytest
from omegaconf import OmegaConf

from conftest import compose_train
from genbench import CONFIG_DIR
from genbench.config import build

MODELS = sorted(p.stem for p in (CONFIG_DIR / "model").glob("*.yaml"))
DATA = sorted(p.stem for p in (CONFIG_DIR / "data").glob("*.yaml"))
TRAINERS = sorted(p.stem for p in (CONFIG_DIR / "trainer").glob("*.yaml"))
LOGGERS = sorted(p.stem for p in (CONFIG_DIR / "logger").glob("*.yaml"))
EXPERIMENTS = sorted(p.stem for p in (CONFIG_DIR / "experiment").glob("*.yaml"))
DEBUG = sorted(p.stem for p in (CONFIG_DIR / "debug").glob("*.yaml"))


def test_groups_are_complete() -> None:
    assert set(MODELS) >= {"gan", "vae", "ddpm", "flow_matching"}
    assert set(DATA) >= {"fashion_mnist", "mnist", "cifar10", "folder", "synthetic"}
    assert set(TRAINERS) >= {"cpu", "gpu", "ddp", "ddp_cpu"}
    assert set(LOGGERS) >= {"csv", "tensorboard", "wandb"}


@pytest.mark.parametrize("model,data,trainer", list(product(MODELS, DATA, TRAINERS)))
def test_every_model_data_trainer_combination_composes(model: str, data: str, trainer: str, tmp_path) -> None:
    cfg = compose_train([f"model={model}", f"data={data}", f"trainer={trainer}"], tmp_path)
    from genbench.registry import family_of_target

    assert family_of_target(cfg.model._target_) == model  # the config builds the family of its name
    # image geometry flows from data into every network
    assert cfg.model.channels == cfg.data.channels and cfg.model.image_size == cfg.data.image_size
    if trainer.startswith("ddp"):
        assert cfg.trainer.strategy == "ddp"


@pytest.mark.parametrize("model,data", list(product(MODELS, DATA)))
def test_every_model_builds_for_every_dataset_geometry(model: str, data: str, tmp_path) -> None:
    cfg = compose_train([f"model={model}", f"data={data}"], tmp_path)
    net = build(cfg.model, "model")
    assert net.image_shape == (cfg.data.channels, cfg.data.image_size, cfg.data.image_size)


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiments_compose(name: str, tmp_path) -> None:
    cfg = compose_train([f"experiment={name}"], tmp_path)
    assert cfg.model._target_ and cfg.data._target_


# What each debug preset (conf/debug/<name>.yaml) sets, as dotted keys of the composed config.
DEBUG_SETTINGS = {
    "fast": {
        "trainer.max_epochs": 1,
        "trainer.max_steps": 6,
        "trainer.limit_train_batches": 6,
        "trainer.limit_val_batches": 2,
        "trainer.log_every_n_steps": 1,
        "callbacks.sample_grid.num_samples": 16,
        "callbacks.sample_grid.interpolation_rows": 2,
        "callbacks.sample_grid.sample_kwargs.sampler.steps": 4,
        "model.sample_batch_size": 16,
    },
    "fdr": {"trainer.fast_dev_run": True},
    "overfit": {
        "trainer.overfit_batches": 1,
        "trainer.max_epochs": 50,
        "trainer.log_every_n_steps": 1,
        "callbacks.sample_grid.every_n_epochs": 25,
    },
}


def test_every_debug_preset_is_checked() -> None:
    assert set(DEBUG) == set(DEBUG_SETTINGS)


@pytest.mark.parametrize("name", DEBUG)
def test_debug_presets_compose(name: str, tmp_path) -> None:
    base = compose_train([], tmp_path)
    cfg = compose_train([f"debug={name}"], tmp_path)
    for key, value in DEBUG_SETTINGS[name].items():
        assert OmegaConf.select(cfg, key) == value, key
        assert OmegaConf.select(base, key) != value, f"{key}: the default already is {value}; the check is vacuous"
    # also over an experiment preset: debug is composed last, so it wins; the sampler is the default
    # model's (conf/family_settings/ddpm.yaml's `fast` section): a family without samplers has none
    cfg = compose_train(["experiment=fashion_mnist_gan", f"debug={name}"], tmp_path)
    sampler_keys = "callbacks.sample_grid.sample_kwargs"
    assert all(OmegaConf.select(cfg, k) == v for k, v in DEBUG_SETTINGS[name].items() if not k.startswith(sampler_keys))
    assert OmegaConf.select(cfg, sampler_keys) is None


def test_several_loggers_at_once(tmp_path) -> None:
    cfg = compose_train(["logger=[csv,tensorboard,wandb]"], tmp_path)
    assert set(cfg.logger) == {"csv", "tensorboard", "wandb"}
    cfg = compose_train(["logger=many_loggers"], tmp_path)
    assert set(cfg.logger) == {"csv", "tensorboard", "wandb"}


def test_gpu_trainer_trains_in_fp32_and_the_large_cifar10_ddpm_in_reduced_precision(tmp_path) -> None:
    """The README's promise: `trainer=gpu` is fp32 (measured faster than bf16-mixed for the three
    families' networks on an H100 and an H200); the 35.7M-parameter cifar10_ddpm keeps the reduced
    precision ${gpu_precision:} picks (bf16-mixed with a bf16 GPU, else 16-mixed)."""
    from genbench.devices import gpu_precision

    for family in ("gan", "vae", "ddpm"):
        assert compose_train([f"model={family}", "trainer=gpu"], tmp_path).trainer.precision == "32-true"
    assert compose_train(["trainer=ddp"], tmp_path).trainer.precision == "32-true"
    cifar = compose_train(["experiment=cifar10_ddpm"], tmp_path)
    assert cifar.trainer.accelerator == "gpu" and cifar.trainer.precision == gpu_precision()
    assert gpu_precision() in ("bf16-mixed", "16-mixed")


def test_family_settings_apply_by_section_and_the_command_line_wins(tmp_path) -> None:
    """section=<budget> merges conf/family_settings/<model>/<section>.yaml over the protocol; a
    command-line value still overrides it; a family without that file runs the protocol as it is."""
    base = ["experiment=benchmark/cpu", "section=cpu_images"]
    ddpm = compose_train([*base, "model=ddpm"], tmp_path)
    assert ddpm.data.batch_size == 64 and ddpm.model.net.base_channels == 16  # cpu.yaml, via cpu_images.yaml
    assert ddpm.callbacks.budget.max_images == 29952
    assert compose_train([*base, "model=ddpm", "data.batch_size=32"], tmp_path).data.batch_size == 32
    gan = compose_train([*base, "model=gan"], tmp_path)
    assert gan.data.batch_size == 128 and gan.callbacks.budget.max_images == 43776  # the protocol's batch
    assert (
        compose_train(["experiment=benchmark/cpu", "section=cpu", "model=gan"], tmp_path).callbacks.budget.max_images
        is None
    )
