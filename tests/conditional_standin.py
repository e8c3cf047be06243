"""A small class-conditional family for the tests of the conditional evaluation: it keeps training
images per class and draws one of the asked class plus pixel noise. It follows the conditioning contract (``conditional``/``num_classes`` arguments,
``enable_conditioning``, ``_sample_batch(..., labels=...)``) and takes classifier-free guidance the
way the diffusion families do: guided = (1 + w) * conditional draw - w * mean image.

It is a real LightningModule whose samples depend on their class, so the class accuracy and the
intra-class FID measure something; tests register its FamilySpec (with ``guidance=True``) only
while they run."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from genbench.models.base import GenerativeModel
from genbench.registry import FamilySpec


class ClassBank(GenerativeModel):
    """Keeps up to ``bank_size`` training images of every class it has seen and draws one of the
    asked class (plus a little pixel noise): samples of class k look like real images of class k."""

    family = "class_bank"
    default_monitor = None

    def __init__(
        self,
        channels: int,
        image_size: int,
        conditional: bool = True,
        num_classes: int | None = None,
        bank_size: int = 32,
        noise_std: float = 0.05,
        sample_batch_size: int = 64,
    ) -> None:
        super().__init__(channels, image_size, sample_batch_size)
        classes = self.enable_conditioning(conditional, num_classes) or 1
        self.register_buffer("bank", torch.zeros(classes, bank_size, *self.image_shape))
        self.register_buffer("count", torch.zeros(classes, dtype=torch.long))
        self.gain = nn.Parameter(torch.ones(()))  # something for the optimiser: learns to stay 1
        self.noise_std = noise_std

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        y = y if self.conditional else torch.zeros_like(y)
        for image, c in zip(x, y.tolist(), strict=True):
            self.bank[c, int(self.count[c]) % self.bank.shape[1]] = image
            self.count[c] += 1
        loss = ((self.gain * x - x) ** 2).mean()
        self.log("train/loss", loss)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)

    @property
    def latent_shape(self) -> tuple[int, ...]:
        return self.image_shape

    def _decode_batch(self, z: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        return self.bank.mean((0, 1)) + self.noise_std * z

    def _sample_batch(
        self,
        n: int,
        generator: torch.Generator | None,
        labels: torch.Tensor | None = None,
        guidance: float = 0.0,
        **kw: Any,
    ) -> torch.Tensor:
        labels = torch.zeros(n, dtype=torch.long, device=self.device) if labels is None else labels
        filled = self.count.clamp(1, self.bank.shape[1])[labels].cpu()
        pick = (torch.rand(n, generator=generator) * filled).long().to(self.device)
        cond = self.bank[labels, pick]
        uncond = self.bank.mean((0, 1))
        x = self.gain * ((1 + guidance) * cond - guidance * uncond)
        return x + self.noise_std * self.randn(n, *self.image_shape, generator=generator)


SPEC = FamilySpec(name=ClassBank.family, model=ClassBank, conditional=True, guidance=True, order=90)
