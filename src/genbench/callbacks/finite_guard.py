"""Stop training at the first non-finite loss, before a checkpoint can capture broken weights."""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch

from genbench import GenbenchError
from genbench.callbacks.resume import ResumeCheckpoint


class FiniteLossGuard(pl.Callback):
    """Checks the tensors a training step returns every ``every_n_steps`` batches.

    Reading a loss forces a device sync, so on GPU keep ``every_n_steps`` > 1; the check also runs
    before every validation (and so before every checkpoint save), which is what protects the
    checkpoints. Raising aborts ``fit`` without writing a checkpoint: earlier ones stay intact.
    """

    def __init__(self, every_n_steps: int = 1) -> None:
        self.every_n_steps = max(1, every_n_steps)
        self._last: dict[str, torch.Tensor] = {}
        #: the run's ResumeCheckpoint (set by ``link_callbacks``): the message names what it kept
        self.resume: ResumeCheckpoint | None = None

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if isinstance(outputs, torch.Tensor):
            outputs = {"loss": outputs}
        if not isinstance(outputs, dict):
            return
        self._last = {k: v.detach() for k, v in outputs.items() if isinstance(v, torch.Tensor) and v.numel() == 1}
        if batch_idx % self.every_n_steps == 0:
            self._check(trainer)

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._check(trainer)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._check(trainer)

    def _check(self, trainer: pl.Trainer) -> None:
        if not self._last:
            return
        values = torch.stack([v.float() for v in self._last.values()])
        if not bool(torch.isfinite(values).all()):
            bad = {k: float(v) for k, v in self._last.items() if not torch.isfinite(v)}
            step = self.resume.last_saved_step if self.resume is not None else None
            kept = (
                f"last.ckpt of step {step} (finite loss and weights) is kept"
                if step is not None
                else "the checkpoints written so far are untouched"
            )
            raise GenbenchError(
                f"Non-finite training loss at step {trainer.global_step}: {bad}. Training stopped; {kept}. "
                "Lower the learning rate, or try trainer.precision=32 / trainer.gradient_clip_val "
                "(automatic-optimisation models)."
            )
