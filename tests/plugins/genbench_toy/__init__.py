"""A toy fourth family from outside genbench: one diagonal Gaussian over pixels, fitted by maximum
likelihood. It exists to prove that a family is one module and one config: it registers through the
``genbench.families`` entry point group and ships its config through ``genbench.configs``
(``genbench_toy-0.1.dist-info/entry_points.txt`` beside this package), and genbench's source and
``conf/`` never name it.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from genbench.models.base import GenerativeModel
from genbench.registry import FamilySpec
from genbench.schema import Rule, number


def discretized_gaussian_nll(x: torch.Tensor, mean: torch.Tensor, log_std: torch.Tensor) -> torch.Tensor:
    """-log P(x) per image in nats, x in [-1, 1] on the 256-level grid: each pixel's Gaussian mass
    over its bin of width 2/255, with the outer bins stretched to +-infinity."""
    std = log_std.exp()
    normal = torch.distributions.Normal(mean, std)
    upper = torch.where(x > 0.999, torch.ones_like(x), normal.cdf(x + 1 / 255))
    lower = torch.where(x < -0.999, torch.zeros_like(x), normal.cdf(x - 1 / 255))
    return -(upper - lower).clamp_min(1e-12).log().flatten(1).sum(1)


class PixelGaussian(GenerativeModel):
    """x ~ N(mean, diag(std^2)) in pixel space: every pixel independent. Trained on the exact
    negative log-likelihood (per dimension), so its bits/dim is exact, not a bound."""

    family = "gaussian"

    def __init__(
        self,
        channels: int,
        image_size: int,
        lr: float = 0.05,
        sample_batch_size: int = 256,
        channels_last: bool | str = False,
        compile: bool | dict[str, Any] | None = False,
    ) -> None:
        super().__init__(channels, image_size, sample_batch_size, channels_last, compile)
        self.lr = lr
        self.mean = nn.Parameter(torch.zeros(self.image_shape))
        self.log_std = nn.Parameter(torch.zeros(self.image_shape))

    def nll(self, x: torch.Tensor) -> torch.Tensor:
        """Continuous Gaussian NLL per image (nats): the training loss."""
        z = (x - self.mean) / self.log_std.exp()
        return (0.5 * z**2 + self.log_std + 0.5 * math.log(2 * math.pi)).flatten(1).sum(1)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        loss = self.nll(batch[0]).mean() / math.prod(self.image_shape)
        if self.logs_this_step():
            self.log("train/loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self.log("val/loss", self.nll(batch[0]).mean() / math.prod(self.image_shape))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.lr)

    @property
    def latent_shape(self) -> tuple[int, ...]:
        return self.image_shape

    def _decode_batch(self, z: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        return self.mean + self.log_std.exp() * z

    def _sample_batch(self, n: int, generator: torch.Generator | None, **kwargs: Any) -> torch.Tensor:
        return self._decode_batch(self.randn(n, *self.image_shape, generator=generator))

    # the likelihood protocol of genbench.metrics.likelihood
    def likelihood_description(self, cfg: Any) -> str:
        return "exact (discretised Gaussian per pixel)"

    def likelihood_bounds(
        self, x: torch.Tensor, cfg: Any, generator: torch.Generator | None
    ) -> dict[str, torch.Tensor]:
        return {"exact": discretized_gaussian_nll(x, self.mean, self.log_std)}


SPEC = FamilySpec(
    name=PixelGaussian.family,
    model="genbench_toy:PixelGaussian",
    title="Pixel Gaussian",
    order=50,
    colour="tab:purple",
    likelihood="exact",
    deterministic_sampler=True,
    tiny_overrides=("model.lr=0.1",),
    schema_rules=(Rule("model.lr", number(0, lo_open=True), "0.05"),),
)
