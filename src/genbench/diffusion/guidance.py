"""Classifier-free guidance (Ho & Salimans, 2022): one network trained on labels and, with some
probability, on a "null" class, so it models both p(x|y) and p(x); sampling pushes the conditional
prediction away from the unconditional one with a guidance scale w:

    guided = (1 + w) * conditional - w * unconditional

w = 0 is the purely conditional model and larger w trades diversity for class fidelity. w is Ho &
Salimans' guidance weight; other libraries' "CFG scale" s is 1 + w (their s = 1 is our w = 0).

The combination is applied to the network's raw output in whatever it predicts (eps, v, x0, or a
flow's velocity), and for a diffusion model that is one and the same guidance: the weights (1 + w)
and -w sum to 1, so the combination commutes with every map ``a + b * output`` whose a and b do not
depend on the network, and at a given x_t and t the predictions are such maps of each other
(x0 = (x_t - sqrt(1 - abar) eps) / sqrt(abar), v = sqrt(abar) eps - sqrt(1 - abar) x0). Guiding eps
(as Ho & Salimans do), v or x0 therefore gives the same guided x0, eps and v, and the same samples.
A flow's velocity is likewise an affine map (x1_pred - x_t) / (1 - t) of its data prediction, so
guiding the velocity is guiding the predicted data.

The scale is a sampler option (``sampler.guidance``; a model's ``sample(..., guidance=w)`` overrides
it) and the model that samples runs both branches as one network call on a batch of 2n (conditional
then unconditional). A guided step therefore costs 2n network evaluations in one call: a sampler's
``nfe`` stays the number of sequential network calls, the same figure as unguided, and its label and
record add the scale (``ddim-50-w2``).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from genbench.errors import GenbenchError


def classifier_free_guidance(cond: torch.Tensor, uncond: torch.Tensor, guidance: float) -> torch.Tensor:
    """(1 + w) * cond - w * uncond (Ho & Salimans, 2022, eq. 6) with w = ``guidance``; w = 0
    returns ``cond`` itself."""
    if guidance == 0:
        return cond
    return (1 + guidance) * cond - guidance * uncond


def check_guidance(guidance: Any) -> float:
    """A guidance scale: a finite number >= 0 (0: no guidance, the purely conditional model)."""
    if (
        isinstance(guidance, bool)
        or not isinstance(guidance, int | float)
        or not math.isfinite(guidance)
        or guidance < 0
    ):
        raise GenbenchError(
            f"guidance={guidance!r}: use a number >= 0 (0: the conditional model unguided; e.g. sampler.guidance=2)."
        )
    return float(guidance)


def guidance_label(label: str, guidance: float) -> str:
    """A sampler's label with its guidance scale when it has one: ``ddim-50`` -> ``ddim-50-w2``."""
    return f"{label}-w{guidance:g}" if guidance else label


def guidance_record(guidance: float) -> dict[str, float]:
    """What a sampler's ``describe()`` adds for its guidance scale (nothing when unguided)."""
    return {"guidance": guidance} if guidance else {}


__all__ = ["check_guidance", "classifier_free_guidance", "guidance_label", "guidance_record"]
