"""Flow matching (Lipman et al., 2023; rectified flow, Liu et al., 2023): a network learns the
velocity of the straight path from noise to data, and sampling integrates that velocity field with
an ODE solver.

The module combines separate objects as the diffusion family does: the network (any ``net(x, t)``:
the same UNet, its time embedding fed t scaled to [0, ``time_scale``] so it sees the range it was
designed for), the path (``genbench.flow.CondOTPath``), the training-time distribution
(``genbench.flow.TimeSampler``: uniform or logit-normal) and an ODE solver
(``genbench.flow.solvers``: Euler, Heun, adaptive dopri5). Training minimises
E_{t, x1, x0} ||(x1 - x0) - v_theta(t x1 + (1 - t) x0, t)||^2; samples come from an EMA copy of the
network, integrated from x0 ~ N(0, I) at t = 0 to t = 1. With ``conditional=true`` the network also
takes a class, trained with label dropout, and samples with classifier-free guidance of its velocity
(``sampler.guidance``; :mod:`genbench.models.ema_regression`).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from genbench.distributions import LikelihoodConfig
from genbench.errors import GenbenchError
from genbench.flow import CondOTPath, EulerSolver, ODESolver, TimeSampler
from genbench.flow.likelihood import ode_nll_bound
from genbench.models.base import OptimizerFactory, SchedulerFactory
from genbench.models.ema_regression import CONDITIONING_RULES, EMARegressionModel, NetworkFn
from genbench.registry import FamilySpec
from genbench.schema import UNET_RULES, Rule, choice, number


class FlowMatching(EMARegressionModel):
    family = "flow_matching"

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
        conditional: bool = False,
        num_classes: int | None = None,
        label_dropout: float = 0.1,
    ) -> None:
        super().__init__(
            net,
            optimizer,
            scheduler,
            ema_decay,
            channels,
            image_size,
            sample_batch_size,
            channels_last,
            compile,
            conditional,
            num_classes,
            label_dropout,
        )
        self.save_hyperparameters(ignore=["net", "sampler", "optimizer", "scheduler"])
        self.path = CondOTPath()
        self.time_sampler = TimeSampler(time_sampling, logit_mean, logit_std)
        self.time_scale = float(time_scale)
        self.sampler = self.prepare_sampler(sampler)

    def velocity(self, net: nn.Module | NetworkFn, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """v(x, t) for times ``t`` in [0, 1] (one per image); ``net``: the network, or it with its
        classes and guidance bound (:meth:`network`)."""
        return net(x, t * self.time_scale)

    def flow_loss(
        self,
        net: nn.Module,
        x1: torch.Tensor,
        generator: torch.Generator | None = None,
        labels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The MSE between the network's velocity and the path's, at times from the time sampler; a
        conditional network sees the classes ``labels`` (None: the null class)."""
        t = self.time_sampler(x1.shape[0], x1.device, generator)
        x0 = self.randn(*x1.shape, generator=generator).to(x1.dtype)
        x_t, target = self.path.sample(x1, x0, t)
        return F.mse_loss(self.velocity(self.network(net, labels), x_t, t), target)

    regression_loss = flow_loss

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
        labels: torch.Tensor | None = None,
        guidance: float | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        """``n`` samples of the classes ``labels`` (a conditional model), guided with ``guidance``
        (default: the solver's ``guidance``)."""
        z = self.randn(n, *self.image_shape, generator=generator)
        return self._decode_batch(z, sampler, use_ema, progress, labels=labels, guidance=guidance)

    # --- likelihood in bits/dim (genbench.metrics.likelihood) --------------------------------
    def likelihood_description(self, cfg: LikelihoodConfig) -> str:
        """What :meth:`likelihood_bounds` reports."""
        return f"dequantised ODE bound (EMA weights, Heun {cfg.ode_steps} steps, Hutchinson divergence, 1 probe)"

    def likelihood_bounds(
        self,
        x: torch.Tensor,
        cfg: LikelihoodConfig,
        generator: torch.Generator | None = None,
        labels: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """-log P(x) per image (nats), bounded through the probability-flow ODE of the EMA network
        with uniform dequantisation (genbench.flow.likelihood): ``ode``. A conditional model bounds
        -log P(x|y) at the classes ``labels`` (required; unguided: the flow of the conditional
        velocity), to which :func:`genbench.metrics.likelihood.evaluate_likelihood` adds log K."""
        self.check_likelihood_labels(labels)
        net = self.network(self.ema.shadow, labels)
        return {"ode": ode_nll_bound(lambda z, t: self.velocity(net, z, t), x, cfg.ode_steps, generator)}

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
        labels: torch.Tensor | None = None,
        guidance: float | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        """x0 -> image through the solver; a conditional model follows the (guided) velocity of the
        classes ``labels``, or its unconditional branch without them."""
        solver = self.sampler if sampler is None else self.prepare_sampler(sampler)
        w = self.guidance_scale(solver, guidance)
        if labels is None and self.conditional:
            w = 0.0  # the unconditional branch (a latent decoded without a class): nothing to guide
        net = self.network(self.ema.shadow if use_ema else self.net, labels, w)
        return solver(lambda x, t: self.velocity(net, x, t), z, progress=progress)


#: flow matching as a genbench family (genbench.registry): what generic code knows of it
SPEC = FamilySpec(
    name=FlowMatching.family,
    model=FlowMatching,
    title="Flow matching",
    order=3,
    colour="tab:orange",
    likelihood="bound",
    deterministic_sampler=True,
    conditional=True,
    guidance=True,
    prediction="velocity",
    samplers=True,
    default_sampler="euler",
    cpu_bf16_speedup=1.41,  # measured on an Intel Xeon with AMX-BF16 (docs/performance.md)
    tiny_overrides=(
        "model.net.base_channels=8",
        "model.net.channel_mults=[1,2]",
        "model.sampler.steps=4",
    ),
    schema_rules=(
        *UNET_RULES,
        *CONDITIONING_RULES,
        Rule("model.ema_decay", number(0, 1, hi_open=True), "0.999"),
        Rule("model.time_sampling", choice(*TimeSampler.KINDS), "logit_normal"),
        Rule("model.logit_std", number(0, lo_open=True), "1.0"),
        Rule("model.time_scale", number(0, lo_open=True), "1000"),
        Rule("*sampler.rtol", number(0, lo_open=True), "1.0e-3"),
        Rule("*sampler.atol", number(0, lo_open=True), "1.0e-3"),
    ),
    menu=(
        ("model.time_sampling", "time sampling"),
        ("model.logit_std", "logit std"),
        ("model.ema_decay", "EMA"),
        ("model.net.base_channels", "UNet width"),
        ("model.optimizer.lr", "lr"),
        ("model.conditional", "conditional"),
    ),
)

__all__ = ["SPEC", "EulerSolver", "FlowMatching"]
