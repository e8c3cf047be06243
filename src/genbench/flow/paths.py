"""The conditional optimal-transport path of flow matching (Lipman et al., 2023; rectified flow,
Liu et al., 2023) and the distribution of training times.

Convention (as facebookresearch/flow_matching): t = 0 is noise x0 ~ N(0, I), t = 1 is data x1. The
path is the straight line x_t = t x1 + (1 - t) x0, whose velocity u_t = x1 - x0 does not depend on
t: the network regresses it (velocity prediction). From a velocity v at (x_t, t), the endpoints
follow: x1 = x_t + (1 - t) v and x0 = x_t - t v.
"""

from __future__ import annotations

import torch

from genbench.errors import GenbenchError


class CondOTPath:
    """x_t = t x1 + (1 - t) x0 and its velocity x1 - x0."""

    @staticmethod
    def _t(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return t.to(like.dtype).reshape(-1, *([1] * (like.ndim - 1)))

    def sample(self, x1: torch.Tensor, x0: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(x_t, u_t) for data ``x1``, noise ``x0`` and times ``t`` (one per image, in [0, 1])."""
        tt = self._t(t, x1)
        return tt * x1 + (1 - tt) * x0, x1 - x0

    def x1_from_velocity(self, x_t: torch.Tensor, t: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """The data endpoint a velocity points at: x_t + (1 - t) v (what a solver's step predicts)."""
        return x_t + (1 - self._t(t, x_t)) * v


class TimeSampler:
    """Training times t in (0, 1): ``uniform``, or ``logit_normal`` (t = sigmoid(m + s z), z ~ N(0, 1):
    more weight on the middle of the path, where the velocity is hardest to predict; Esser et al.,
    2024, found it the best of the densities they compared)."""

    KINDS = ("uniform", "logit_normal")

    def __init__(self, kind: str = "logit_normal", mean: float = 0.0, std: float = 1.0) -> None:
        if kind not in self.KINDS:
            raise GenbenchError(f"Unknown time sampling '{kind}': set model.time_sampling to one of {self.KINDS}.")
        if not std > 0:
            raise GenbenchError(f"model.logit_std must be > 0, got {std}.")
        self.kind, self.mean, self.std = kind, float(mean), float(std)

    def __call__(self, n: int, device: torch.device, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` times, drawn on the generator's device (CPU by default) and moved to ``device``."""
        gdev = generator.device if generator is not None else torch.device("cpu")
        if self.kind == "uniform":
            t = torch.rand(n, generator=generator, device=gdev)
        else:
            t = torch.sigmoid(self.mean + self.std * torch.randn(n, generator=generator, device=gdev))
        return t.to(device)
