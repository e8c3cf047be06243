"""DCGAN trained with manual optimisation: two optimisers, one D step and one G step per batch.

Losses work on discriminator logits:
- non-saturating (default; Goodfellow et al. 2014): D minimises -log D(x) - log(1 - D(G(z))),
  G minimises -log D(G(z)) instead of log(1 - D(G(z))) of the minimax game, which saturates
  early in training when D rejects every fake;
- hinge (Lim & Ye 2017; Miyato et al. 2018): D minimises relu(1 - D(x)) + relu(1 + D(G(z))),
  G minimises -D(G(z)).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from genbench import GenbenchError
from genbench.models.base import GenerativeModel, OptimizerFactory, SchedulerFactory
from genbench.registry import FamilySpec
from genbench.schema import Rule, choice, integer

GAN_LOSSES = ("non_saturating", "hinge")


def discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "non_saturating":
        # -log sigmoid(r) = softplus(-r);  -log(1 - sigmoid(f)) = softplus(f)
        return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()
    if kind == "hinge":
        return F.relu(1 - real_logits).mean() + F.relu(1 + fake_logits).mean()
    raise GenbenchError(f"Unknown GAN loss '{kind}': use one of {', '.join(GAN_LOSSES)}.")


def generator_loss(fake_logits: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "non_saturating":
        return F.softplus(-fake_logits).mean()
    if kind == "hinge":
        return -fake_logits.mean()
    raise GenbenchError(f"Unknown GAN loss '{kind}': use one of {', '.join(GAN_LOSSES)}.")


class GAN(GenerativeModel):
    family = "gan"
    default_monitor = None  # a GAN's losses say nothing about sample quality; use eval/fid
    ddp_find_unused_parameters = True
    # channels_last + torch.compile crashed Inductor in the generator's backward on an H200 (docs/performance.md)
    channels_last_exempt_on_gpu = ("generator",)

    def __init__(
        self,
        generator: nn.Module,
        discriminator: nn.Module,
        optimizer_g: OptimizerFactory,
        optimizer_d: OptimizerFactory,
        scheduler_g: SchedulerFactory = None,
        scheduler_d: SchedulerFactory = None,
        loss: str = "non_saturating",
        d_steps_per_g_step: int = 1,
        channels: int = 1,
        image_size: int = 32,
        sample_batch_size: int = 256,
        channels_last: bool | str = False,
        compile: bool | dict[str, Any] | None = False,  # the config key model.compile
    ) -> None:
        super().__init__(channels, image_size, sample_batch_size, channels_last, compile)
        if loss not in GAN_LOSSES:
            raise GenbenchError(f"Unknown GAN loss '{loss}': set model.loss to one of {', '.join(GAN_LOSSES)}.")
        if d_steps_per_g_step < 1:
            raise GenbenchError(f"model.d_steps_per_g_step must be >= 1, got {d_steps_per_g_step}.")
        self.save_hyperparameters(
            ignore=["generator", "discriminator", "optimizer_g", "optimizer_d", "scheduler_g", "scheduler_d"]
        )
        self.automatic_optimization = False
        self.generator = generator
        self.discriminator = discriminator
        self.loss_kind = loss
        self.d_steps_per_g_step = d_steps_per_g_step
        self.optimizer_factories = {"generator": optimizer_g, "discriminator": optimizer_d}
        self.scheduler_factories = {"generator": scheduler_g, "discriminator": scheduler_d}
        self.z_dim = generator.z_dim

    def configure_optimizers(self) -> Any:
        # Order matters: self.optimizers() returns (G's, D's) and the steps below rely on it.
        nets = {"generator": self.generator, "discriminator": self.discriminator}
        optimizers = {name: self.optimizer_factories[name](params=net.parameters()) for name, net in nets.items()}
        schedulers = [
            factory(optimizer=optimizers[name])
            for name, factory in self.scheduler_factories.items()
            if factory is not None
        ]
        return [optimizers["generator"], optimizers["discriminator"]], schedulers

    def discriminator_step(self, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
        """One update of D only: fakes are detached, and only D's optimiser steps."""
        _, opt_d = self.optimizers()
        loss = discriminator_loss(self.discriminator(real), self.discriminator(fake.detach()), self.loss_kind)
        opt_d.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        opt_d.step()
        return loss.detach()

    def generator_step(self, fake: torch.Tensor) -> torch.Tensor:
        """One update of G only. D's weights are frozen for the pass (Lightning's
        ``toggled_optimizer`` sets requires_grad=False on every parameter G's optimizer does not
        own), so the backward computes no gradient for them: they would only be thrown away."""
        opt_g, _ = self.optimizers()
        with self.toggled_optimizer(opt_g):
            loss = generator_loss(self.discriminator(fake), self.loss_kind)
            opt_g.zero_grad(set_to_none=True)
            self.manual_backward(loss)
            opt_g.step()
        return loss.detach()

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> dict[str, torch.Tensor]:
        real, _ = batch
        fake = self.generator(torch.randn(real.shape[0], self.z_dim, device=real.device))
        out = {"d_loss": self.discriminator_step(real, fake)}
        if (batch_idx + 1) % self.d_steps_per_g_step == 0:
            out["g_loss"] = self.generator_step(fake)
        if self.logs_this_step():  # self.log costs ~1 ms per value: only on the steps loggers write
            self.log_dict({f"train/{k}": v for k, v in out.items()}, prog_bar=True)
        out["loss"] = out["d_loss"]
        return out

    def on_train_epoch_end(self) -> None:
        # Manual optimisation: Lightning does not step the schedulers, so we do it per epoch.
        schedulers = self.lr_schedulers()
        for sch in schedulers if isinstance(schedulers, list) else [schedulers] if schedulers else []:
            sch.step()

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        real, _ = batch
        g = torch.Generator(device="cpu").manual_seed(batch_idx)
        fake = self.generator(self.randn(real.shape[0], self.z_dim, generator=g))
        fake_logits = self.discriminator(fake)
        self.log_dict(
            {
                "val/d_loss": discriminator_loss(self.discriminator(real), fake_logits, self.loss_kind),
                "val/g_loss": generator_loss(fake_logits, self.loss_kind),
            },
            sync_dist=True,
        )

    def _sample_batch(self, n: int, generator: torch.Generator | None, **kwargs: Any) -> torch.Tensor:
        return self.generator(self.randn(n, self.z_dim, generator=generator))

    @property
    def latent_shape(self) -> tuple[int, ...]:  # noqa: D102
        return (self.z_dim,)

    def _decode_batch(self, z: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        return self.generator(z)


#: the GAN as a genbench family (genbench.registry): what generic code knows of it
SPEC = FamilySpec(
    name=GAN.family,
    model=GAN,
    title="GAN (DCGAN)",
    order=0,
    colour="tab:red",
    likelihood=None,
    deterministic_sampler=True,
    cpu_bf16_speedup=2.02,  # measured on an Intel Xeon with AMX-BF16 (docs/performance.md)
    tiny_overrides=("model.generator.width=8", "model.discriminator.width=8", "model.generator.z_dim=16"),
    schema_rules=(
        Rule("model.*z_dim", integer(1), "100"),
        Rule("model.loss", choice("non_saturating", "hinge"), "non_saturating"),
        Rule("model.d_steps_per_g_step", integer(1), "1"),
    ),
)
