"""GPU smoke tests: each family trains a few steps with `trainer=gpu` (fp32, and bf16/16-mixed) and samples on
the GPU; DDIM sampling with a CPU generator is reproducible there. Skipped where no GPU is visible."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from omegaconf import open_dict

from genbench.config import build
from genbench.diffusion import DDIMSampler
from genbench.models import load_model_from_checkpoint, read_checkpoint
from genbench.train import train

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


class SampleProbe(pl.Callback):
    """Built by train() from the config (callbacks.probe): samples the trained model where it trained."""

    last: SampleProbe | None = None

    def __init__(self) -> None:
        SampleProbe.last = self

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.precision = trainer.precision
        self.model_device = pl_module.device
        self.samples = pl_module.sample(8, generator=torch.Generator().manual_seed(0))


def _check_images(x: torch.Tensor, shape: tuple[int, int, int]) -> None:
    assert x.shape == (8, *shape) and x.dtype == torch.float32
    assert torch.isfinite(x).all() and x.min() >= -1 and x.max() <= 1
    assert x.std() > 0  # not a constant image


@pytest.mark.parametrize("reduced", [False, True], ids=["fp32", "bf16"])
@pytest.mark.parametrize("family", ["gan", "vae", "ddpm"])
def test_each_family_trains_and_samples_on_gpu(family: str, reduced: bool, train_cfg, tmp_path: Path) -> None:
    """trainer=gpu's fp32 default, and the reduced precision ${gpu_precision:} picks (bf16/16-mixed)."""
    extra = ["trainer.precision=${gpu_precision:}"] if reduced else []
    cfg = train_cfg(f"model={family}", "trainer=gpu", *extra)  # data=synthetic, debug=fast, tiny networks
    with open_dict(cfg):
        cfg.callbacks.probe = {"_target_": f"{__name__}.SampleProbe"}
    SampleProbe.last = None
    want = ("bf16-mixed", "16-mixed") if reduced else ("32-true",)
    assert cfg.trainer.accelerator == "gpu" and cfg.trainer.precision in want
    metrics = train(cfg)
    probe = SampleProbe.last
    assert probe is not None and probe.precision == cfg.trainer.precision

    assert metrics["family"] == family and metrics["global_step"] == 6
    losses = {k: v for k, v in metrics.items() if k.startswith("train/") and "loss" in k}
    assert losses and all(math.isfinite(v) for v in losses.values()), losses
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert last.is_file() and read_checkpoint(last)["genbench"]["family"] == family

    shape = (cfg.data.channels, cfg.data.image_size, cfg.data.image_size)
    assert probe.model_device.type == "cuda" and probe.samples.device.type == "cuda"
    _check_images(probe.samples, shape)
    # the checkpoint rebuilds the model, which samples on the GPU too
    model = load_model_from_checkpoint(last).to("cuda")
    x = model.sample(8, generator=torch.Generator().manual_seed(0))
    assert x.device.type == "cuda"
    _check_images(x, shape)


def test_ddim_sampling_on_gpu_is_reproducible_with_a_cpu_generator(train_cfg, monkeypatch) -> None:
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", True)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    model = build(train_cfg("model=ddpm").model, "model").to("cuda")
    for eta in (0.0, 1.0):  # eta=1 draws fresh noise from the generator at every step
        sampler = DDIMSampler(steps=5, eta=eta)

        def draw(seed: int, sampler: DDIMSampler = sampler) -> torch.Tensor:
            return model.sample(8, generator=torch.Generator().manual_seed(seed), sampler=sampler)

        a, b, c = draw(0), draw(0), draw(1)
        assert a.device.type == "cuda" and a.shape == (8, *model.image_shape)
        assert torch.equal(a, b), f"eta={eta}: the same CPU generator seed gave different images on the GPU"
        assert not torch.equal(a, c)


@pytest.mark.parametrize("family", ["gan", "vae", "ddpm"])
def test_latent_grids_on_gpu(family: str, train_cfg, tmp_path: Path) -> None:
    """The first GPU run of the benchmark (H100, 2026-11-26) failed every training job at its end:
    slerp mixed a CPU tensor of interpolation weights with CUDA latents. The grids of a model on the
    GPU are drawn there and equal the same model's grids on the CPU up to float rounding."""
    from torchvision.io import read_image

    from genbench.latents import write_latent_grids

    model = build(train_cfg(f"model={family}").model, "model").eval()
    real = torch.randint(0, 256, (4, *model.image_shape), dtype=torch.uint8)
    kw = {"sampler": DDIMSampler(steps=2, eta=0.0)} if family == "ddpm" else {}
    on_cpu = write_latent_grids(model, tmp_path / "cpu", real=real, n_rows=2, n_steps=3, **kw)
    on_gpu = write_latent_grids(model.to("cuda"), tmp_path / "cuda", real=real, n_rows=2, n_steps=3, **kw)
    assert on_gpu.keys() == on_cpu.keys() == ({"interp", "recon"} if family == "vae" else {"interp"})
    for key in on_cpu:
        a, b = read_image(str(on_cpu[key])).int(), read_image(str(on_gpu[key])).int()
        assert a.shape == b.shape and (a - b).abs().max() <= 2, key  # 8-bit pixels, float rounding apart
