"""The sampling contract shared by every family, and what the three LightningModules share.

Every family implements ``_sample_batch(n, generator)``; callers use ``sample(n, generator=None)``
which returns ``n`` images shaped like the data, float32 in [-1, 1], on the module's device. The
evaluation callback, ``genbench-eval`` and the benchmark rely on nothing else.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytorch_lightning as pl
import torch

from genbench import GenbenchError, __version__
from genbench.reproducibility import randn
from genbench.stopping import check_stop

OptimizerFactory = Callable[..., torch.optim.Optimizer]
SchedulerFactory = Callable[..., Any] | None


class GenerativeModel(pl.LightningModule):
    family: str = "base"
    #: the validation metric that picks the "best" checkpoint (None: only last.ckpt is meaningful)
    default_monitor: str | None = "val/loss"
    #: DDP must look for parameters a backward pass did not reach (the GAN's D step leaves G out)
    ddp_find_unused_parameters: bool = False
    #: whether ``sample()`` accepts ``sampler=`` (several ways to sample: the DDPM)
    supports_samplers: bool = False

    def __init__(self, channels: int, image_size: int, sample_batch_size: int = 256) -> None:
        super().__init__()
        self.channels = channels
        self.image_size = image_size
        self.sample_batch_size = sample_batch_size
        #: the resolved Hydra config (model + data) saved in checkpoints, so that a checkpoint
        #: alone rebuilds its model (see genbench.models.load_model_from_checkpoint)
        self.genbench_config: dict[str, Any] | None = None

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (self.channels, self.image_size, self.image_size)

    # --- the sampling contract ---------------------------------------------------------------
    def _sample_batch(self, n: int, generator: torch.Generator | None, **kwargs: Any) -> torch.Tensor:
        """Draw n images (any float dtype, roughly in [-1, 1]) with gradients off and eval mode on.
        Every family implements it; ``sample()`` is the contract callers use."""
        raise NotImplementedError(f"{type(self).__name__} must implement _sample_batch(n, generator).")

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None, **kwargs: Any) -> torch.Tensor:
        """Draw ``n`` images in [-1, 1], in chunks of ``sample_batch_size``, leaving the module's
        train/eval mode as it found it. Randomness comes from ``generator`` when given, so a fixed
        generator gives the same images on every call."""
        if n < 1:
            raise GenbenchError(f"sample(n) needs n >= 1, got {n}.")
        was_training = self.training
        self.eval()
        try:
            chunks = []
            for start in range(0, n, self.sample_batch_size):
                check_stop()
                b = min(self.sample_batch_size, n - start)
                chunks.append(self._sample_batch(b, generator, **kwargs).float().clamp(-1, 1))
        finally:
            self.train(was_training)
        return torch.cat(chunks)

    def randn(self, *shape: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Standard normal noise drawn on the generator's device, then moved to the module's: a
        CPU generator gives the same samples whatever device the model runs on."""
        return randn(shape, generator, device=self.device)

    # --- shared plumbing ----------------------------------------------------------------------
    def on_fit_start(self) -> None:
        # seed_everything gives every DDP rank the same seed, which is right for initialisation
        # (identical replicas) but wrong for training noise: ranks would draw the same z, t and
        # eps and waste half the batch. Offset the stream by rank once the replicas exist.
        if self.trainer.world_size > 1:
            torch.manual_seed((torch.initial_seed() + 1_000_003 * self.global_rank) % 2**63)

    @staticmethod
    def build_optimizer(
        factory: OptimizerFactory, scheduler: SchedulerFactory, params: Any
    ) -> dict[str, Any] | torch.optim.Optimizer:
        opt = factory(params=params)
        if scheduler is None:
            return opt
        return {"optimizer": opt, "lr_scheduler": {"scheduler": scheduler(optimizer=opt), "interval": "epoch"}}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["genbench"] = {"family": self.family, "version": __version__, "config": self.genbench_config}

    def num_parameters(self) -> int:
        """Trainable parameters (the DDPM's EMA copy and fixed buffers are not counted)."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)
