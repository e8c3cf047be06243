"""Flow matching (Lipman et al., 2023; rectified flow, Liu et al., 2023): a network learns the
velocity of the straight path from noise to data, and sampling integrates that velocity field with
an ODE solver.

The module combines separate objects as the diffusion family does: the network (any ``net(x, t)``:
the same UNet, its time embedding fed t scaled to [0, ``time_scale``] so it sees the range it was
designed for), the path (``genbench.flow.CondOTPath``), the training-time distribution
(``genbench.flow.TimeSampler``: uniform or logit-normal) and an ODE solver
(``genbench.flow.solvers``: Euler, Heun, adaptive dopri5). Training minimises
E_{t, x1, x0} ||(x1 - x0) - v_theta(t x1 + (1 - t) x0, t)||^2; samples come from an EMA copy of the
network, integrated from x0 ~ N(0, I) at t = 0 to t = 1.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from genbench.errors import GenbenchError
from genbench.flow import CondOTPath, EulerSolver, ODESolver, TimeSampler
from genbench.models.base import GenerativeModel, OptimizerFactory, SchedulerFactory
from genbench.models.ema import EMA
from genbench.registry import FamilySpec
from genbench.schema import UNET_RULES, Rule, choice, number


class FlowMatching(GenerativeModel):
    family = "flow_matching"
    default_monitor = "val/loss_ema"
    supports_samplers = True
    # the same UNet as the diffusion family: channels_last won there on a GPU (docs/performance.md)
    channels_last_auto_on_gpu = True

    def __init__(
        self,
        net: nn.Module,
        sampler: ODESolver,
        optimizer: OptimizerFactory,
        scheduler: SchedulerFactory = None,
        ema_decay: float = 0.999,
        time_sampling: str = "logit_normal",
        logit_mean: float = 0.0,
        logit_std: float = 1.0,
        time_scale: float = 1000.0,
        channels: int = 1,
        image_size: int = 32,
        sample_batch_size: int = 256,
        channels_last: bool | str = False,
        compile: bool | dict[str, Any] | None = False,  # the config key model.compile
    ) -> None:
        super().__init__(channels, image_size, sample_batch_size, channels_last, compile)
        self.save_hyperparameters(ignore=["net", "sampler", "optimizer", "scheduler"])
        self.net = net
        self.path = CondOTPath()
        self.time_sampler = TimeSampler(time_sampling, logit_mean, logit_std)
        self.time_scale = float(time_scale)
        self.sampler = self.prepare_sampler(sampler)
        self.ema = EMA(net, decay=ema_decay)
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler

    def configure_optimizers(self) -> Any:
        return self.build_optimizer(self.optimizer_factory, self.scheduler_factory, self.net.parameters())

    def velocity(self, net: nn.Module, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """v(x, t) for times ``t`` in [0, 1] (one per image)."""
        return net(x, t * self.time_scale)

    def flow_loss(self, net: nn.Module, x1: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """The MSE between the network's velocity and the path's, at times from the time sampler."""
        t = self.time_sampler(x1.shape[0], x1.device, generator)
        x0 = self.randn(*x1.shape, generator=generator).to(x1.dtype)
        x_t, target = self.path.sample(x1, x0, t)
        return F.mse_loss(self.velocity(net, x_t, t), target)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> dict[str, torch.Tensor]:
        loss = self.flow_loss(self.net, batch[0])
        if self.logs_this_step():  # self.log costs ~1 ms per value: only on the steps loggers write
            self.log("train/loss", loss, prog_bar=True)
        return {"loss": loss}

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        """The EMA follows every optimizer step at once (as the diffusion family's does)."""
        super().optimizer_step(*args, **kwargs)
        self.ema.update(self.net)

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        # the same (t, x0) for a given batch every epoch, so the validation curves are not noise
        losses = {}
        for name, net in (("val/loss", self.net), ("val/loss_ema", self.ema.shadow)):
            g = torch.Generator(device="cpu").manual_seed(batch_idx)
            losses[name] = self.flow_loss(net, batch[0], generator=g)
        self.log_dict(losses, sync_dist=True)

    def prepare_sampler(self, sampler: Any) -> ODESolver:
        """``sampler`` checked to be an ODE solver of a velocity field (a diffusion sampler would
        read the output as noise): the one thing generic callers hand a model with samplers."""
        if not isinstance(sampler, ODESolver):
            name = getattr(sampler, "name", type(sampler).__name__)
            raise GenbenchError(
                f"Sampler '{name}' cannot sample a flow: a flow matching model integrates an ODE, use "
                "sampler=euler, sampler=heun or sampler=dopri5."
            )
        return sampler

    def _sample_batch(
        self,
        n: int,
        generator: torch.Generator | None,
        sampler: ODESolver | None = None,
        use_ema: bool = True,
        progress: bool = False,
        **kwargs: Any,
    ) -> torch.Tensor:
        return self._decode_batch(self.randn(n, *self.image_shape, generator=generator), sampler, use_ema, progress)

    @property
    def latent_shape(self) -> tuple[int, ...]:
        """x0, the noise at t = 0: every solver maps it to an image deterministically."""
        return self.image_shape

    def _decode_batch(
        self,
        z: torch.Tensor,
        sampler: ODESolver | None = None,
        use_ema: bool = True,
        progress: bool = False,
        **kwargs: Any,
    ) -> torch.Tensor:
        solver = self.sampler if sampler is None else self.prepare_sampler(sampler)
        net = self.ema.shadow if use_ema else self.net
        return solver(lambda x, t: self.velocity(net, x, t), z, progress=progress)


#: flow matching as a genbench family (genbench.registry): what generic code knows of it
SPEC = FamilySpec(
    name=FlowMatching.family,
    model=FlowMatching,
    title="Flow matching",
    order=3,
    colour="tab:orange",
    likelihood=None,
    likelihood_note="none (the probability-flow ODE likelihood is not computed yet)",
    deterministic_sampler=True,
    prediction="velocity",
    samplers=True,
    default_sampler="euler",
    tiny_overrides=(
        "model.net.base_channels=8",
        "model.net.channel_mults=[1,2]",
        "model.sampler.steps=4",
    ),
    schema_rules=(
        *UNET_RULES,
        Rule("model.ema_decay", number(0, 1, hi_open=True), "0.999"),
        Rule("model.time_sampling", choice(*TimeSampler.KINDS), "logit_normal"),
        Rule("model.logit_std", number(0, lo_open=True), "1.0"),
        Rule("model.time_scale", number(0, lo_open=True), "1000"),
        Rule("*sampler.rtol", number(0, lo_open=True), "1.0e-3"),
        Rule("*sampler.atol", number(0, lo_open=True), "1.0e-3"),
    ),
)

__all__ = ["SPEC", "EulerSolver", "FlowMatching"]
