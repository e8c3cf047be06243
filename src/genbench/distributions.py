"""Probability maths of 8-bit images, below both the models that train on it and the metrics that
report it: discretised log-likelihoods (Gaussian and logistic, each level's bin of width 2/255 on
the [-1, 1] scale, the end bins extended to +-infinity), the Gaussian KL, the IWAE's log-mean-exp
and the conversion of nats to bits/dim; and :class:`LikelihoodConfig`, the options an evaluation
passes to a family's ``likelihood_bounds``. Pure functions of tensors: nothing here imports
``genbench.models`` or ``genbench.metrics`` (:mod:`genbench.metrics.likelihood` evaluates with it).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F

from genbench.errors import GenbenchError

#: pixel levels of 8-bit images
LEVELS = 256
#: half the width of one level's bin on the [-1, 1] scale (levels at -1 + 2k/255)
HALF_BIN = 1.0 / (LEVELS - 1)


@dataclass(frozen=True)
class LikelihoodConfig:
    """The ``likelihood`` options of an evaluation. Each family reads the options of its bounds:
    ``iwae_k`` an importance-weighted bound, ``timesteps`` a diffusion bound (>= the schedule's T
    evaluates every timestep: an exact sum over t, only the q(x_t|x_0) noise is random),
    ``ode_steps`` a bound through a probability-flow ODE (its Heun steps), and ``ode`` whether a
    family that has one beside its own bound (a diffusion model) computes it too."""

    enabled: bool = True
    num_images: int = 500  # test images used (a fixed, seeded subset)
    iwae_k: int = 100  # importance samples of an IWAE bound
    timesteps: int = 50  # diffusion: Monte-Carlo timesteps per image
    ode_steps: int = 50  # probability-flow ODE bounds: Heun steps
    ode: bool = False  # also the ODE bound where it is a second bound (a diffusion model's): costly
    batch_size: int = 100

    def __post_init__(self) -> None:
        for name in ("num_images", "iwae_k", "timesteps", "ode_steps", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise GenbenchError(f"likelihood.{name}={value!r}: it must be a whole number >= 1.")
        for name in ("enabled", "ode"):
            if not isinstance(getattr(self, name), bool):
                raise GenbenchError(f"likelihood.{name}={getattr(self, name)!r}: use true or false.")

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


def nats_to_bits_per_dim(nats: torch.Tensor | float, dims: int) -> torch.Tensor | float:
    """A per-image negative log-likelihood in nats -> bits per dimension (``dims`` = C*H*W).

    Only meaningful for a probability of the 8-bit integers (a discretised model): no ``+ log 127.5``
    Jacobian term, which would be needed for a *density* on the [-1, 1] scale."""
    return nats / (dims * math.log(2))


def class_prior_nats(num_classes: int | None) -> float:
    """What turns a bound on -log p(x|y) into one on -log p(x) under a uniform prior over
    ``num_classes`` classes: log K nats per image (0 for an unconditional model, None). Here, below
    both the models (a conditional model's logged bits/dim) and the evaluation, so both add the same."""
    return 0.0 if num_classes is None else math.log(num_classes)


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
    2017, one component; the IAF decoder of Kingma et al. 2016). ``dtype`` as for the Gaussian."""
    return _discretized_log_likelihood(x, mean, log_scale, _logistic_log_cdf, _logistic_log_pdf, dtype)
