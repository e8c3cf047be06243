"""What the diffusion and flow-matching families share: one network that regresses a target at
randomly drawn noise levels (the noise, or the path's velocity), and an exponential moving average
of its weights that samples. Subclasses define only ``regression_loss(net, x, generator=None, labels=None)``.

Class conditioning with classifier-free guidance lives here too, once for both families. A
conditional model's network takes a class, ``net(x, t, y)``, with one extra "null" class (index K)
for the unconditional branch. Training replaces each example's label by the null class with
probability ``label_dropout`` (:meth:`EMARegressionModel.drop_labels`), so one network learns both
p(x|y) and p(x); sampling combines the two branches' outputs with the guidance scale w
(:mod:`genbench.diffusion.guidance`: the formula, its convention and why it may be applied to any
prediction type), both branches in one network call on a batch of 2n (:meth:`EMARegressionModel.network`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from genbench.diffusion.guidance import check_guidance, classifier_free_guidance
from genbench.errors import GenbenchError
from genbench.models.base import GenerativeModel, OptimizerFactory, SchedulerFactory
from genbench.models.ema import EMA
from genbench.schema import Rule, number

#: ``fn(x, t)``: the network at states x and times t with its classes (and guidance) bound
NetworkFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


#: the config keys of conditioning and guidance, in the schema of every family built on this class
CONDITIONING_RULES: tuple[Rule, ...] = (
    Rule("model.label_dropout", number(0, 1), "0.1"),
    Rule("*sampler.guidance", number(0), "2.0"),
)


def check_label_dropout(p: Any) -> float:
    """``model.label_dropout``: the probability in [0, 1] of training on the null class."""
    if isinstance(p, bool) or not isinstance(p, int | float) or not 0 <= p <= 1:
        raise GenbenchError(f"model.label_dropout={p!r}: use a probability in [0, 1] (e.g. 0.1).")
    return float(p)


class EMARegressionModel(GenerativeModel):
    """Trains ``regression_loss(self.net, x)``, keeps ``self.ema`` in step with every optimizer
    step, and validates both copies on draws fixed per batch. With ``conditional``, the network
    takes classes (``num_classes`` of them, plus the null class) and training drops labels with
    probability ``label_dropout``."""

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
        conditional: bool = False,
        num_classes: int | None = None,
        label_dropout: float = 0.1,
    ) -> None:
        super().__init__(channels, image_size, sample_batch_size, channels_last, compile)
        self.enable_conditioning(conditional, num_classes, {"net": net})
        #: the probability of training on the null class instead of the label (0 when unconditional)
        self.label_dropout = check_label_dropout(label_dropout) if self.conditional else 0.0
        self.net = net
        self.ema = EMA(net, decay=ema_decay)
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler

    def regression_loss(
        self,
        net: nn.Module,
        x: torch.Tensor,
        generator: torch.Generator | None = None,
        labels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The training objective of ``net`` on data ``x`` (of classes ``labels`` for a conditional
        model; None: the null class); with ``generator``, its random draws (noise levels, noise) come
        from it, so a validation batch sees the same ones every epoch."""
        raise NotImplementedError(f"{type(self).__name__} must define regression_loss(net, x, generator, labels).")

    # --- class conditioning and guidance -----------------------------------------------------
    @property
    def null_class(self) -> int | None:
        """The class index of the unconditional branch (K), None for an unconditional model."""
        return self.num_classes

    def drop_labels(self, labels: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor | None:
        """``labels`` with each replaced by the null class with probability ``label_dropout``: the
        training labels of a conditional model (None for an unconditional one, which draws nothing).
        The draw (one uniform per example) comes from ``generator``, else from the global stream the
        rest of the training noise comes from, so a resumed run draws exactly what an uninterrupted
        one does."""
        if self.num_classes is None:
            return None
        if self.label_dropout == 0:
            return labels
        device = generator.device if generator is not None else labels.device
        u = torch.rand(labels.shape[0], generator=generator, device=device).to(labels.device)
        return torch.where(u < self.label_dropout, torch.full_like(labels, self.null_class), labels)

    def network(self, net: nn.Module, labels: torch.Tensor | None = None, guidance: float = 0.0) -> NetworkFn:
        """``fn(x, t)``: ``net`` with the classes ``labels`` (one per image; None: the null class)
        and guidance scale ``guidance`` bound. With w != 0 each call runs the conditional and the
        unconditional branch as one batch of 2n and returns :func:`classifier_free_guidance` of the
        two. An unconditional model takes neither classes nor guidance."""
        guidance = check_guidance(guidance)
        if self.num_classes is None:
            if labels is not None or guidance != 0:
                raise GenbenchError(
                    f"This {self.family} is unconditional: classes and guidance (here {guidance:g}) need a model "
                    "trained with model.conditional=true; use guidance=0 (sampler.guidance=0)."
                )
            return net
        if labels is None or guidance == 0:
            return lambda x, t: net(x, t, labels)

        def guided(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            y = labels.to(x.device)
            both = net(torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, torch.full_like(y, self.null_class)]))
            cond, uncond = both.chunk(2)
            return classifier_free_guidance(cond, uncond, guidance)

        return guided

    def check_likelihood_labels(self, labels: torch.Tensor | None) -> None:
        """A conditional model's likelihood is of p(x|y): it needs the images' classes."""
        if self.num_classes is not None and labels is None:
            raise GenbenchError(
                f"This {self.family} is conditional: its likelihood bounds need the images' classes (labels=...)."
            )

    def guidance_scale(self, sampler: Any, guidance: float | None = None) -> float:
        """The guidance scale of a sampling call: ``guidance`` when given (``sample(..., guidance=w)``),
        else the sampler's ``sampler.guidance`` (0 when it has none)."""
        return check_guidance(getattr(sampler, "guidance", 0.0) if guidance is None else guidance)

    def configure_optimizers(self) -> Any:
        return self.build_optimizer(self.optimizer_factory, self.scheduler_factory, self.net.parameters())

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> dict[str, torch.Tensor]:
        loss = self.regression_loss(self.net, batch[0], labels=self.drop_labels(batch[1]))
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
            # the classes as given: the validation loss is that of the conditional model
            labels = batch[1] if self.conditional else None
            losses[name] = self.regression_loss(net, batch[0], generator=g, labels=labels)
        self.log_dict(losses, sync_dist=True)
