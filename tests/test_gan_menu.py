"""The GAN's options (spectral norm, lazy R1, DiffAugment, EMA generator, TTUR) and its class
conditioning (conditional BatchNorm generator, projection discriminator), each checked against an
independent computation, and all of them together through the real training path."""

from __future__ import annotations

from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from torch import nn

from conftest import compose_train
from genbench import GenbenchError
from genbench.config import build
from genbench.models import load_model_from_checkpoint
from genbench.models.gan import GAN, discriminator_loss, r1_penalty
from genbench.nets.dcgan import ConditionalBatchNorm2d, DCGANDiscriminator, DCGANGenerator
from genbench.nets.diffaugment import DiffAugment, brightness, color, contrast, cutout, translation
from genbench.registry import get_family
from genbench.schema import validate_config
from genbench.train import train
from test_train import _DGradProbe, _GANStepRecorder

#: every option on at once (R1 every 2nd D step so a short run sees both kinds of D step)
ALL_OPTIONS = (
    "model.discriminator.spectral_norm=true",
    "model.r1_gamma=0.5",
    "model.r1_every=2",
    "model.diffaugment=[color,translation,cutout]",
    "model.g_ema_decay=0.2",  # low, so the EMA's warm-up and its plain decay both show in 6 updates
    "model.conditional=true",
    "model.loss=hinge",
)


def _gan(*, spectral_norm: bool = True, num_classes: int | None = None, **kwargs) -> GAN:
    """A tiny GAN built directly (no Trainer): for checks of its formulas."""
    return GAN(
        generator=DCGANGenerator(z_dim=8, width=8, num_classes=num_classes),
        discriminator=DCGANDiscriminator(width=8, spectral_norm=spectral_norm, num_classes=num_classes),
        optimizer_g=torch.optim.Adam,
        optimizer_d=torch.optim.Adam,
        conditional=num_classes is not None,
        num_classes=num_classes,
        **kwargs,
    )


# --- spectral normalisation --------------------------------------------------------------------


def test_spectral_norm_makes_every_discriminator_weight_unit_norm_and_drops_batchnorm() -> None:
    d = DCGANDiscriminator(channels=3, width=8, spectral_norm=True, num_classes=4)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in d.modules())  # SNGAN's D has no BatchNorm
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 4, (8,))
    with torch.no_grad():
        for _ in range(10):  # each training forward runs one power iteration
            d(x, y)
    d.eval()  # eval: the weight from the current estimate, without another iteration
    normalised = [m for m in d.modules() if hasattr(m, "parametrizations")]
    assert len(normalised) == 5  # four convolutions and the class embedding
    for module in normalised:
        w = module.weight.detach()
        sigma = torch.linalg.matrix_norm(w.reshape(w.shape[0], -1), ord=2)
        # power iteration estimates sigma from below, so W / estimate has norm >= 1, approaching 1
        assert 1 - 1e-4 <= sigma <= 1.03, (module, sigma)
    # the default builds the plain DCGAN: BatchNorm, no reparametrised weights
    plain = DCGANDiscriminator(width=8)
    assert any(isinstance(m, nn.BatchNorm2d) for m in plain.modules())
    assert not any(hasattr(m, "parametrizations") for m in plain.modules())


# --- R1 ----------------------------------------------------------------------------------------


def test_r1_penalty_equals_the_gradient_norm_computed_image_by_image() -> None:
    d = DCGANDiscriminator(width=8, spectral_norm=True).eval()  # eval: fixed weights for every call
    real = torch.randn(5, 1, 32, 32)
    x = real.clone().requires_grad_(True)
    got = r1_penalty(d(x), x, gamma=0.7)
    by_hand = []
    for image in real:  # one image at a time: no batch trick
        xi = image[None].clone().requires_grad_(True)
        (g,) = torch.autograd.grad(d(xi)[0], xi)
        by_hand.append(g.pow(2).sum())
    torch.testing.assert_close(got, 0.7 / 2 * torch.stack(by_hand).mean())
    # the graph is kept, so D's optimiser can minimise the penalty
    grads = torch.autograd.grad(got, [p for p in d.parameters()], allow_unused=True)
    assert any(g is not None and g.abs().sum() > 0 for g in grads)


def test_lazy_r1_adds_every_times_the_penalty_only_on_its_steps() -> None:
    model = _gan(r1_gamma=0.3, r1_every=4).eval()
    real, fake = torch.randn(6, 1, 32, 32), torch.randn(6, 1, 32, 32)
    plain = discriminator_loss(model.discriminator(real), model.discriminator(fake), "non_saturating")
    x = real.clone().requires_grad_(True)
    penalty = r1_penalty(model.discriminator(x), x, 0.3)
    with_r1, logs = model.discriminator_objective(real, fake, None, r1=True)
    torch.testing.assert_close(with_r1, plain + 4 * penalty)  # scaled by r1_every, as in StyleGAN2
    torch.testing.assert_close(logs["r1"], penalty)
    without, logs = model.discriminator_objective(real, fake, None, r1=False)
    torch.testing.assert_close(without, plain)
    assert "r1" not in logs


# --- DiffAugment -------------------------------------------------------------------------------


def _shift_by_hand(img: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """img (C, H, W) moved down by dy and right by dx, zeros where nothing moved in."""
    out = torch.zeros_like(img)
    h, w = img.shape[1:]
    out[:, max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = img[
        :, max(-dy, 0) : h - max(dy, 0), max(-dx, 0) : w - max(dx, 0)
    ]
    return out


def test_diffaugment_is_differentiable() -> None:
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64, requires_grad=True)
    augment = DiffAugment("color,translation,cutout")
    # the same draws on every call (a fixed generator), so gradcheck compares one function
    assert torch.autograd.gradcheck(lambda t: augment(t, torch.Generator().manual_seed(3)), (x,))
    augment(x, torch.Generator().manual_seed(3)).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_translation_shifts_each_image_by_at_most_an_eighth() -> None:
    x = torch.arange(1, 64 * 2 * 32 * 32 + 1, dtype=torch.float32).view(64, 2, 32, 32)  # distinct, non-zero
    out = translation(x, torch.Generator().manual_seed(0))
    shifts = []
    for img, got in zip(x, out, strict=True):
        found = [
            (dy, dx) for dy in range(-4, 5) for dx in range(-4, 5) if torch.equal(got, _shift_by_hand(img, dy, dx))
        ]
        assert len(found) == 1  # exactly one shift within 32/8 = 4 pixels explains the output
        shifts.append(found[0])
    assert len(set(shifts)) > 10  # each image draws its own shift


def test_cutout_zeroes_one_clipped_half_size_square_per_image() -> None:
    x = torch.rand(64, 3, 32, 32) + 1  # no zeros of its own
    out = cutout(x, torch.Generator().manual_seed(0))
    for img, got in zip(x, out, strict=True):
        zero = got == 0
        assert torch.equal(zero[0], zero[1]) and torch.equal(zero[0], zero[2])  # the same box in every channel
        rows, cols = zero[0].any(1).nonzero().flatten(), zero[0].any(0).nonzero().flatten()
        box = torch.zeros(32, 32, dtype=torch.bool)
        box[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1] = True
        assert torch.equal(zero[0], box)  # one axis-aligned rectangle
        assert 8 <= len(rows) <= 16 and 8 <= len(cols) <= 16  # a 16x16 square, at worst half clipped
        assert torch.equal(got[:, ~box], img[:, ~box])  # untouched elsewhere


def test_color_on_one_channel_is_brightness_then_contrast() -> None:
    x = torch.randn(4, 1, 16, 16)
    got = color(x, torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(5)
    torch.testing.assert_close(got, contrast(brightness(x, g), g))
    # on colour images saturation joins in and changes the result
    x3 = x.repeat(1, 3, 1, 1) + torch.randn(4, 3, 16, 16)
    g = torch.Generator().manual_seed(5)
    assert not torch.allclose(color(x3, torch.Generator().manual_seed(5)), contrast(brightness(x3, g), g))


# --- conditioning ------------------------------------------------------------------------------


def test_projection_discriminator_is_psi_plus_class_embedding_inner_product() -> None:
    d = DCGANDiscriminator(channels=3, width=8, num_classes=5).eval()
    x, y = torch.randn(6, 3, 32, 32), torch.tensor([0, 1, 2, 3, 4, 2])
    h = d.features(x)  # phi(x): (6, 32, 4, 4)
    psi = (h * d.net[-1].weight[0]).sum(dim=(1, 2, 3))  # the final 4x4 convolution is a dot product
    projection = (d.embed.weight[y] * h.flatten(1)).sum(1)
    torch.testing.assert_close(d(x, y), psi + projection)
    # the class enters only through <embed(y), phi(x)>
    torch.testing.assert_close(
        d(x, torch.full((6,), 1)) - d(x, torch.full((6,), 3)), h.flatten(1) @ (d.embed.weight[1] - d.embed.weight[3])
    )


def test_conditional_batchnorm_is_batchnorm_with_a_gain_and_bias_per_class() -> None:
    cbn = ConditionalBatchNorm2d(4, num_classes=3)
    with torch.no_grad():
        cbn.gain.weight.copy_(torch.randn(3, 4))
        cbn.bias.weight.copy_(torch.randn(3, 4))
    x, y = torch.randn(10, 4, 5, 5), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 0])
    mean, var = x.mean(dim=(0, 2, 3), keepdim=True), x.var(dim=(0, 2, 3), unbiased=False, keepdim=True)
    by_hand = (x - mean) / torch.sqrt(var + 1e-5) * cbn.gain.weight[y][:, :, None, None]
    by_hand = by_hand + cbn.bias.weight[y][:, :, None, None]
    torch.testing.assert_close(cbn(x, y), by_hand)


def test_networks_check_their_class_inputs() -> None:
    with pytest.raises(GenbenchError, match="unconditional"):
        DCGANGenerator(z_dim=8, width=8)(torch.randn(2, 8), torch.tensor([0, 1]))
    with pytest.raises(GenbenchError, match="class-conditional"):
        DCGANDiscriminator(width=8, num_classes=3)(torch.randn(2, 1, 32, 32))
    with pytest.raises(GenbenchError, match="num_classes >= 2"):
        DCGANGenerator(num_classes=1)
    with pytest.raises(GenbenchError, match="generator has num_classes=None"):
        GAN(DCGANGenerator(z_dim=8, width=8), DCGANDiscriminator(width=8, num_classes=3), torch.optim.Adam,
            torch.optim.Adam, conditional=True, num_classes=3)  # fmt: skip
    assert get_family("gan").conditional


# --- all options through Lightning's loop: update isolation, R1 schedule, augmentation, EMA ----


class _Watch(pl.Callback):
    """Records, per batch, whether R1 was applied, every discriminator input's provenance and G's
    weights after each G step (before the EMA follows them)."""

    def __init__(self) -> None:
        self.r1_batches: list[bool] = []
        self.d_inputs_augmented: list[bool] = []
        self.g_after_step: list[list[torch.Tensor]] = []
        self.ema_at_start: list[torch.Tensor] = []

    def on_train_start(self, trainer, pl_module) -> None:
        self.ema_at_start = [p.detach().clone() for p in pl_module.generator_ema.shadow.parameters()]
        augmented: list[torch.Tensor] = []
        pl_module.augment.register_forward_hook(lambda m, args, out: augmented.append(out))
        pl_module.discriminator.register_forward_pre_hook(
            lambda m, args: self.d_inputs_augmented.append(any(args[0] is a for a in augmented)) if m.training else None
        )
        opt_g = trainer.optimizers[0]
        opt_g.register_step_post_hook(
            lambda *_: self.g_after_step.append([p.detach().clone() for p in pl_module.generator.parameters()])
        )

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.r1_batches.append("r1" in outputs)


def test_all_options_keep_update_isolation_and_apply_r1_augmentation_and_ema_as_specified() -> None:
    cfg = compose_train(["data=synthetic", "model=gan", "model.generator.width=8", "model.discriminator.width=8",
                         "model.generator.z_dim=16", "model.channels_last=false", *ALL_OPTIONS])  # fmt: skip
    model, dm = build(cfg.model, "model"), build(cfg.data, "data")
    recorder, probe, watch = _GANStepRecorder(), _DGradProbe(), _Watch()
    pl.Trainer(
        max_steps=12,  # 6 batches: a D and a G step each
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        callbacks=[recorder, probe, watch],
        enable_progress_bar=False,
        enable_model_summary=False,
    ).fit(model, datamodule=dm)
    # the D step leaves G unchanged and vice versa; G's backward leaves D's gradients alone
    assert [e[0] for e in recorder.events] == ["d", "g"] * 6
    assert all(d_moved and not g_moved for net, g_moved, d_moved in recorder.events if net == "d")
    assert all(g_moved and not d_moved for net, g_moved, d_moved in recorder.events if net == "g")
    assert probe.touched == [False] * 6
    # lazy R1 on D steps 0, 2, 4 only; the counter carries on in the state dict
    assert watch.r1_batches == [True, False] * 3 and int(model.r1_d_steps) == 6
    # every image D saw in training (real and fake in the D step, fake in the G step) was augmented
    assert watch.d_inputs_augmented == [True] * 18
    # EMA: after G step n, ema = d_n * ema + (1 - d_n) * G with d_n = min(decay, (1 + n) / (10 + n))
    ema = watch.ema_at_start
    for n, g_params in enumerate(watch.g_after_step):
        d = min(0.2, (1 + n) / (10 + n))
        ema = [d * e + (1 - d) * p for e, p in zip(ema, g_params, strict=True)]
    for want, got in zip(ema, model.generator_ema.shadow.parameters(), strict=True):
        torch.testing.assert_close(got, want)
    assert int(model.generator_ema.num_updates) == 6
    for b_ema, b in zip(model.generator_ema.shadow.buffers(), model.generator.buffers(), strict=True):
        assert torch.equal(b_ema, b)  # BatchNorm statistics follow the generator's
    # sample() draws from the EMA generator, not the trained one
    z = model.randn(8, model.z_dim, generator=torch.Generator().manual_seed(1))
    labels = torch.arange(8) % 4
    samples = model.sample(8, generator=torch.Generator().manual_seed(1), labels=labels)
    with torch.no_grad():
        ema_images, raw_images = model.generator_ema.shadow(z, labels), model.generator.eval()(z, labels)
    # tight tolerances: a tiny generator's images are small (|x| ~ 1e-3), and so is the EMA's lag
    torch.testing.assert_close(samples, ema_images, rtol=1e-5, atol=1e-8)
    assert not torch.allclose(samples, raw_images, rtol=1e-3, atol=1e-8)


def test_learning_rates_of_generator_and_discriminator_are_independent() -> None:
    cfg = compose_train(["data=synthetic", "model=gan", "model.optimizer_g.lr=1.0e-4", "model.optimizer_d.lr=4.0e-4"])
    opt_g, opt_d = build(cfg.model, "model").configure_optimizers()[0]
    assert opt_g.param_groups[0]["lr"] == 1.0e-4 and opt_d.param_groups[0]["lr"] == 4.0e-4


# --- the real entry point: train, sample by class, resume exactly ------------------------------


def test_conditional_gan_with_every_option_trains_samples_by_class_and_resumes_exactly(
    train_cfg, tmp_path: Path
) -> None:
    options = (*ALL_OPTIONS, "callbacks.sample_grid=null", "trainer.limit_val_batches=0", "trainer.max_steps=10")
    train(train_cfg("model=gan", *options, output_dir=tmp_path / "straight"))  # 5 batches
    # a real SIGTERM at the start of batch 3: last.ckpt is saved at the next batch boundary and the run
    # stops (exit 143), as after a kill by a scheduler
    stop = "+callbacks.stop={_target_: signal_helpers.SignalAt, batch: 3, signal_name: SIGTERM}"
    with pytest.raises(SystemExit) as stopped:
        train(train_cfg("model=gan", *options, stop, output_dir=tmp_path / "resumed"))
    assert stopped.value.code == 143
    saved = torch.load(tmp_path / "resumed" / "checkpoints" / "last.ckpt", weights_only=False)
    # saved at the batch boundary that handled the signal: mid-epoch, two optimiser steps per batch
    assert saved["global_step"] == 2 * saved["genbench_resume"]["batches_done"] in (6, 8)
    train(train_cfg("model=gan", *options, "ckpt_path=auto", output_dir=tmp_path / "resumed"))
    straight = torch.load(tmp_path / "straight" / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    resumed = torch.load(tmp_path / "resumed" / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    assert any(k.startswith("generator_ema.") for k in straight) and "r1_d_steps" in straight
    assert straight.keys() == resumed.keys()
    assert [k for k in straight if not torch.equal(straight[k], resumed[k])] == []  # EMA, SN vectors included

    model = load_model_from_checkpoint(tmp_path / "resumed" / "checkpoints" / "last.ckpt")
    assert model.num_classes == 4
    a = model.sample(6, generator=torch.Generator().manual_seed(0), labels=2)
    b = model.sample(6, generator=torch.Generator().manual_seed(0), labels=3)
    assert a.shape == (6, 1, 32, 32) and a.min() >= -1 and a.max() <= 1
    assert not torch.equal(a, b)  # the same z, another class: another image
    z = torch.randn(3, model.z_dim)
    assert torch.equal(model.decode_latents(z), model.decode_latents(z, labels=0))  # class 0 unless asked


def test_unconditional_gan_refuses_labels() -> None:
    model = _gan(spectral_norm=False)
    assert model.sample(3).shape == (3, 1, 32, 32)
    with pytest.raises(GenbenchError, match="unconditional"):
        model.sample(3, labels=1)
    with pytest.raises(GenbenchError, match="unconditional"):
        model.decode_latents(torch.randn(3, 8), labels=1)


# --- configuration -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("model.r1_gamma=-1", "model.r1_gamma"),
        ("model.r1_every=0", "model.r1_every"),
        ("model.diffaugment=blur", "model.diffaugment"),
        ("model.diffaugment=[color,zoom]", "model.diffaugment"),
        ("model.g_ema_decay=1.0", "model.g_ema_decay"),
        ("model.discriminator.spectral_norm=maybe", "model.discriminator.spectral_norm"),
        ("model.num_classes=1", "model.num_classes"),
    ],
)
def test_bad_option_values_stop_in_one_line(override: str, key: str) -> None:
    with pytest.raises(GenbenchError) as info:
        validate_config(compose_train(["data=synthetic", "model=gan", override]))
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"Bad config value: {key}="), message


def test_defaults_build_the_plain_dcgan() -> None:
    """With every option at its default the state dict is the original DCGAN's (old checkpoints
    load) and the discriminator's output is the plain sequential network's."""
    model = build(compose_train(["data=synthetic", "model=gan"]).model, "model")
    keys = set(model.state_dict())
    assert model.generator_ema is None and not model.augment.policy and "r1_d_steps" not in keys
    assert all(k.startswith(("generator.net.", "discriminator.net.")) for k in keys)
    x = torch.randn(4, 1, 32, 32)
    torch.testing.assert_close(model.discriminator(x), model.discriminator.net(x).flatten(), rtol=0, atol=0)
    z = torch.randn(2, 100)
    torch.testing.assert_close(model.generator(z), model.generator.net(z.view(2, 100, 1, 1)), rtol=0, atol=0)


def test_compile_leaves_the_discriminator_eager_when_r1_needs_its_double_backward() -> None:
    model = _gan(r1_gamma=1.0, r1_every=1, compile={"backend": "aot_eager"})
    model.apply_speed_options(torch.device("cpu"))
    assert model.generator._compiled_call_impl is not None and model.discriminator._compiled_call_impl is None
    real, fake = torch.randn(4, 1, 32, 32), torch.randn(4, 1, 32, 32)
    loss, logs = model.discriminator_objective(real, fake, None, r1=True)
    loss.backward()  # a compiled discriminator fails here: aot_autograd has no double backward
    assert "r1" in logs and all(p.grad is not None for p in model.discriminator.parameters())
    assert "discriminator" in _gan(compile={"backend": "aot_eager"}).trained_networks()  # compiled without R1
