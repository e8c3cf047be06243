"""Convolutional VAE trained by maximising the ELBO (Kingma & Welling, 2014).

loss = -ELBO = E_q[-log p(x|z)] + beta * KL(q(z|x) || N(0, I)), per image, with one
reparameterised sample of z and the KL in closed form. Likelihoods on pixels mapped from
[-1, 1]: ``bernoulli`` (decoder logits, targets in [0, 1]) or ``gaussian`` (decoder means in
[-1, 1], a fixed ``sigma`` or, with sigma=null, one learned scalar as in the sigma-VAE), and the
two that are probabilities of the 256 levels of 8-bit pixels, ``discretized_logistic`` and
``discretized_gaussian`` (decoder means, scale ``sigma`` fixed or learned the same way): only these
give a likelihood in bits/dim (genbench.metrics.likelihood). The Bernoulli on grey levels is a
soft-target cross-entropy (a perfect decoder still pays its entropy) and the Gaussian a density on
[-1, 1]: both are training losses, not likelihoods of the images.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from genbench import GenbenchError
from genbench.distributions import (
    LikelihoodConfig,
    discretized_gaussian_log_likelihood,
    discretized_logistic_log_likelihood,
    logmeanexp,
)
from genbench.models.base import GenerativeModel, OptimizerFactory, SchedulerFactory
from genbench.registry import FamilySpec
from genbench.schema import Rule, choice, integer, number

#: likelihoods that are probabilities of 8-bit pixel levels -> their elementwise log-probability
DISCRETIZED = {
    "discretized_logistic": discretized_logistic_log_likelihood,
    "discretized_gaussian": discretized_gaussian_log_likelihood,
}
LIKELIHOODS = ("bernoulli", "gaussian", *DISCRETIZED)


def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, diag(exp(logvar))) || N(0, I)) per sample: 0.5 * sum(mu^2 + var - 1 - logvar)."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).flatten(1).sum(1)


def bernoulli_nll(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """-log p(x|z) per sample for x in [-1, 1] read as Bernoulli probabilities (x + 1) / 2."""
    target = (x + 1) / 2
    return F.binary_cross_entropy_with_logits(logits, target, reduction="none").flatten(1).sum(1)


def gaussian_nll(mean: torch.Tensor, x: torch.Tensor, log_sigma: torch.Tensor) -> torch.Tensor:
    """-log N(x; mean, sigma^2 I) per sample."""
    nll = 0.5 * ((x - mean) / log_sigma.exp()).pow(2) + log_sigma + 0.5 * math.log(2 * math.pi)
    return nll.flatten(1).sum(1)


def discretized_nll(name: str, mean: torch.Tensor, x: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """-log P(x|z) per sample for 8-bit levels x on the [-1, 1] grid: the training loss, computed in
    float32 (half the cost of float64; the evaluation's bounds use float64)."""
    return -DISCRETIZED[name](x, mean, log_scale, dtype=torch.float32).flatten(1).sum(1).to(mean.dtype)


class VAE(GenerativeModel):
    family = "vae"

    def __init__(
        self,
        encoder: nn.Module,
        decoder: nn.Module,
        optimizer: OptimizerFactory,
        scheduler: SchedulerFactory = None,
        latent_dim: int = 32,
        likelihood: str = "bernoulli",
        beta: float = 1.0,
        sigma: float | None = 0.1,
        channels: int = 1,
        image_size: int = 32,
        sample_batch_size: int = 256,
        channels_last: bool | str = False,
        compile: bool | dict[str, Any] | None = False,  # the config key model.compile
    ) -> None:
        super().__init__(channels, image_size, sample_batch_size, channels_last, compile)
        if likelihood not in LIKELIHOODS:
            raise GenbenchError(
                f"Unknown likelihood '{likelihood}': set model.likelihood to one of {', '.join(LIKELIHOODS)}."
            )
        self.save_hyperparameters(ignore=["encoder", "decoder", "optimizer", "scheduler"])
        self.encoder, self.decoder = encoder, decoder
        self.latent_dim, self.likelihood, self.beta = latent_dim, likelihood, beta
        learn = likelihood != "bernoulli" and sigma is None
        # A learned scale moves ~lr per Adam step, so its start matters for short runs: 1 for the
        # Gaussian (the sigma-VAE's), 0.1 (13 grey levels) for the discretised likelihoods.
        init = math.log(sigma) if sigma is not None else (math.log(0.1) if likelihood in DISCRETIZED else 0.0)
        self.log_sigma = nn.Parameter(torch.tensor(init), requires_grad=learn)
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler

    def configure_optimizers(self) -> Any:
        params = [p for p in self.parameters() if p.requires_grad]
        return self.build_optimizer(self.optimizer_factory, self.scheduler_factory, params)

    def decode_mean(self, z: torch.Tensor) -> torch.Tensor:
        out = self.decoder(z)
        return torch.sigmoid(out) * 2 - 1 if self.likelihood == "bernoulli" else out

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The approximate posterior q(z|x) = N(mu, diag(exp(logvar))) of images ``x`` (n, C, H, W)
        in [-1, 1]: returns ``(mu, logvar)``, each (n, latent_dim). Gradients flow and the module's
        mode is kept (call ``eval()`` first for codes that do not depend on the rest of the batch:
        the encoder has BatchNorm). ``decode_latents(mu)`` is then the mean reconstruction."""
        if x.ndim != 4 or tuple(x.shape[1:]) != self.image_shape:
            raise GenbenchError(
                f"VAE.encode needs images shaped (n, {', '.join(map(str, self.image_shape))}), got {tuple(x.shape)}."
            )
        return self.encoder(x.to(self.device))

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Mean reconstructions ``decode(encode(x).mu)`` in [-1, 1], in eval mode (the mode is
        restored): what the reconstruction grids show."""
        was_training = self.training
        self.eval()
        try:
            return self.decode_latents(self.encode(x)[0])
        finally:
            self.train(was_training)

    @property
    def latent_shape(self) -> tuple[int, ...]:  # noqa: D102
        return (self.latent_dim,)

    def _decode_batch(self, z: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        return self.decode_mean(z)

    def elbo_terms(self, x: torch.Tensor, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Per-image reconstruction NLL and KL (nats), averaged over the batch, and -ELBO."""
        mu, logvar = self.encoder(x)
        eps = torch.randn_like(mu) if generator is None else self.randn(*mu.shape, generator=generator)
        z = mu + torch.exp(0.5 * logvar) * eps
        out = self.decoder(z)
        recon = self.reconstruction_nll(out, x)
        kl = gaussian_kl(mu, logvar)
        return {
            "recon": recon.mean(),
            "kl": kl.mean(),
            "loss": (recon + self.beta * kl).mean(),
            "neg_elbo": (recon + kl).mean(),
        }

    def reconstruction_nll(self, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """-log p(x|z) per image (nats) from the decoder output ``out`` for images ``x`` in [-1, 1]."""
        if self.likelihood == "bernoulli":
            return bernoulli_nll(out, x)
        if self.likelihood == "gaussian":
            return gaussian_nll(out, x, self.log_sigma)
        return discretized_nll(self.likelihood, out, x, self.log_sigma)

    def bits_per_dim(self, neg_elbo: torch.Tensor) -> torch.Tensor:
        """-ELBO in bits per dimension (nats / (C*H*W ln 2)). An upper bound on the NLL of 8-bit
        images only for the discretised likelihoods (logged as ``val/bpd``); for the Bernoulli and
        the Gaussian it is the training loss in other units (logged as ``val/neg_elbo_bits``)."""
        return neg_elbo / (self.channels * self.image_size**2 * math.log(2))

    # --- likelihood in bits/dim (genbench.metrics.likelihood) --------------------------------
    def likelihood_description(self, cfg: LikelihoodConfig) -> str:
        """What :meth:`likelihood_bounds` reports, or why there is no likelihood."""
        if self.likelihood not in DISCRETIZED:
            return (
                f"none (VAE trained with the {self.likelihood} likelihood, which is not a probability of "
                "8-bit pixels: train with model.likelihood=discretized_logistic for bits/dim)"
            )
        return f"{self.likelihood.replace('discretized', 'discretised').replace('_', ' ')}, IWAE K={cfg.iwae_k}"

    def likelihood_bounds(
        self, x: torch.Tensor, cfg: LikelihoodConfig, generator: torch.Generator | None = None
    ) -> dict[str, torch.Tensor]:
        """Per-image upper bounds on -log p(x) in nats: ``iwae`` = -log mean_k w_k (Burda et al.,
        2016) and ``elbo`` = -mean_k log w_k from the same K samples z_k ~ q(z|x), where
        w_k = p(x|z_k) p(z_k) / q(z_k|x). With the same samples the IWAE bound is never above the
        ELBO estimate (Jensen), and equals it for K = 1. Empty for a non-discretised likelihood.
        Call in eval mode (the encoder's BatchNorm) under no_grad."""
        if self.likelihood not in DISCRETIZED:
            return {}
        n = x.shape[0]
        mu, logvar = self.encoder(x)
        mu, logvar = mu.double(), logvar.double()
        std = torch.exp(0.5 * logvar)
        chunk = max(1, 1024 // n)  # decode up to ~1024 images at once
        log_w = []
        for start in range(0, cfg.iwae_k, chunk):
            c = min(chunk, cfg.iwae_k - start)
            eps = self.randn(c, n, self.latent_dim, generator=generator).double()
            z = mu + std * eps  # (c, n, d)
            out = self.decoder(z.flatten(0, 1).to(x.dtype))
            log_px = DISCRETIZED[self.likelihood](x.repeat(c, 1, 1, 1), out, self.log_sigma).flatten(1).sum(1)
            log_px = log_px.view(c, n)  # float64 throughout
            log_pz = (-0.5 * z**2).sum(-1)
            log_qz = (-0.5 * eps**2 - 0.5 * logvar).sum(-1)  # the (2 pi) terms cancel with log_pz's
            log_w.append(log_px + log_pz - log_qz)
        log_w = torch.cat(log_w)
        return {"iwae": -logmeanexp(log_w, 0), "elbo": -log_w.mean(0)}

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> dict[str, torch.Tensor]:
        terms = self.elbo_terms(batch[0])
        if self.logs_this_step():  # self.log costs ~1 ms per value: only on the steps loggers write
            self.log_dict({f"train/{k}": v for k, v in terms.items() if k != "loss"})
            self.log("train/loss", terms["loss"], prog_bar=True)
        return terms

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        g = torch.Generator().manual_seed(batch_idx)  # the same z noise every epoch
        terms = self.elbo_terms(batch[0], generator=g)
        self.log_dict({f"val/{k}": v for k, v in terms.items()}, sync_dist=True)
        bits_key = "val/bpd" if self.likelihood in DISCRETIZED else "val/neg_elbo_bits"
        self.log(bits_key, self.bits_per_dim(terms["neg_elbo"]), sync_dist=True)

    def _sample_batch(self, n: int, generator: torch.Generator | None, **kwargs: Any) -> torch.Tensor:
        return self.decode_mean(self.randn(n, self.latent_dim, generator=generator))


#: the VAE as a genbench family (genbench.registry): what generic code knows of it
SPEC = FamilySpec(
    name=VAE.family,
    model=VAE,
    title="VAE",
    order=1,
    colour="tab:blue",
    likelihood="bound",
    has_encoder=True,
    deterministic_sampler=True,
    cpu_bf16_speedup=1.49,  # measured on an Intel Xeon with AMX-BF16 (docs/performance.md)
    tiny_overrides=("model.encoder.width=8", "model.decoder.width=8", "model.latent_dim=8"),
    schema_rules=(
        Rule("model.latent_dim", integer(1), "32"),
        Rule("model.*.latent_dim", integer(1), "32"),
        Rule("model.beta", number(0), "1.0"),
        Rule("model.sigma", number(0, lo_open=True, null=True), "0.1"),
        Rule(
            "model.likelihood",
            choice("bernoulli", "gaussian", "discretized_logistic", "discretized_gaussian"),
            "discretized_logistic",
        ),
    ),
)
