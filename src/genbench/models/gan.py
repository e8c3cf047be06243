"""DCGAN trained with manual optimisation: two optimisers, one D step and one G step per batch.

Losses work on discriminator logits:
- non-saturating (default; Goodfellow et al. 2014): D minimises -log D(x) - log(1 - D(G(z))),
  G minimises -log D(G(z)) instead of log(1 - D(G(z))) of the minimax game, which saturates
  early in training when D rejects every fake;
- hinge (Lim & Ye 2017; Miyato et al. 2018): D minimises relu(1 - D(x)) + relu(1 + D(G(z))),
  G minimises -D(G(z)).

Options that make the GAN stronger (each off by default; conf/model/gan.yaml says why to use them):
- spectral normalisation of D (``model.discriminator.spectral_norm``, genbench.nets.dcgan);
- the R1 gradient penalty (Mescheder et al. 2018), gamma/2 * E ||grad_x D(x_real)||^2, applied
  lazily as in StyleGAN2 (Karras et al. 2020): only on every ``r1_every``-th D step and multiplied
  by ``r1_every`` there, so its average strength is unchanged at a fraction of the cost (the
  penalty needs a double backward through D);
- DiffAugment (Zhao et al. 2020, genbench.nets.diffaugment): the same random differentiable
  augmentation policy on every image D sees, real and fake, in the D and the G step;
- an exponential moving average of G's weights (Yazici et al. 2019), which samples when on;
- TTUR (Heusel et al. 2017): G and D have their own optimisers, so their learning rates are
  set independently (``model.optimizer_g.lr``, ``model.optimizer_d.lr``).

Class conditioning (``model.conditional=true``): conditional BatchNorm in G and a projection
discriminator (Miyato & Koyama 2018); the fakes of a training batch are drawn for the real
batch's classes, so D compares the two at the same class mix.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from genbench import GenbenchError
from genbench.models.base import GenerativeModel, OptimizerFactory, SchedulerFactory
from genbench.models.ema import EMA
from genbench.nets.diffaugment import POLICIES, DiffAugment, parse_policy
from genbench.registry import FamilySpec
from genbench.schema import Rule, Spec, boolean, choice, integer, number

GAN_LOSSES = ("non_saturating", "hinge")

log = logging.getLogger("genbench.models")


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


def r1_penalty(real_logits: torch.Tensor, real: torch.Tensor, gamma: float) -> torch.Tensor:
    """gamma/2 * E_x ||grad_x D(x)||^2 over the batch, for ``real_logits`` = D(real) computed from
    ``real`` with ``requires_grad``. The graph is kept (create_graph), so the penalty itself can be
    minimised by D's optimiser. Each logit depends on its own image only, so the gradient of their
    sum gives every image's gradient at once."""
    (grad,) = torch.autograd.grad(real_logits.sum(), real, create_graph=True)
    return gamma / 2 * grad.pow(2).flatten(1).sum(1).mean()


def _call(net: nn.Module, x: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
    """``net(x)``, or ``net(x, labels)`` for a conditional model (so a plain unconditional network
    that takes one argument still works)."""
    return net(x) if labels is None else net(x, labels)


class GAN(GenerativeModel):
    family = "gan"
    default_monitor = None  # a GAN's losses say nothing about sample quality; use eval/fid
    ddp_find_unused_parameters = True
    # channels_last + torch.compile crashed Inductor in the generator's backward on an H200
    # (docs/performance.md); its EMA copy keeps the same layout as the generator it averages
    channels_last_exempt_on_gpu = ("generator", "generator_ema")

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
        r1_gamma: float = 0.0,
        r1_every: int = 16,
        diffaugment: str | list[str] | None = "",
        g_ema_decay: float | None = None,
        conditional: bool = False,
        num_classes: int | None = None,
    ) -> None:
        super().__init__(channels, image_size, sample_batch_size, channels_last, compile)
        if loss not in GAN_LOSSES:
            raise GenbenchError(f"Unknown GAN loss '{loss}': set model.loss to one of {', '.join(GAN_LOSSES)}.")
        if d_steps_per_g_step < 1:
            raise GenbenchError(f"model.d_steps_per_g_step must be >= 1, got {d_steps_per_g_step}.")
        if isinstance(r1_gamma, bool) or not isinstance(r1_gamma, int | float) or not r1_gamma >= 0:
            raise GenbenchError(f"model.r1_gamma={r1_gamma!r}: use a number >= 0 (0 switches R1 off; e.g. 0.1).")
        if isinstance(r1_every, bool) or not isinstance(r1_every, int) or r1_every < 1:
            raise GenbenchError(f"model.r1_every={r1_every!r}: use an integer >= 1 (1: every D step; e.g. 16).")
        if g_ema_decay is not None and (isinstance(g_ema_decay, bool) or not 0 <= g_ema_decay < 1):
            raise GenbenchError(
                f"model.g_ema_decay={g_ema_decay!r}: use a number in [0, 1) (0 or null: off; e.g. 0.999)."
            )
        # a plain string (a list from the config would be saved as an OmegaConf object in the
        # checkpoint's hyperparameters, which weights_only loading refuses)
        diffaugment = ",".join(parse_policy(diffaugment))
        self.enable_conditioning(conditional, num_classes, {"generator": generator, "discriminator": discriminator})
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
        #: the augmentation every discriminator input goes through in training (identity when "")
        self.augment = DiffAugment(diffaugment)
        self.r1_gamma = float(r1_gamma)
        self.r1_every = r1_every
        if self.r1_gamma > 0:
            #: D steps taken so far: which of them carry the lazy R1 penalty (in checkpoints, so a
            #: resumed run regularises on the same steps)
            self.register_buffer("r1_d_steps", torch.zeros((), dtype=torch.long))
        #: the EMA copy of the generator that samples (None: off)
        self.generator_ema = EMA(generator, decay=g_ema_decay) if g_ema_decay else None
        if self.r1_gamma > 0 and self.compile_kwargs is not None:
            log.warning(
                "model.compile: the discriminator stays eager because model.r1_gamma > 0: torch.compile cannot "
                "run the double backward the R1 penalty needs (aot_autograd does not support it)."
            )

    def trained_networks(self) -> dict[str, nn.Module]:
        """As the base class, less the discriminator when R1 is on: what ``model.compile``
        compiles, and a compiled discriminator could not take R1's double backward."""
        nets = super().trained_networks()
        if self.r1_gamma > 0:
            nets.pop("discriminator", None)
        return nets

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

    # --- training ----------------------------------------------------------------------------
    def r1_due(self) -> bool:
        """Whether the next D step carries the lazy R1 penalty (D steps 0, k, 2k, ... with k = r1_every)."""
        return self.r1_gamma > 0 and int(self.r1_d_steps) % self.r1_every == 0

    def discriminator_objective(
        self, real: torch.Tensor, fake: torch.Tensor, labels: torch.Tensor | None, r1: bool
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """D's loss on ``real`` and the detached ``fake`` (both through the augmentation), plus
        ``r1_every`` x the R1 penalty when ``r1``. The penalty's gradient is taken with respect to
        the real images before augmentation (as StyleGAN2-ADA does), so it regularises D as the
        data distribution sees it. Returns (what D minimises, detached values to log)."""
        if r1:
            real = real.detach().requires_grad_(True)
        real_logits = _call(self.discriminator, self.augment(real), labels)
        fake_logits = _call(self.discriminator, self.augment(fake.detach()), labels)
        loss = discriminator_loss(real_logits, fake_logits, self.loss_kind)
        logs = {"d_loss": loss.detach()}
        if r1:
            penalty = r1_penalty(real_logits, real, self.r1_gamma)
            loss = loss + self.r1_every * penalty
            logs["r1"] = penalty.detach()
        return loss, logs

    def discriminator_step(
        self, real: torch.Tensor, fake: torch.Tensor, labels: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """One update of D only: fakes are detached, and only D's optimiser steps."""
        _, opt_d = self.optimizers()
        loss, logs = self.discriminator_objective(real, fake, labels, self.r1_due())
        opt_d.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        opt_d.step()
        if self.r1_gamma > 0:
            self.r1_d_steps += 1
        return logs

    def generator_step(self, fake: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """One update of G only, then of its EMA. D's weights are frozen for the pass (Lightning's
        ``toggled_optimizer`` sets requires_grad=False on every parameter G's optimizer does not
        own), so the backward computes no gradient for them: they would only be thrown away. The
        fakes go through the same augmentation as in D's step, so G learns through it."""
        opt_g, _ = self.optimizers()
        with self.toggled_optimizer(opt_g):
            loss = generator_loss(_call(self.discriminator, self.augment(fake), labels), self.loss_kind)
            opt_g.zero_grad(set_to_none=True)
            self.manual_backward(loss)
            opt_g.step()
        if self.generator_ema is not None:  # at once, so no checkpoint sees new weights with an old EMA
            self.generator_ema.update(self.generator)
        return loss.detach()

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> dict[str, torch.Tensor]:
        real, labels = batch
        labels = labels.long() if self.conditional else None
        fake = _call(self.generator, torch.randn(real.shape[0], self.z_dim, device=real.device), labels)
        out = self.discriminator_step(real, fake, labels)
        if (batch_idx + 1) % self.d_steps_per_g_step == 0:
            out["g_loss"] = self.generator_step(fake, labels)
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
        real, labels = batch
        labels = labels.long() if self.conditional else None
        g = torch.Generator(device="cpu").manual_seed(batch_idx)
        fake = _call(self.generator, self.randn(real.shape[0], self.z_dim, generator=g), labels)
        fake_logits = _call(self.discriminator, fake, labels)
        self.log_dict(
            {
                "val/d_loss": discriminator_loss(_call(self.discriminator, real, labels), fake_logits, self.loss_kind),
                "val/g_loss": generator_loss(fake_logits, self.loss_kind),
            },
            sync_dist=True,
        )

    # --- sampling ----------------------------------------------------------------------------
    @property
    def sampling_generator(self) -> nn.Module:
        """The generator that samples: the EMA copy when ``g_ema_decay`` is on, else the trained one."""
        return self.generator_ema.shadow if self.generator_ema is not None else self.generator

    def _sample_batch(
        self, n: int, generator: torch.Generator | None, labels: torch.Tensor | None = None, **kwargs: Any
    ) -> torch.Tensor:
        return _call(self.sampling_generator, self.randn(n, self.z_dim, generator=generator), labels)

    @property
    def latent_shape(self) -> tuple[int, ...]:  # noqa: D102
        return (self.z_dim,)

    @torch.no_grad()
    def decode_latents(self, z: torch.Tensor, labels: Any = None, **kwargs: Any) -> torch.Tensor:
        """As :meth:`GenerativeModel.decode_latents`; a conditional GAN decodes every latent with
        the classes ``labels`` asks for (one for all, or one per latent) and with class 0 when none
        is given: an interpolation grid then varies only z, which is what it is meant to show."""
        if self.num_classes is None:
            self.class_labels(len(z), labels)  # refuses labels, in one line
            return super().decode_latents(z, **kwargs)
        classes = self.class_labels(len(z), 0 if labels is None else labels).to(self.device)
        # the base class chunks z; each chunk takes its classes in order
        chunks = iter(classes.split(self.sample_batch_size))
        return super().decode_latents(z, _classes=chunks, **kwargs)

    def _decode_batch(self, z: torch.Tensor, _classes: Any = None, **kwargs: Any) -> torch.Tensor:
        return _call(self.sampling_generator, z, None if _classes is None else next(_classes))


def _diffaugment_policy(value: Any) -> bool:
    """Whether ``model.diffaugment`` names a valid policy (a comma-separated string or a list)."""
    try:
        parse_policy(value)
    except GenbenchError:
        return False
    return True


#: the GAN as a genbench family (genbench.registry): what generic code knows of it
SPEC = FamilySpec(
    name=GAN.family,
    model=GAN,
    title="GAN (DCGAN)",
    order=0,
    colour="tab:red",
    likelihood=None,
    deterministic_sampler=True,
    conditional=True,
    cpu_bf16_speedup=2.02,  # measured on an Intel Xeon with AMX-BF16 (docs/performance.md)
    tiny_overrides=("model.generator.width=8", "model.discriminator.width=8", "model.generator.z_dim=16"),
    schema_rules=(
        Rule("model.*z_dim", integer(1), "100"),
        Rule("model.loss", choice("non_saturating", "hinge"), "non_saturating"),
        Rule("model.d_steps_per_g_step", integer(1), "1"),
        Rule("model.discriminator.spectral_norm", boolean(), "true"),
        Rule("model.r1_gamma", number(0), "0.1"),
        Rule("model.r1_every", integer(1), "16"),
        Rule(
            "model.diffaugment",
            Spec(_diffaugment_policy, f'"" or a subset of {",".join(POLICIES)} (a quoted string or a list)'),
            "[color,translation,cutout]",
        ),
        Rule("model.g_ema_decay", number(0, 1, hi_open=True, null=True), "0.999"),
        Rule("model.num_classes", integer(2, null=True), "10"),
    ),
    menu=(
        ("model.loss", "loss"),
        ("model.discriminator.spectral_norm", "spectral norm"),
        ("model.r1_gamma", "R1 gamma"),
        ("model.r1_every", "R1 every"),
        ("model.diffaugment", "DiffAugment"),
        ("model.g_ema_decay", "G EMA"),
        ("model.optimizer_g.lr", "lr G"),
        ("model.optimizer_d.lr", "lr D"),
        ("model.conditional", "conditional"),
    ),
)
