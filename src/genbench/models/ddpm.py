"""DDPM (Ho et al., 2020): a network learns to predict the noise added by q(x_t | x_0).

The module combines three separate objects: the network (any ``eps(x_t, t)``), the
``NoiseSchedule`` and a ``Sampler``. It trains on the simple objective
E_{t, x_0, eps} ||eps - eps_theta(sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps, t)||^2 and samples
with an EMA copy of the network.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from genbench.diffusion import NoiseSchedule, Sampler
from genbench.models.base import GenerativeModel, OptimizerFactory, SchedulerFactory
from genbench.models.ema import EMA

#: where DDPM checkpoints keep ``NoiseSchedule.config()``
SCHEDULE_KEY = "genbench_schedule"


class DDPM(GenerativeModel):
    family = "ddpm"
    default_monitor = "val/loss_ema"
    supports_samplers = True

    def __init__(
        self,
        net: nn.Module,
        schedule: NoiseSchedule,
        sampler: Sampler,
        optimizer: OptimizerFactory,
        scheduler: SchedulerFactory = None,
        ema_decay: float = 0.999,
        channels: int = 1,
        image_size: int = 32,
        sample_batch_size: int = 256,
    ) -> None:
        super().__init__(channels, image_size, sample_batch_size)
        self.save_hyperparameters(ignore=["net", "schedule", "sampler", "optimizer", "scheduler"])
        self.net = net
        self.schedule = schedule
        self.sampler = sampler.bind(schedule)
        self.ema = EMA(net, decay=ema_decay)
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler

    def configure_optimizers(self) -> Any:
        return self.build_optimizer(self.optimizer_factory, self.scheduler_factory, self.net.parameters())

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Also record the noise schedule: its buffers are not in the state dict, and the weights
        only make sense under the schedule they were trained with."""
        super().on_save_checkpoint(checkpoint)
        checkpoint[SCHEDULE_KEY] = self.schedule.config()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Refuse to resume (or load) under a different schedule than the checkpoint's, with one
        line saying which overrides restore it. Checkpoints from before the schedule was recorded
        carry none and load unchecked."""
        super().on_load_checkpoint(checkpoint)
        saved = checkpoint.get(SCHEDULE_KEY)
        if saved is not None:
            self.schedule.check_matches(saved, source="The checkpoint")

    def diffusion_loss(
        self, net: nn.Module, x0: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """The epsilon-prediction MSE at uniformly drawn timesteps."""
        n = x0.shape[0]
        if generator is None:
            t = self.schedule.sample_timesteps(n, x0.device)
            noise = torch.randn_like(x0)
        else:
            t = torch.randint(0, self.schedule.timesteps, (n,), generator=generator, device=generator.device)
            t = t.to(x0.device)
            noise = torch.randn(x0.shape, generator=generator, device=generator.device).to(x0.device)
        return F.mse_loss(net(self.schedule.q_sample(x0, t, noise), t), noise)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> dict[str, torch.Tensor]:
        loss = self.diffusion_loss(self.net, batch[0])
        self.log("train/loss", loss, prog_bar=True)
        return {"loss": loss}

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        """The EMA follows every optimizer step at once, so no callback (a checkpoint saved at
        batch end, an evaluation) ever sees new weights with an old EMA."""
        super().optimizer_step(*args, **kwargs)
        self.ema.update(self.net)

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        # The same (t, noise) for a given batch every epoch, so val curves are not noise.
        losses = {}
        for name, net in (("val/loss", self.net), ("val/loss_ema", self.ema.shadow)):
            g = torch.Generator(device="cpu").manual_seed(batch_idx)
            losses[name] = self.diffusion_loss(net, batch[0], generator=g)
        self.log_dict(losses, sync_dist=True)

    def _sample_batch(
        self,
        n: int,
        generator: torch.Generator | None,
        sampler: Sampler | None = None,
        use_ema: bool = True,
        progress: bool = False,
        **kwargs: Any,
    ) -> torch.Tensor:
        sampler = self.sampler if sampler is None else sampler.bind(self.schedule)
        x_T = self.randn(n, *self.image_shape, generator=generator)
        net = self.ema.shadow if use_ema else self.net
        return sampler(net, x_T, generator=generator, progress=progress)
