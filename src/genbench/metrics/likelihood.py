"""Test-set negative log-likelihood in bits/dim of 8-bit images, for the families that have one.

The data are 8-bit integers. A model that assigns a *probability* to each of the 256 levels of each
pixel (a discretised decoder: each level's bin of width 2/255 on the [-1, 1] scale, the two end bins
extended to +-infinity, as in PixelCNN++ (Salimans et al., 2017) and DDPM (Ho et al., 2020)) has a
negative log-likelihood in nats that converts to bits/dim by dividing by ``dims * ln 2``, with no
Jacobian term: integrating a density over each bin already removes the [-1, 1] scaling. A uniform
model over the 256 levels scores exactly 8 bits/dim; every number here is an *upper bound* on the
model's true NLL (lower is better):

* the VAE: the ELBO and the importance-weighted bound with K samples (IWAE, Burda et al., 2016),
  which is never looser than the ELBO and tightens as K grows;
* the DDPM: the variational bound L_T + sum_{t>1} L_{t-1} + L_0 of Ho et al. (2020, eq. 5), the
  sum over timesteps estimated without bias from ``timesteps`` uniformly drawn t per image;
* the GAN: an implicit model, no likelihood (stated, not left blank).

A family takes part through two methods (duck-typed, so this module needs no list of families):
``likelihood_description(cfg) -> str`` (what is reported, or ``"none (why)"``) and
``likelihood_bounds(x, cfg, generator) -> dict[str, Tensor]`` (per-image bounds in nats, the
headline bound first; an empty dict when the model has none). A model without them has no likelihood.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F

from genbench import GenbenchError

#: pixel levels of 8-bit images
LEVELS = 256
#: half the width of one level's bin on the [-1, 1] scale (levels at -1 + 2k/255)
HALF_BIN = 1.0 / (LEVELS - 1)
#: what a model without a likelihood reports (the GAN)
NO_LIKELIHOOD = "none (implicit model: no likelihood)"
#: seed of the fixed test subset: the same images for every model and evaluation point
SUBSET_SEED = 1234


@dataclass(frozen=True)
class LikelihoodConfig:
    """The ``likelihood`` options of an evaluation. ``timesteps`` >= the DDPM's T evaluates every
    timestep (exact sum over t, only the q(x_t|x_0) noise is random)."""

    enabled: bool = True
    num_images: int = 500  # test images used (a fixed, seeded subset)
    iwae_k: int = 100  # VAE importance samples
    timesteps: int = 50  # DDPM: Monte-Carlo timesteps per image (t uniform, without replacement)
    batch_size: int = 100

    def __post_init__(self) -> None:
        for name in ("num_images", "iwae_k", "timesteps", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise GenbenchError(f"likelihood.{name}={value!r}: it must be a whole number >= 1.")
        if not isinstance(self.enabled, bool):
            raise GenbenchError(f"likelihood.enabled={self.enabled!r}: use true or false.")

    @classmethod
    def from_mapping(cls, m: Mapping[str, Any] | None) -> LikelihoodConfig:
        """Build from a config mapping (a DictConfig or dict); unknown keys are an error naming them."""
        m = dict(m.items()) if m is not None else {}
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(m) - set(known))
        if unknown:
            raise GenbenchError(
                f"Unknown likelihood option(s) {', '.join(unknown)}: the likelihood options are {', '.join(known)}."
            )
        return cls(**m)


# --- pure functions ----------------------------------------------------------------------------
def nats_to_bits_per_dim(nats: torch.Tensor | float, dims: int) -> torch.Tensor | float:
    """A per-image negative log-likelihood in nats -> bits per dimension (``dims`` = C*H*W).

    Only meaningful for a probability of the 8-bit integers (a discretised model): no ``+ log 127.5``
    Jacobian term, which would be needed for a *density* on the [-1, 1] scale."""
    return nats / (dims * math.log(2))


def logmeanexp(x: torch.Tensor, dim: int) -> torch.Tensor:
    """log(mean(exp(x))) along ``dim`` without overflow: the IWAE estimator's last step."""
    return torch.logsumexp(x, dim) - math.log(x.shape[dim])


def normal_kl(
    mean1: torch.Tensor, logvar1: torch.Tensor, mean2: torch.Tensor | float, logvar2: torch.Tensor | float
) -> torch.Tensor:
    """KL(N(mean1, exp(logvar1)) || N(mean2, exp(logvar2))) elementwise, in nats (Ho et al.'s
    ``normal_kl``): 0.5 * (logvar2 - logvar1 - 1 + exp(logvar1 - logvar2) + (mean1 - mean2)^2 exp(-logvar2))."""
    mean1, logvar1 = torch.as_tensor(mean1), torch.as_tensor(logvar1)
    mean2 = torch.as_tensor(mean2, dtype=mean1.dtype, device=mean1.device)
    logvar2 = torch.as_tensor(logvar2, dtype=mean1.dtype, device=mean1.device)
    return 0.5 * (logvar2 - logvar1 - 1.0 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def _gaussian_log_cdf(z: torch.Tensor) -> torch.Tensor:
    return torch.special.log_ndtr(z)


def _gaussian_log_pdf(z: torch.Tensor) -> torch.Tensor:
    return -0.5 * z**2 - 0.5 * math.log(2 * math.pi)


def _logistic_log_cdf(z: torch.Tensor) -> torch.Tensor:
    return F.logsigmoid(z)


def _logistic_log_pdf(z: torch.Tensor) -> torch.Tensor:
    return -z - 2 * F.softplus(-z)


def _discretized_log_likelihood(
    x: torch.Tensor,
    mean: torch.Tensor,
    log_scale: torch.Tensor,
    log_cdf: Callable[[torch.Tensor], torch.Tensor],
    log_pdf: Callable[[torch.Tensor], torch.Tensor],
    dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """log P(level of x) for a symmetric location-scale distribution binned onto the 256 levels.

    Computed in ``dtype`` from log-CDFs: the bin [a, b] is mirrored into the left half, where the
    log-CDF is accurate, and log(F(b) - F(a)) = log F(b) + log(-expm1(log F(a) - log F(b))). Where
    the two are within 1e-3 of each other (a bin much narrower than the scale) the midpoint rule
    pdf(centre) * width is used instead, as PixelCNN++ does (relative error < 1e-7 there). Level 0
    (x = -1) gets P(X < -1 + 1/255) and level 255 (x = 1) P(X > 1 - 1/255), so the 256
    probabilities sum to one; both come from the same two log-CDFs (log F(b), or log(1 - F(a)))."""
    x, mean, log_scale = (torch.as_tensor(v).to(dtype) for v in (x, mean, log_scale))
    inv_scale = torch.exp(-log_scale)
    centred = x - mean
    upper = (centred + HALF_BIN) * inv_scale
    lower = (centred - HALF_BIN) * inv_scale
    flip = upper + lower > 0  # mirror bins right of the mode: F(b) - F(a) = F(-a) - F(-b)
    a = torch.where(flip, -upper, lower)
    b = torch.where(flip, -lower, upper)
    log_fb, log_fa = log_cdf(b), log_cdf(a)
    gap = log_fa - log_fb  # < 0
    interior = log_fb + torch.log(-torch.expm1(gap.clamp(max=-1e-30)))
    midpoint = log_pdf(centred * inv_scale) + torch.log(2 * HALF_BIN * inv_scale)
    interior = torch.where(gap < -1e-3, interior, midpoint)
    # the edge bins: P(X < upper) and P(X > lower); one is F(b), the other 1 - F(a) with F(a) < 1/2
    complement = torch.log(-torch.expm1(log_fa))
    first = torch.where(flip, complement, log_fb)  # level 0
    last = torch.where(flip, log_fb, complement)  # level 255
    return torch.where(x < -1 + HALF_BIN, first, torch.where(x > 1 - HALF_BIN, last, interior))


def discretized_gaussian_log_likelihood(
    x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor, dtype: torch.dtype = torch.float64
) -> torch.Tensor:
    """Elementwise log-probability (nats) of 8-bit levels ``x`` (on the [-1, 1] grid -1 + 2k/255)
    under N(mean, exp(log_scale)^2) integrated over each level's bin: Ho et al. (2020)'s
    ``discretized_gaussian_log_likelihood`` (their L_0 decoder), with exact CDFs. float64 by default
    (evaluation); training may pass float32, about twice as fast and exact enough for a loss."""
    return _discretized_log_likelihood(x, mean, log_scale, _gaussian_log_cdf, _gaussian_log_pdf, dtype)


def discretized_logistic_log_likelihood(
    x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor, dtype: torch.dtype = torch.float64
) -> torch.Tensor:
    """Elementwise log-probability (nats) of 8-bit levels ``x`` under a logistic with location
    ``mean`` and scale exp(log_scale) integrated over each level's bin (PixelCNN++, Salimans et al.
    2017, one component; the IAF-VAE decoder of Kingma et al. 2016). ``dtype`` as for the Gaussian."""
    return _discretized_log_likelihood(x, mean, log_scale, _logistic_log_cdf, _logistic_log_pdf, dtype)


def mean_and_se(values: torch.Tensor) -> tuple[float, float]:
    """Mean and its standard error (sample std / sqrt(n); 0 for one value)."""
    values = values.double()
    n = values.numel()
    se = float(values.std(correction=1) / math.sqrt(n)) if n > 1 else 0.0
    return float(values.mean()), se


def fixed_subset(n_total: int, n: int) -> torch.Tensor:
    """Indices of the ``n`` test images used (sorted): a seeded permutation, so every model and
    every evaluation point of a run sees the same images."""
    g = torch.Generator().manual_seed(SUBSET_SEED)
    return torch.randperm(n_total, generator=g)[: min(n, n_total)].sort().values


# --- the evaluation ----------------------------------------------------------------------------
def evaluate_likelihood(
    model: Any, images: torch.Tensor, cfg: LikelihoodConfig | None = None, generator: torch.Generator | None = None
) -> dict[str, Any]:
    """Upper bounds on the test NLL of ``model`` in bits/dim of 8-bit images.

    ``images``: uint8 (N, C, H, W) test images; ``cfg.num_images`` of them (a fixed, seeded subset)
    are used. ``generator`` drives the model's sampling noise (default: seeded, so repeated calls
    agree). Returns ``bpd`` (the headline bound), ``bpd_se`` (its standard error over images, which
    includes the Monte-Carlo noise), ``bpd_<bound>`` per bound (``bpd_elbo``/``bpd_iwae`` +
    ``iwae_k`` for the VAE, ``bpd_vlb`` for the DDPM), ``likelihood_images`` and ``likelihood`` (a
    short description); a model without a likelihood returns only ``likelihood`` ("none (...)")."""
    cfg = cfg if cfg is not None else LikelihoodConfig()
    if not isinstance(cfg, LikelihoodConfig):
        cfg = LikelihoodConfig.from_mapping(cfg)
    describe = getattr(model, "likelihood_description", None)
    bounds_of = getattr(model, "likelihood_bounds", None)
    if describe is None or bounds_of is None:
        return {"likelihood": NO_LIKELIHOOD}
    description = describe(cfg)
    if not torch.is_tensor(images) or images.dtype != torch.uint8 or images.ndim != 4:
        got = f"{images.dtype} {tuple(images.shape)}" if torch.is_tensor(images) else type(images).__name__
        raise GenbenchError(f"evaluate_likelihood needs uint8 test images shaped (N, C, H, W), got {got}.")
    expected = tuple(getattr(model, "image_shape", images.shape[1:]))
    if tuple(images.shape[1:]) != expected:
        raise GenbenchError(
            f"The test images are {tuple(images.shape[1:])} but the model makes {expected}: evaluate on "
            "the data the model was trained on (data=..., data.image_size, data.channels)."
        )
    if len(images) == 0:
        raise GenbenchError("evaluate_likelihood got no test images: the data module's test split is empty.")
    if generator is None:
        generator = torch.Generator().manual_seed(0)
    subset = images[fixed_subset(len(images), cfg.num_images)]
    device = getattr(model, "device", torch.device("cpu"))
    was_training = getattr(model, "training", False)
    per_bound: dict[str, list[torch.Tensor]] = {}
    model.eval()
    try:
        with torch.no_grad():
            for start in range(0, len(subset), cfg.batch_size):
                x = subset[start : start + cfg.batch_size].to(device).float().div(127.5).sub(1.0)
                for name, nats in bounds_of(x, cfg, generator).items():
                    per_bound.setdefault(name, []).append(nats.detach().double().cpu())
    finally:
        model.train(was_training)
    if not per_bound:  # e.g. a VAE trained with a likelihood that is no distribution over 8-bit levels
        return {"likelihood": description}
    dims = int(images[0].numel())
    result: dict[str, Any] = {}
    for i, (name, chunks) in enumerate(per_bound.items()):
        mean, se = mean_and_se(nats_to_bits_per_dim(torch.cat(chunks), dims))
        if i == 0:
            result["bpd"], result["bpd_se"] = mean, se
        result[f"bpd_{name}"] = mean
    if "iwae" in per_bound:
        result["iwae_k"] = cfg.iwae_k
    result["likelihood_images"] = len(subset)
    result["likelihood"] = description
    return result
