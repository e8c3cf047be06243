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

Two training aids change only the objective that is minimised, never the bounds that are reported
(``val/neg_elbo``, bits/dim: always the true ELBO, beta = 1, no free bits): KL warm-up
(``kl_warmup_steps``: beta rises linearly from ``kl_warmup_start`` to ``beta``, a function of the
optimiser step alone, so a resumed run anneals exactly as an uninterrupted one; Bowman et al., 2016)
and free bits (``free_bits``: each latent dimension's batch-averaged KL counts at least that many
nats, so the optimiser gains nothing by collapsing a dimension below it; Kingma et al., 2016).

A conditional VAE (``conditional=true``) models p(x|y): the class enters the encoder, q(z|x, y), and
the decoder, p(x|z, y), with the prior N(0, I) shared by all classes.
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
    class_prior_nats,
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


def gaussian_kl_per_dim(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, 1)) of each latent dimension, (n, d): 0.5 * (mu^2 + var - 1 - logvar)."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).flatten(1)


def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, diag(exp(logvar))) || N(0, I)) per sample: 0.5 * sum(mu^2 + var - 1 - logvar)."""
    return gaussian_kl_per_dim(mu, logvar).sum(1)


def free_bits_kl(kl_per_dim: torch.Tensor, free_bits: float) -> torch.Tensor:
    """The KL term free bits train with (Kingma et al., 2016, eq. 15 with one group per dimension):
    sum_j max(free_bits, mean over the batch of KL_j), in nats per image. Equals the batch-mean KL
    when ``free_bits`` is 0; below the floor a dimension's KL has no gradient, so it is free to carry
    information up to ``free_bits`` nats."""
    per_dim = kl_per_dim.mean(0)
    return per_dim.clamp(min=free_bits).sum() if free_bits > 0 else per_dim.sum()


def annealed_beta(step: int | None, beta: float, warmup_steps: int, start: float = 0.0) -> float:
    """The KL weight at optimiser step ``step``: ``start + (beta - start) * step / warmup_steps``
    until ``warmup_steps``, then ``beta`` (also for ``step=None``, the objective once warmed up, and
    when ``warmup_steps`` is 0). A function of the step alone, so a resumed run is bit-exact."""
    if step is None or warmup_steps <= 0 or step >= warmup_steps:
        return beta
    return start + (beta - start) * step / warmup_steps


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
        kl_warmup_steps: int = 0,
        kl_warmup_start: float = 0.0,
        free_bits: float = 0.0,
        sigma: float | None = 0.1,
        channels: int = 1,
        image_size: int = 32,
        sample_batch_size: int = 256,
        channels_last: bool | str = False,
        compile: bool | dict[str, Any] | None = False,  # the config key model.compile
        conditional: bool = False,
        num_classes: int | None = None,
    ) -> None:
        super().__init__(channels, image_size, sample_batch_size, channels_last, compile)
        if likelihood not in LIKELIHOODS:
            raise GenbenchError(
                f"Unknown likelihood '{likelihood}': set model.likelihood to one of {', '.join(LIKELIHOODS)}."
            )
        if kl_warmup_steps < 0 or free_bits < 0 or kl_warmup_start < 0:
            raise GenbenchError(
                f"model.kl_warmup_steps={kl_warmup_steps}, model.kl_warmup_start={kl_warmup_start} and "
                f"model.free_bits={free_bits} must be >= 0 (0 switches warm-up / free bits off)."
            )
        self.enable_conditioning(conditional, num_classes, {"encoder": encoder, "decoder": decoder})
        self.save_hyperparameters(ignore=["encoder", "decoder", "optimizer", "scheduler"])
        self.encoder, self.decoder = encoder, decoder
        self.latent_dim, self.likelihood, self.beta = latent_dim, likelihood, beta
        self.kl_warmup_steps, self.kl_warmup_start, self.free_bits = kl_warmup_steps, kl_warmup_start, free_bits
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

    def decode_mean(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        out = self.decoder(z, labels) if self.conditional else self.decoder(z)
        return torch.sigmoid(out) * 2 - 1 if self.likelihood == "bernoulli" else out

    def _labels(self, labels: Any, n: int, what: str) -> torch.Tensor | None:
        """``labels`` for ``n`` images on the module's device (one class for all, or one per image);
        None for an unconditional model, which refuses them. A conditional model needs them: its
        encoder and decoder see the class."""
        if self.conditional and labels is None:
            raise GenbenchError(
                f"This VAE is conditional: {what} needs the images' classes (labels=..., one class or one per image)."
            )
        classes = self.class_labels(n, labels)
        return None if classes is None else classes.to(self.device)

    def encode(self, x: torch.Tensor, labels: Any = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The approximate posterior q(z|x) = N(mu, diag(exp(logvar))) of images ``x`` (n, C, H, W)
        in [-1, 1] (q(z|x, y) for a conditional VAE, which needs the true ``labels``): returns ``(mu,
        logvar)``, each (n, latent_dim). Gradients flow and the module's mode is kept (call ``eval()``
        first for codes that do not depend on the rest of the batch: the encoder has BatchNorm).
        ``decode_latents(mu)`` is then the mean reconstruction."""
        if x.ndim != 4 or tuple(x.shape[1:]) != self.image_shape:
            raise GenbenchError(
                f"VAE.encode needs images shaped (n, {', '.join(map(str, self.image_shape))}), got {tuple(x.shape)}."
            )
        y = self._labels(labels, len(x), "encode")
        x = x.to(self.device)
        return self.encoder(x, y) if y is not None else self.encoder(x)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, labels: Any = None) -> torch.Tensor:
        """Mean reconstructions ``decode(encode(x).mu)`` in [-1, 1], in eval mode (the mode is
        restored): what the reconstruction grids show. A conditional VAE encodes and decodes with
        the images' true ``labels``."""
        was_training = self.training
        self.eval()
        try:
            y = self._labels(labels, len(x), "reconstruct")
            mu = self.encode(x, y)[0]
            return torch.cat(
                self._in_chunks(
                    len(mu),
                    lambda start, b: self.decode_mean(
                        mu[start : start + b], None if y is None else y[start : start + b]
                    ),
                )
            )
        finally:
            self.train(was_training)

    @property
    def latent_shape(self) -> tuple[int, ...]:  # noqa: D102
        return (self.latent_dim,)

    def _decode_batch(self, z: torch.Tensor, labels: Any = None, **kwargs: Any) -> torch.Tensor:
        """Latents -> mean images. A conditional VAE decodes every latent as the one class ``labels``
        (``decode_latents(z, labels=k)``); without one it decodes as class 0, so an interpolation
        grid stays within one class."""
        if self.conditional:
            if labels is not None and not isinstance(labels, int):
                raise GenbenchError(f"decode_latents(z, labels=k) takes one class k for all latents, got {labels!r}.")
            return self.decode_mean(z, self._labels(labels or 0, len(z), "decode_latents"))
        if labels is not None:
            self.class_labels(len(z), labels)  # an unconditional model refuses classes, in one line
        return self.decode_mean(z)

    def kl_weight(self, step: int | None) -> float:
        """beta at optimiser step ``step`` (KL warm-up; :func:`annealed_beta`); ``None``: the final beta."""
        return annealed_beta(step, self.beta, self.kl_warmup_steps, self.kl_warmup_start)

    def elbo_terms(
        self,
        x: torch.Tensor,
        generator: torch.Generator | None = None,
        labels: torch.Tensor | None = None,
        step: int | None = None,
    ) -> dict[str, torch.Tensor]:
        """Per-image reconstruction NLL and KL (nats), averaged over the batch; ``neg_elbo`` = recon +
        KL (the true bound: beta = 1, no free bits); ``loss`` = recon + beta(step) * KL_train, the
        objective minimised at optimiser step ``step`` (KL_train: the free-bits KL, :func:`free_bits_kl`;
        ``step=None``: beta after warm-up). A conditional VAE needs ``labels`` (a long tensor)."""
        y = labels if self.conditional else None
        if self.conditional and y is None:
            raise GenbenchError("This VAE is conditional: its ELBO needs the images' labels.")
        mu, logvar = self.encoder(x, y) if y is not None else self.encoder(x)
        eps = torch.randn_like(mu) if generator is None else self.randn(*mu.shape, generator=generator)
        z = mu + torch.exp(0.5 * logvar) * eps
        out = self.decoder(z, y) if y is not None else self.decoder(z)
        recon = self.reconstruction_nll(out, x)
        kl_per_dim = gaussian_kl_per_dim(mu, logvar)
        kl = kl_per_dim.sum(1)
        beta = self.kl_weight(step)
        if self.free_bits > 0:
            loss = recon.mean() + beta * free_bits_kl(kl_per_dim, self.free_bits)
        else:
            loss = (recon + beta * kl).mean()
        return {"recon": recon.mean(), "kl": kl.mean(), "loss": loss, "neg_elbo": (recon + kl).mean()}

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
        the Gaussian it is the training loss in other units (logged as ``val/neg_elbo_bits``). For a
        conditional VAE, ``neg_elbo`` bounds -log p(x|y) and log K is added: with the uniform class
        prior, -log p(x) <= -log p(x|y) + log K (:func:`genbench.distributions.class_prior_nats`, which
        the evaluation adds too), so its bits/dim bound p(x) as an unconditional model's do."""
        return (neg_elbo + class_prior_nats(self.num_classes)) / (self.channels * self.image_size**2 * math.log(2))

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
        self,
        x: torch.Tensor,
        cfg: LikelihoodConfig,
        generator: torch.Generator | None = None,
        labels: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Per-image upper bounds on -log p(x) in nats: ``iwae`` = -log mean_k w_k (Burda et al.,
        2016) and ``elbo`` = -mean_k log w_k from the same K samples z_k ~ q(z|x), where
        w_k = p(x|z_k) p(z_k) / q(z_k|x). With the same samples the IWAE bound is never above the
        ELBO estimate (Jensen), and equals it for K = 1. Empty for a non-discretised likelihood.
        A conditional VAE needs the images' true ``labels``: its bounds are of -log p(x|y), and the
        evaluation (genbench.metrics.likelihood) adds log K to report bounds on -log p(x). Call in
        eval mode (the encoder's BatchNorm) under no_grad."""
        if self.likelihood not in DISCRETIZED:
            return {}
        n = x.shape[0]
        y = self._labels(labels, n, "the likelihood bound")
        mu, logvar = self.encoder(x, y) if y is not None else self.encoder(x)
        mu, logvar = mu.double(), logvar.double()
        std = torch.exp(0.5 * logvar)
        chunk = max(1, 1024 // n)  # decode up to ~1024 images at once
        log_w = []
        for start in range(0, cfg.iwae_k, chunk):
            c = min(chunk, cfg.iwae_k - start)
            eps = self.randn(c, n, self.latent_dim, generator=generator).double()
            z = mu + std * eps  # (c, n, d)
            zs = z.flatten(0, 1).to(x.dtype)
            out = self.decoder(zs, y.repeat(c)) if y is not None else self.decoder(zs)
            log_px = DISCRETIZED[self.likelihood](x.repeat(c, 1, 1, 1), out, self.log_sigma).flatten(1).sum(1)
            log_px = log_px.view(c, n)  # float64 throughout
            log_pz = (-0.5 * z**2).sum(-1)
            log_qz = (-0.5 * eps**2 - 0.5 * logvar).sum(-1)  # the (2 pi) terms cancel with log_pz's
            log_w.append(log_px + log_pz - log_qz)
        log_w = torch.cat(log_w)
        return {"iwae": -logmeanexp(log_w, 0), "elbo": -log_w.mean(0)}

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> dict[str, torch.Tensor]:
        terms = self.elbo_terms(batch[0], labels=batch[1] if self.conditional else None, step=self.global_step)
        if self.logs_this_step():  # self.log costs ~1 ms per value: only on the steps loggers write
            self.log_dict({f"train/{k}": v for k, v in terms.items() if k != "loss"})
            self.log("train/loss", terms["loss"], prog_bar=True)
        return terms

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        g = torch.Generator().manual_seed(batch_idx)  # the same z noise every epoch
        # val/loss: the objective once warmed up (beta, free bits), so checkpoints compare one objective;
        # val/neg_elbo and the bits/dim: the true bound (beta = 1, no free bits)
        terms = self.elbo_terms(batch[0], generator=g, labels=batch[1] if self.conditional else None)
        self.log_dict({f"val/{k}": v for k, v in terms.items()}, sync_dist=True)
        bits_key = "val/bpd" if self.likelihood in DISCRETIZED else "val/neg_elbo_bits"
        self.log(bits_key, self.bits_per_dim(terms["neg_elbo"]), sync_dist=True)

    def _sample_batch(
        self, n: int, generator: torch.Generator | None, labels: torch.Tensor | None = None, **kwargs: Any
    ) -> torch.Tensor:
        return self.decode_mean(self.randn(n, self.latent_dim, generator=generator), labels)


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
    conditional=True,
    cpu_bf16_speedup=1.49,  # measured on an Intel Xeon with AMX-BF16 (docs/performance.md)
    tiny_overrides=("model.encoder.width=8", "model.decoder.width=8", "model.latent_dim=8"),
    schema_rules=(
        Rule("model.latent_dim", integer(1), "32"),
        Rule("model.*.latent_dim", integer(1), "32"),
        Rule("model.beta", number(0), "1.0"),
        Rule("model.kl_warmup_steps", integer(0), "2000"),
        Rule("model.kl_warmup_start", number(0), "0.0"),
        Rule("model.free_bits", number(0), "0.25"),
        Rule("model.decoder.blocks", integer(0), "1"),
        Rule("model.decoder.label_dim", integer(1), "16"),
        Rule("model.sigma", number(0, lo_open=True, null=True), "0.1"),
        Rule(
            "model.likelihood",
            choice("bernoulli", "gaussian", "discretized_logistic", "discretized_gaussian"),
            "discretized_logistic",
        ),
    ),
    menu=(
        ("model.beta", "beta"),
        ("model.kl_warmup_steps", "KL warm-up steps"),
        ("model.free_bits", "free bits"),
        ("model.decoder._target_", "decoder"),
        ("model.decoder.blocks", "decoder blocks"),
        ("model.latent_dim", "latent dim"),
        ("model.optimizer.lr", "lr"),
        ("model.conditional", "conditional"),
    ),
)
