"""The VAE's options: KL warm-up, free bits, the residual decoder and class conditioning.

Each objective is checked against a computation written out here from the formulas, and the
reported likelihood (val/neg_elbo, bits/dim, the IWAE/ELBO bounds) against the same model with the
options off: the options change what is minimised, never the bound that is reported.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from genbench import GenbenchError
from genbench.config import build
from genbench.data import SyntheticDataModule
from genbench.distributions import LikelihoodConfig, discretized_logistic_log_likelihood
from genbench.metrics.likelihood import evaluate_likelihood
from genbench.models import load_model_from_checkpoint
from genbench.models.vae import free_bits_kl
from genbench.nets.conv_vae import ConvDecoder, ResidualDecoder
from genbench.schema import validate_config
from genbench.train import train


def quiet_trainer(**kwargs) -> pl.Trainer:
    return pl.Trainer(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **kwargs,
    )


def images(n: int, seed: int = 0) -> torch.Tensor:
    """n 1x32x32 images on the [-1, 1] grid of 8-bit levels."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 1, 32, 32), generator=g).float() / 127.5 - 1


def hand_kl_per_dim(mu: torch.Tensor, logvar: torch.Tensor) -> list[float]:
    """Batch-mean KL(N(mu, e^logvar) || N(0, 1)) of each dimension, in Python floats."""
    n, d = mu.shape
    out = []
    for j in range(d):
        total = 0.0
        for i in range(n):
            m, lv = float(mu[i, j]), float(logvar[i, j])
            total += 0.5 * (m * m + math.exp(lv) - 1.0 - lv)
        out.append(total / n)
    return out


def test_kl_warmup_training_loss_is_recon_plus_the_annealed_beta_times_kl(train_cfg) -> None:
    start, beta, warmup = 0.2, 1.5, 4
    cfg = train_cfg(
        "model=vae", f"model.beta={beta}", f"model.kl_warmup_steps={warmup}", f"model.kl_warmup_start={start}"
    )
    vae = build(cfg.model, "model")
    seen: list[tuple[int, dict[str, float]]] = []

    class Record(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            self.step = trainer.global_step

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            seen.append((self.step, {k: float(v.detach()) for k, v in outputs.items()}))

    dm = SyntheticDataModule(num_train=256, batch_size=16)
    quiet_trainer(max_steps=7, limit_val_batches=0, callbacks=[Record()]).fit(vae, datamodule=dm)
    assert [s for s, _ in seen] == list(range(7))
    for step, t in seen:
        beta_s = start + (beta - start) * step / warmup if step < warmup else beta
        assert t["loss"] == pytest.approx(t["recon"] + beta_s * t["kl"], rel=1e-6), step
        assert t["neg_elbo"] == pytest.approx(t["recon"] + t["kl"], rel=1e-6)  # the true bound: beta = 1


def test_free_bits_kl_matches_a_hand_computation() -> None:
    mu = torch.tensor([[0.0, 1.0, 0.05, -2.0], [0.1, -1.0, 0.0, 1.5], [0.0, 0.5, -0.05, 0.3]], dtype=torch.float64)
    logvar = torch.tensor(
        [[0.0, -1.0, 0.1, -3.0], [0.05, 0.2, -0.1, 0.0], [-0.02, 0.0, 0.0, -0.5]], dtype=torch.float64
    )
    kl_per_dim = 0.5 * (mu**2 + logvar.exp() - 1 - logvar)
    per_dim = hand_kl_per_dim(mu, logvar)
    for floor in (0.0, 0.1, 0.5, 10.0):
        want = sum(max(floor, k) for k in per_dim)
        assert float(free_bits_kl(kl_per_dim, floor)) == pytest.approx(want, rel=1e-12)
    assert min(per_dim) < 0.1 < max(per_dim)  # the floor of 0.1 really lifts some dimensions and not others


def test_free_bits_objective_and_the_untouched_bounds(train_cfg) -> None:
    beta, floor = 2.0, 0.4
    cfg = train_cfg("model=vae", f"model.beta={beta}", "model.kl_warmup_steps=100", f"model.free_bits={floor}")
    vae = build(cfg.model, "model").eval()
    x, y = images(8), torch.zeros(8, dtype=torch.long)
    lcfg = LikelihoodConfig(iwae_k=3)
    with torch.no_grad():
        on = vae.elbo_terms(x, torch.Generator().manual_seed(1), step=30)
        mu, logvar = vae.encoder(x)
        kl_train = sum(max(floor, k) for k in hand_kl_per_dim(mu, logvar))
        assert float(on["loss"]) == pytest.approx(float(on["recon"]) + beta * 30 / 100 * kl_train, rel=1e-5)
        bounds_on = vae.likelihood_bounds(x, lcfg, torch.Generator().manual_seed(2))
        plain = (vae.beta, vae.kl_warmup_steps, vae.free_bits)
        vae.beta, vae.kl_warmup_steps, vae.free_bits = 1.0, 0, 0.0  # the same weights, plain ELBO training
        off = vae.elbo_terms(x, torch.Generator().manual_seed(1), step=30)
        bounds_off = vae.likelihood_bounds(x, lcfg, torch.Generator().manual_seed(2))
    val_off = quiet_trainer().validate(vae, DataLoader(TensorDataset(x, y), batch_size=8), verbose=False)[0]
    vae.beta, vae.kl_warmup_steps, vae.free_bits = plain
    val_on = quiet_trainer().validate(vae, DataLoader(TensorDataset(x, y), batch_size=8), verbose=False)[0]
    assert torch.equal(on["neg_elbo"], off["neg_elbo"]) and float(on["loss"]) != float(off["loss"])
    assert all(torch.equal(bounds_on[k], bounds_off[k]) for k in ("iwae", "elbo"))
    assert val_on["val/neg_elbo"] == val_off["val/neg_elbo"] and val_on["val/bpd"] == val_off["val/bpd"]
    assert val_on["val/loss"] != val_off["val/loss"]  # val/loss is the objective after warm-up: beta, free bits


@pytest.mark.parametrize(("size", "channels", "blocks", "classes"), [(8, 1, 0, None), (16, 3, 2, None), (32, 1, 1, 3)])
def test_residual_decoder_shapes(size: int, channels: int, blocks: int, classes: int | None) -> None:
    dec = ResidualDecoder(
        channels, size, latent_dim=6, width=4, blocks=blocks, conditional=classes is not None, num_classes=classes
    )
    y = None if classes is None else torch.tensor([0, 2, 1])
    out = dec(torch.randn(3, 6), y)
    assert out.shape == (3, channels, size, size)
    assert not any(isinstance(m, torch.nn.ConvTranspose2d) for m in dec.modules())
    n_res = sum(type(m).__name__ == "ResidualBlock" for m in dec.modules())
    assert n_res == blocks * (int(math.log2(size)) - 2)  # `blocks` per doubling from 4x4
    assert out.shape == ConvDecoder(channels, size, 6, 4)(torch.randn(3, 6)).shape  # a drop-in replacement


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"image_size": 12}, "power of two"), ({"image_size": 4}, "at least 8"), ({"blocks": -1}, "blocks")],
)
def test_residual_decoder_errors_are_one_line(kwargs: dict, match: str) -> None:
    with pytest.raises(GenbenchError, match=match) as e:
        ResidualDecoder(**kwargs)
    assert "\n" not in str(e.value)


def test_schema_checks_the_new_keys(train_cfg) -> None:
    for bad, key in (
        ("model.free_bits=-0.5", "model.free_bits"),
        ("model.kl_warmup_steps=2.5", "model.kl_warmup_steps"),
        ("model.decoder.blocks=-1", "model.decoder.blocks"),
    ):
        with pytest.raises(GenbenchError, match=key) as e:
            validate_config(train_cfg("model=vae", "model/decoder=residual", bad))
        assert "\n" not in str(e.value)
    with pytest.raises(GenbenchError, match="power of two"):  # through Hydra too, one line
        build(train_cfg("model=vae", "model/decoder=residual", "data.image_size=12").model, "model")


def test_conditional_vae_trains_through_genbench_train(train_cfg, tmp_path: Path) -> None:
    metrics = train(train_cfg("model=vae", "model.conditional=true", "model/decoder=residual"))
    assert all(math.isfinite(v) for k, v in metrics.items() if "loss" in k or "elbo" in k)
    run = tmp_path / "run"
    assert (run / "samples" / "recon_final.png").is_file()  # reconstructed with the true classes
    vae = load_model_from_checkpoint(run / "checkpoints" / "last.ckpt")
    assert vae.num_classes == 4 and isinstance(vae.decoder, ResidualDecoder)  # data=synthetic's 4 classes
    g = torch.Generator()
    a = vae.sample(6, generator=g.manual_seed(0), labels=3)
    b = vae.sample(6, generator=g.manual_seed(0), labels=3)
    c = vae.sample(6, generator=g.manual_seed(0), labels=[0, 1, 2, 3, 0, 1])
    assert a.shape == (6, 1, 32, 32) and torch.equal(a, b) and not torch.equal(a, c)
    with pytest.raises(GenbenchError, match="0..3"):
        vae.sample(2, labels=4)


def test_conditional_vae_uses_the_true_label(train_cfg) -> None:
    vae = build(train_cfg("model=vae", "model.conditional=true").model, "model")
    x, y = images(4, seed=1), torch.tensor([0, 1, 2, 3])
    with torch.no_grad():
        # training: the batch's labels reach the encoder and the decoder
        torch.manual_seed(5)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # self.log outside a Trainer
            trained = vae.training_step((x, y), 0)["loss"]
        torch.manual_seed(5)
        assert torch.equal(trained, vae.elbo_terms(x, labels=y)["loss"])
        torch.manual_seed(5)
        assert not torch.equal(trained, vae.elbo_terms(x, labels=(y + 1) % 4)["loss"])
        # reconstruction: decode(encode(x, y).mu, y), by hand in eval mode
        recon = vae.reconstruct(x, labels=y)
        vae.eval()
        mu = vae.encoder(x, y)[0]
        assert torch.allclose(recon, vae.decoder(mu, y).clamp(-1, 1), atol=1e-6)
        assert not torch.allclose(recon, vae.reconstruct(x, labels=(y + 1) % 4))
    with pytest.raises(GenbenchError, match="classes"):
        vae.reconstruct(x)
    with pytest.raises(GenbenchError, match="labels"):
        vae.elbo_terms(x)


def test_unconditional_vae_refuses_labels(train_cfg) -> None:
    vae = build(train_cfg("model=vae").model, "model")
    x = images(2)
    for call in (
        lambda: vae.sample(2, labels=1),
        lambda: vae.reconstruct(x, labels=[0, 1]),
        lambda: vae.decode_latents(torch.zeros(2, vae.latent_dim), labels=0),
    ):
        with pytest.raises(GenbenchError, match="unconditional"):
            call()


def test_conditional_bits_per_dim_are_of_p_x_given_y_plus_log_k(train_cfg) -> None:
    vae = build(train_cfg("model=vae", "model.conditional=true").model, "model").eval()
    k, n, dims = 4, 6, 32 * 32
    u8 = torch.randint(0, 256, (n, 1, 32, 32), dtype=torch.uint8)
    y = torch.tensor([3, 0, 1, 2, 2, 1])
    x = u8.float() / 127.5 - 1
    with torch.no_grad():
        # -log w for one z ~ q(z|x, y), from the densities written out (float64)
        mu, logvar = (t.double() for t in vae.encoder(x, y))
        eps = torch.randn((1, n, vae.latent_dim), generator=torch.Generator().manual_seed(7), dtype=torch.float32)
        z = mu + (0.5 * logvar).exp() * eps[0].double()
        log_px = discretized_logistic_log_likelihood(x, vae.decoder(z.float(), y), vae.log_sigma).flatten(1).sum(1)
        normal = torch.distributions.Normal(0.0, 1.0)
        log_pz = normal.log_prob(z).sum(1)
        log_qz = torch.distributions.Normal(mu, (0.5 * logvar).exp()).log_prob(z).sum(1)
        hand = -(log_px + log_pz - log_qz)  # bound on -log p(x|y)
        cfg = LikelihoodConfig(num_images=n, iwae_k=1, batch_size=n)
        got = vae.likelihood_bounds(x, cfg, torch.Generator().manual_seed(7), labels=y)
        assert torch.allclose(got["elbo"], hand, rtol=1e-6)
        result = evaluate_likelihood(vae, u8, cfg, torch.Generator().manual_seed(7), labels=y)
    want = ((hand + math.log(k)) / (dims * math.log(2))).mean()  # + log K: a bound on -log p(x)
    assert result["bpd_elbo"] == pytest.approx(float(want), rel=1e-6)
    neg_elbo = torch.tensor(1000.0)
    assert float(vae.bits_per_dim(neg_elbo)) == pytest.approx((1000 + math.log(k)) / (dims * math.log(2)))
    vae.num_classes = None  # the same number for an unconditional model: no correction
    assert float(vae.bits_per_dim(neg_elbo)) == pytest.approx(1000 / (dims * math.log(2)))
