"""genbench.api: the README's notebook example, run as it is written, and the API's own checks."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch

from genbench import PROJECT_ROOT, GenbenchError, api
from genbench.diffusion import DDIMSampler
from genbench.metrics.evaluator import sample_share
from genbench.tiny import TINY_OVERRIDES


def readme_example() -> str:
    """The first python block of the README's "Python API" section."""
    text = (PROJECT_ROOT / "README.md").read_text()
    section = text.split("\n## Python API\n", 1)[1].split("\n## ", 1)[0]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_example_runs_as_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # a notebook's current directory: outputs/ goes there
    monkeypatch.delenv("GENBENCH_ROOT", raising=False)
    monkeypatch.delenv("GENBENCH_CACHE", raising=False)
    ns: dict = {}
    exec(compile(readme_example(), "README.md", "exec"), ns)  # noqa: S102 - the documented code, verbatim

    run, model, images, metrics = ns["run"], ns["model"], ns["images"], ns["metrics"]
    # train(cfg) worked outside @hydra.main: a fresh run directory under ./outputs/train/runs/
    assert run.run_dir.parent == tmp_path / "outputs" / "train" / "runs"
    assert run.checkpoint == run.run_dir / "checkpoints" / "last.ckpt" and run.checkpoint.is_file()
    assert run.metrics["global_step"] == 6 and (run.run_dir / "samples" / "interp_final.png").is_file()
    assert model.family == "vae" and not model.training
    assert images.dtype == torch.uint8 and images.shape == (16, 1, 32, 32)
    assert torch.equal(api.sample(model, 16, seed=0), images) and not torch.equal(api.sample(model, 16, seed=1), images)
    assert ns["mu"].shape == ns["logvar"].shape == (16, model.latent_dim)
    assert ns["grid"].dtype == torch.uint8 and ns["grid"].shape == (3, 2 + 2 * 34, 2 + 6 * 34)
    assert metrics["num_samples"] == 256 and metrics["extractor"].startswith("in-domain")
    assert all(math.isfinite(metrics[k]) for k in ("fid", "kid_mean", "is_mean", "precision", "recall"))
    # a run directory loads like its checkpoint, and images evaluate like the model they came from
    reloaded = api.load(run.run_dir)
    assert all(
        torch.equal(a, b) for a, b in zip(reloaded.state_dict().values(), model.state_dict().values(), strict=True)
    )
    small = {"epochs": 1, "min_steps": 1, "width": 8, "feature_dim": 16}  # the example's: its cached extractor
    again = api.evaluate(api.sample(model, 256, seed=0), data="synthetic", kid_subsets=10, extractor_training=small)
    assert again["fid"] == pytest.approx(metrics["fid"], rel=1e-9)


def test_compose_sets_the_output_dir_and_refuses_bad_overrides(tmp_path: Path) -> None:
    cfg = api.compose(["model=gan", "data=synthetic"], output_dir=tmp_path / "mine")
    assert cfg.paths.output_dir == str(tmp_path / "mine") and cfg.model._target_.endswith("GAN")
    with pytest.raises(GenbenchError, match="modle"):
        api.compose(["modle=gan"], output_dir=tmp_path)


def test_sample_takes_a_ddpm_sampler_by_name_and_refuses_one_for_a_gan(tmp_path: Path) -> None:
    cfg = api.compose(["data=synthetic", "model=ddpm", *TINY_OVERRIDES["ddpm"]], output_dir=tmp_path)
    from hydra.utils import instantiate

    ddpm = instantiate(cfg.model).eval()
    by_name = api.sample(ddpm, 2, seed=3, sampler="ddim", steps=2)
    by_hand, _ = sample_share(ddpm, 2, 3, sampler=DDIMSampler(steps=2))  # the evaluation's images of seed 3
    assert torch.equal(by_name, by_hand)
    with pytest.raises(GenbenchError, match="ancestral, ddim"):
        api.sample(ddpm, 2, sampler="no_such_sampler")  # the error lists the sampler configs
    with pytest.raises(GenbenchError, match="cannot sample a diffusion model"):
        api.sample(ddpm, 2, sampler="euler")  # a flow solver, refused by the model it does not fit
    gan = instantiate(api.compose(["data=synthetic", "model=gan", *TINY_OVERRIDES["gan"]], output_dir=tmp_path).model)
    with pytest.raises(GenbenchError, match="A gan has one way to sample"):
        api.sample(gan, 2, sampler="ddim")


def test_train_claims_a_run_dir_for_a_config_composed_outside_hydra_main(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The root fix behind compose(): ``genbench.train.train`` starts with ``ensure_output_dir``,
    which gives a plain ``hydra.compose`` config (``paths.output_dir`` unresolvable there) a fresh
    run directory, as the command line would."""
    from conftest import compose_train
    from genbench.train import ensure_output_dir

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("GENBENCH_ROOT", raising=False)
    first, second = compose_train(["data=synthetic"]), compose_train(["data=synthetic"])
    with pytest.raises(Exception, match="HydraConfig was not set"):
        str(first.paths.output_dir)  # what train(cfg) met before
    a, b = ensure_output_dir(first), ensure_output_dir(second)
    assert a.parent == tmp_path / "outputs" / "train" / "runs" and a.is_dir() and first.paths.output_dir == str(a)
    assert b != a and b.is_dir()  # two starts never share a directory (same second: <name>_1)
    assert ensure_output_dir(first) == a  # once set, it stays


def test_compose_touches_no_disk_and_train_claims_the_run_dir_later(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Composing a config to look at it creates nothing (no run directory, no outputs/); the run
    directory is claimed when training starts."""
    from omegaconf import OmegaConf

    from genbench.config import print_config_tree
    from genbench.train import ensure_output_dir

    monkeypatch.chdir(tmp_path)
    for var in ("GENBENCH_ROOT", "GENBENCH_CACHE"):
        monkeypatch.delenv(var, raising=False)
    for name in ("train", "eval", "benchmark"):
        cfg = api.compose(["model=vae", "data=synthetic"] if name == "train" else [], config_name=name)
        assert OmegaConf.to_yaml(cfg)  # shown as written
        print_config_tree(cfg)  # and as genbench-train prints it: the run's paths left unresolved
    assert "${paths.output_dir}" in capsys.readouterr().out
    assert list(tmp_path.iterdir()) == []
    run_dir = ensure_output_dir(cfg := api.compose(["model=vae", "data=synthetic"]))
    assert run_dir.parent == tmp_path / "outputs" / "train" / "runs" and cfg.paths.output_dir == str(run_dir)


def test_lightnings_load_from_checkpoint_gives_the_trained_model(train_cfg, tmp_path: Path) -> None:
    from genbench.models import VAE
    from genbench.train import train

    train(train_cfg("model=vae", "callbacks.sample_grid=null", output_dir=tmp_path / "run"))
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    expected = api.load(ckpt)  # genbench's loader: the model config stored in the checkpoint
    model = VAE.load_from_checkpoint(ckpt)
    assert type(model) is VAE and model.state_dict().keys() == expected.state_dict().keys()
    assert all(
        torch.equal(a, b) for a, b in zip(model.state_dict().values(), expected.state_dict().values(), strict=True)
    )
    from genbench.models import DDPM, GenerativeModel

    assert type(GenerativeModel.load_from_checkpoint(ckpt)) is VAE  # the base class takes any family
    with pytest.raises(GenbenchError, match="checkpoint of a vae, not of a DDPM"):
        DDPM.load_from_checkpoint(ckpt)
    with pytest.raises(GenbenchError, match="no hparams_file"):
        VAE.load_from_checkpoint(ckpt, beta=2.0)
