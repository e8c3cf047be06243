"""What the diffusion and flow-matching families share: one network that regresses a target at
randomly drawn noise levels (the noise, or the path's velocity), and an exponential moving average
of its weights that samples. Subclasses define only ``regression_loss(net, x, generator=None)``."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from genbench.models.base import GenerativeModel, OptimizerFactory, SchedulerFactory
from genbench.models.ema import EMA


class EMARegressionModel(GenerativeModel):
    """Trains ``regression_loss(self.net, x)``, keeps ``self.ema`` in step with every optimizer
    step, and validates both copies on draws fixed per batch."""

    default_monitor = "val/loss_ema"
    supports_samplers = True
    # their UNet trained 1.22x faster in channels_last on an H100 (fp32, batch 128; docs/performance.md)
    channels_last_auto_on_gpu = True

    def __init__(
        self,
        net: nn.Module,
        optimizer: OptimizerFactory,
        scheduler: SchedulerFactory,
        ema_decay: float,
        channels: int,
        image_size: int,
        sample_batch_size: int,
        channels_last: bool | str,
        compile: bool | dict[str, Any] | None,  # the config key model.compile
    ) -> None:
        super().__init__(channels, image_size, sample_batch_size, channels_last, compile)
        self.net = net
        self.ema = EMA(net, decay=ema_decay)
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler

    def regression_loss(
        self, net: nn.Module, x: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """The training objective of ``net`` on data ``x``; with ``generator``, its random draws
        (noise levels, noise) come from it, so a validation batch sees the same ones every epoch."""
        raise NotImplementedError(f"{type(self).__name__} must define regression_loss(net, x, generator).")

    def configure_optimizers(self) -> Any:
        return self.build_optimizer(self.optimizer_factory, self.scheduler_factory, self.net.parameters())

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> dict[str, torch.Tensor]:
        loss = self.regression_loss(self.net, batch[0])
        if self.logs_this_step():  # self.log costs ~1 ms per value: only on the steps loggers write
            self.log("train/loss", loss, prog_bar=True)
        return {"loss": loss}

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        """The EMA follows every optimizer step at once, so no callback (a checkpoint saved at
        batch end, an evaluation) ever sees new weights with an old EMA."""
        super().optimizer_step(*args, **kwargs)
        self.ema.update(self.net)

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        # the same draws for a given batch every epoch, so the validation curves are not noise
        losses = {}
        for name, net in (("val/loss", self.net), ("val/loss_ema", self.ema.shadow)):
            g = torch.Generator(device="cpu").manual_seed(batch_idx)
            losses[name] = self.regression_loss(net, batch[0], generator=g)
        self.log_dict(losses, sync_dist=True)
