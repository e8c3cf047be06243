"""Speed options (model.channels_last, model.compile), sparse per-step logging and inference-mode
sampling change speed only: the same batch gives the same loss and gradients, a run logs the same
final values, and sampling keeps its RNG contract."""

from __future__ import annotations

import copy
import json
import os
import shutil

import pytest
import torch

from genbench import GenbenchError
from genbench.config import build
from genbench.models.base import GenerativeModel, channels_last_option, compile_options
from genbench.models.gan import discriminator_loss, generator_loss
from genbench.train import train

FAMILIES = ("gan", "vae", "ddpm")


def fixed_loss(model, x: torch.Tensor) -> torch.Tensor:
    """Each family's training loss on a fixed batch with fixed noise (train mode: BatchNorm uses the
    batch's statistics, as in a training step)."""
    g = torch.Generator().manual_seed(1)
    if model.family == "vae":
        return model.elbo_terms(x, generator=g)["loss"]
    if model.family == "ddpm":
        return model.diffusion_loss(model.net, x, generator=g)
    fake = model.generator(torch.randn(x.shape[0], model.z_dim, generator=g))
    d = discriminator_loss(model.discriminator(x), model.discriminator(fake.detach()), model.loss_kind)
    return d + generator_loss(model.discriminator(fake), model.loss_kind)


def loss_and_grads(model, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.train()
    model.zero_grad(set_to_none=True)
    loss = fixed_loss(model, x)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def build_model(train_cfg, family: str, *overrides: str):
    return build(train_cfg(f"model={family}", *overrides).model, "model")


def assert_same(a: tuple, b: tuple, rtol: float = 1e-4) -> None:
    """Same loss, and every gradient the same up to float rounding relative to the largest
    gradient (a bias followed by BatchNorm has a gradient that is zero up to rounding noise, so a
    per-element relative tolerance would compare noise)."""
    torch.testing.assert_close(a[0], b[0], rtol=rtol, atol=1e-6)
    assert a[1].keys() == b[1].keys() and a[1]
    scale = max(float(g.abs().max()) for g in a[1].values())
    for name in a[1]:
        torch.testing.assert_close(
            a[1][name], b[1][name], rtol=rtol, atol=1e-5 * scale, msg=lambda m, n=name: f"{n}: {m}"
        )


@pytest.mark.parametrize("family", FAMILIES)
def test_channels_last_same_loss_and_gradients(train_cfg, family: str) -> None:
    eager = build_model(train_cfg, family)
    fast = copy.deepcopy(eager)
    fast.channels_last = True
    fast.apply_speed_options(torch.device("cpu"))
    convs = [p for p in fast.parameters() if p.ndim == 4 and p.shape[1] > 1 and p.shape[-1] > 1]
    assert convs and all(p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous() for p in convs)
    x = torch.rand(8, 1, 32, 32) * 2 - 1
    assert_same(loss_and_grads(eager, x), loss_and_grads(fast, x.contiguous(memory_format=torch.channels_last)))


def test_gan_generator_stays_contiguous_on_gpu(train_cfg) -> None:
    """channels_last + torch.compile crashed Inductor in the DCGAN generator's backward on an H200:
    on a GPU the generator keeps its layout, the discriminator is converted."""
    gan = build_model(train_cfg, "gan", "model.channels_last=true")
    gan.apply_speed_options(torch.device("cuda"))  # only decides the layout: nothing runs on a GPU
    g_convs = [p for p in gan.generator.parameters() if p.ndim == 4]
    d_convs = [p for p in gan.discriminator.parameters() if p.ndim == 4 and p.shape[1] > 1]
    assert all(p.is_contiguous() for p in g_convs)
    assert all(p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous() for p in d_convs)


@pytest.mark.parametrize("family", FAMILIES)
def test_compile_same_loss_and_gradients(train_cfg, family: str) -> None:
    """``aot_eager`` runs TorchDynamo's capture and AOTAutograd's joint forward/backward graph, all of
    torch.compile but Inductor's code generation (see test_inductor_same_loss)."""
    torch._dynamo.reset()
    eager = build_model(train_cfg, family)
    fast = copy.deepcopy(eager)
    fast.compile_kwargs = compile_options({"backend": "aot_eager"})
    fast.apply_speed_options(torch.device("cpu"))
    nets = fast.trained_networks()
    assert set(nets) == {"gan": {"generator", "discriminator"}, "vae": {"encoder", "decoder"}, "ddpm": {"net"}}[family]
    assert all(net._compiled_call_impl is not None for net in nets.values())
    if family == "ddpm":
        assert fast.ema.shadow._compiled_call_impl is None  # the EMA copy only samples
    x = torch.rand(8, 1, 32, 32) * 2 - 1
    assert_same(loss_and_grads(eager, x), loss_and_grads(fast, x))
    # compile keeps the state-dict keys: checkpoints load with or without it
    assert fast.state_dict().keys() == eager.state_dict().keys()


def _cxx_missing() -> str | None:
    if not any(shutil.which(c) for c in ("g++", "c++", "clang++")):
        return "no C++ compiler: Inductor cannot generate CPU kernels (install g++)"
    if os.environ.get("GENBENCH_TEST_INDUCTOR") != "1":
        return (
            "Inductor's C++ compilation of even the tiny VAE encoder took 133 s on the loaded 2-core machine: "
            "set GENBENCH_TEST_INDUCTOR=1 to run it"
        )
    return None


@pytest.mark.skipif(_cxx_missing() is not None, reason=str(_cxx_missing()))
def test_inductor_same_loss(train_cfg) -> None:
    torch._dynamo.reset()
    eager = build_model(train_cfg, "vae")
    fast = copy.deepcopy(eager)
    fast.channels_last, fast.compile_kwargs = True, {}
    fast.apply_speed_options(torch.device("cpu"))
    x = torch.rand(8, 1, 32, 32) * 2 - 1
    assert_same(loss_and_grads(eager, x), loss_and_grads(fast, x))


def test_channels_last_auto_follows_the_measurements(train_cfg) -> None:
    """The presets' ``channels_last: auto``: on for every family on a CPU (1.07-1.21x there), on a GPU
    only for the DDPM's UNet (1.22x on an H100; the VAE lost, 0.76x, the GAN gained 5 %, within noise)."""
    cases = [("vae", "cpu", True), ("vae", "cuda", False), ("gan", "cuda", False), ("ddpm", "cpu", True)]
    for family, device, converted in [*cases, ("ddpm", "cuda", True)]:
        model = build_model(train_cfg, family, "model.channels_last=auto")
        model.apply_speed_options(torch.device(device))  # decides the layout only: nothing runs on a GPU
        net = getattr(model, {"vae": "encoder", "gan": "discriminator", "ddpm": "net"}[family])
        conv = next(p for p in net.parameters() if p.ndim == 4 and p.shape[1] > 1)
        assert conv.is_contiguous(memory_format=torch.channels_last) is converted, (family, device)
    with pytest.raises(GenbenchError, match=r"model\.channels_last="):
        channels_last_option("yes")


@pytest.mark.parametrize("family", FAMILIES)
def test_compile_leaves_transposed_convolutions_eager_on_gpu(train_cfg, family: str, caplog) -> None:
    """Inductor crashed in the backward of transposed convolutions on CUDA (the VAE decoder on an
    H100, the GAN generator on an H200; pytorch/pytorch#171622): on a GPU those networks stay eager,
    with a warning that names them; on a CPU everything is compiled."""
    torch._dynamo.reset()
    eager_on_gpu = {"gan": {"generator"}, "vae": {"decoder"}, "ddpm": set()}[family]
    for device in ("cuda", "cpu"):
        model = build_model(train_cfg, family)
        model.compile_kwargs = compile_options({"backend": "aot_eager"})
        caplog.clear()
        with caplog.at_level("WARNING", logger="genbench.models"):
            model.apply_speed_options(torch.device(device))  # compile is lazy: nothing runs on a GPU
        nets = model.trained_networks()
        left = {n for n, net in nets.items() if net._compiled_call_impl is None}
        assert left == (eager_on_gpu if device == "cuda" else set()), (family, device)
        warned = [r.getMessage() for r in caplog.records if "left eager" in r.getMessage()]
        assert bool(warned) == bool(left) and all(n in warned[0] for n in left)


def test_compile_option_values() -> None:
    assert compile_options(False) is None and compile_options(None) is None
    assert compile_options(True) == {}
    assert compile_options({"mode": "max-autotune"}) == {"mode": "max-autotune"}
    with pytest.raises(GenbenchError, match=r"model\.compile="):
        compile_options("yes")


def _csv_losses(run) -> dict[int, float]:
    import csv

    with open(run / "csv" / "metrics.csv") as f:
        return {int(r["step"]): float(r["train/loss"]) for r in csv.DictReader(f) if r.get("train/loss")}


def test_sparse_logging_and_channels_last_in_a_run(train_cfg, tmp_path, monkeypatch) -> None:
    """A real fit: calling ``self.log`` only on the steps the logger writes leaves the CSV and the
    final ``train/loss`` of metrics.json exactly as logging every step (Lightning's way) does, and
    ``model.channels_last`` trains through the Trainer (batches converted too) to the same losses."""
    decisions: list[bool] = []
    sparse = GenerativeModel.logs_this_step

    def spy(self) -> bool:
        decisions.append(sparse(self))
        return decisions[-1]

    metrics, logged = {}, {}
    for name, overrides in {
        "every_step": ["model.channels_last=false"],
        "sparse": ["model.channels_last=false"],
        "channels_last": ["model.channels_last=true"],
    }.items():
        monkeypatch.setattr(GenerativeModel, "logs_this_step", (lambda self: True) if name == "every_step" else spy)
        out = tmp_path / name
        cfg = train_cfg(
            "model=vae", "callbacks.sample_grid=null", "trainer.log_every_n_steps=4", *overrides, output_dir=out
        )
        train(cfg)
        metrics[name] = json.loads((out / "metrics.json").read_text())
        logged[name] = _csv_losses(out)
    assert metrics["every_step"]["global_step"] == 6 and logged["every_step"]
    assert False in decisions and True in decisions  # some steps really skipped self.log
    assert logged["sparse"] == logged["every_step"]
    assert metrics["sparse"]["train/loss"] == metrics["every_step"]["train/loss"]
    assert logged["channels_last"].keys() == logged["every_step"].keys()
    for step, loss in logged["every_step"].items():
        assert logged["channels_last"][step] == pytest.approx(loss, rel=1e-4)
    assert metrics["channels_last"]["train/loss"] == pytest.approx(metrics["every_step"]["train/loss"], rel=1e-4)


@pytest.mark.parametrize("family", FAMILIES)
def test_sample_runs_in_inference_mode_and_keeps_rng_contract(train_cfg, family: str) -> None:
    model = build_model(train_cfg, family)
    seen = []
    inner = model._sample_batch

    def spy(*args, **kwargs):
        seen.append(torch.is_inference_mode_enabled())
        return inner(*args, **kwargs)

    model._sample_batch = spy
    a = model.sample(3, generator=torch.Generator().manual_seed(7))
    b = model.sample(3, generator=torch.Generator().manual_seed(7))
    assert seen and all(seen)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not a.is_inference() and a.shape == (3, 1, 32, 32)
    a.mul_(0.5)  # callers may modify the result in place (an inference tensor would refuse)
