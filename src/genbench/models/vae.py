"""Convolutional VAE trained by maximising the ELBO (Kingma & Welling, 2014).

loss = -ELBO = E_q[-log p(x|z)] + beta * KL(q(z|x) || N(0, I)), per image, with one
reparameterised sample of z and the KL in closed form. Likelihoods on pixels mapped from
[-1, 1]: ``bernoulli`` (decoder logits, targets in [0, 1]) or ``gaussian`` (decoder means in
[-1, 1], a fixed ``sigma`` or, with sigma=null, one learned scalar as in the sigma-VAE).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from genbench import GenbenchError
from genbench.models.base import GenerativeModel, OptimizerFactory, SchedulerFactory

LIKELIHOODS = ("bernoulli", "gaussian")


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
    ) -> None:
        super().__init__(channels, image_size, sample_batch_size)
        if likelihood not in LIKELIHOODS:
            raise GenbenchError(f"Unknown likelihood '{likelihood}': set model.likelihood to bernoulli or gaussian.")
        self.save_hyperparameters(ignore=["encoder", "decoder", "optimizer", "scheduler"])
        self.encoder, self.decoder = encoder, decoder
        self.latent_dim, self.likelihood, self.beta = latent_dim, likelihood, beta
        learn = likelihood == "gaussian" and sigma is None
        init = 0.0 if sigma is None else math.log(sigma)
        self.log_sigma = nn.Parameter(torch.tensor(init), requires_grad=learn)
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler

    def configure_optimizers(self) -> Any:
        params = [p for p in self.parameters() if p.requires_grad]
        return self.build_optimizer(self.optimizer_factory, self.scheduler_factory, params)

    def decode_mean(self, z: torch.Tensor) -> torch.Tensor:
        out = self.decoder(z)
        return torch.sigmoid(out) * 2 - 1 if self.likelihood == "bernoulli" else out

    def elbo_terms(self, x: torch.Tensor, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Per-image reconstruction NLL and KL (nats), averaged over the batch, and -ELBO."""
        mu, logvar = self.encoder(x)
        eps = torch.randn_like(mu) if generator is None else self.randn(*mu.shape, generator=generator)
        z = mu + torch.exp(0.5 * logvar) * eps
        out = self.decoder(z)
        recon = bernoulli_nll(out, x) if self.likelihood == "bernoulli" else gaussian_nll(out, x, self.log_sigma)
        kl = gaussian_kl(mu, logvar)
        return {
            "recon": recon.mean(),
            "kl": kl.mean(),
            "loss": (recon + self.beta * kl).mean(),
            "neg_elbo": (recon + kl).mean(),
        }

    def bits_per_dim(self, neg_elbo: torch.Tensor) -> torch.Tensor:
        """-ELBO in bits per dimension. For the Gaussian, the density on [-1, 1] is converted to one
        on the 0..255 pixel scale (+ log 127.5 per dim) so it is comparable with the literature;
        for the Bernoulli it is bits per binarised pixel probability."""
        dims = self.channels * self.image_size**2
        nats = neg_elbo / dims + (math.log(127.5) if self.likelihood == "gaussian" else 0.0)
        return nats / math.log(2)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> dict[str, torch.Tensor]:
        terms = self.elbo_terms(batch[0])
        self.log_dict({f"train/{k}": v for k, v in terms.items() if k != "loss"})
        self.log("train/loss", terms["loss"], prog_bar=True)
        return terms

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        g = torch.Generator().manual_seed(batch_idx)  # the same z noise every epoch
        terms = self.elbo_terms(batch[0], generator=g)
        self.log_dict({f"val/{k}": v for k, v in terms.items()}, sync_dist=True)
        self.log("val/bpd", self.bits_per_dim(terms["neg_elbo"]), sync_dist=True)

    def _sample_batch(self, n: int, generator: torch.Generator | None, **kwargs: Any) -> torch.Tensor:
        return self.decode_mean(self.randn(n, self.latent_dim, generator=generator))
