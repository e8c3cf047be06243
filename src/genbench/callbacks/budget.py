"""An equal training budget for every family: images seen or pure training seconds.

"Equal" must not depend on how expensive a family's evaluation, validation or checkpointing is,
nor on what a step means (the GAN's manual optimisation makes two optimiser steps per batch).
So the budget counts what all families share: training images consumed, and the seconds spent
inside training batches (from batch start to batch end: forward, backward, optimiser step; no
validation, evaluation, sample grids or checkpointing). When either limit is reached, training
stops at the end of that batch.

It also marks fixed fractions of the budget (``eval_at``) at which an
:class:`~genbench.callbacks.EvaluationCallback` linked to it evaluates, so every family is measured
at the same points of its training curve, and reports how far training has come
(``training_progress()``) so each measurement records images seen and seconds. The budget knows
nothing of evaluation: the evaluation callback asks it (:meth:`TrainingBudget.evaluation_due`).

On a GPU the per-batch timer reads the host clock without synchronising (a sync per step would
slow training); steady-state throughput makes the sum accurate to within one step's latency.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl

from genbench.errors import GenbenchError


class TrainingBudget(pl.Callback):
    def __init__(
        self,
        max_images: int | None = None,
        max_train_seconds: float | None = None,
        eval_at: list[float] | tuple[float, ...] = (),
        log_every_n_steps: int = 50,
    ) -> None:
        if max_images is None and max_train_seconds is None:
            raise GenbenchError("TrainingBudget needs max_images or max_train_seconds (the budget to share).")
        if any(not 0 < f <= 1 for f in eval_at):
            raise GenbenchError(f"budget eval_at fractions must lie in (0, 1], got {list(eval_at)}.")
        self.max_images = max_images
        self.max_train_seconds = max_train_seconds
        self.eval_at = sorted(eval_at)
        self.log_every_n_steps = max(1, log_every_n_steps)
        self.images_seen = 0
        self.train_seconds = 0.0
        self.batches = 0
        self._next_eval = 0
        self._t0: float | None = None

    # --- progress --------------------------------------------------------------------------
    def fraction(self) -> float:
        """How much of the budget is spent (the larger of the two, when both are set)."""
        parts = []
        if self.max_images:
            parts.append(self.images_seen / self.max_images)
        if self.max_train_seconds:
            parts.append(self.train_seconds / self.max_train_seconds)
        return max(parts)

    def training_progress(self) -> dict[str, float]:
        return {
            "images_seen": self.images_seen,
            "train_seconds": round(self.train_seconds, 3),
            "budget_fraction": round(min(1.0, self.fraction()), 4),
            "train_images_per_second": round(self.images_seen / self.train_seconds, 2) if self.train_seconds else 0.0,
        }

    # --- hooks -----------------------------------------------------------------------------
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._t0 = time.perf_counter()

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self._t0 is not None:
            self.train_seconds += time.perf_counter() - self._t0
        self.batches += 1
        self.images_seen += int(batch[0].shape[0]) * trainer.world_size
        if self.max_train_seconds is not None and trainer.world_size > 1:
            # ranks must agree on when to stop: take rank 0's clock
            self.train_seconds = float(trainer.strategy.broadcast(self.train_seconds, src=0))
        if self.batches % self.log_every_n_steps == 0:
            pl_module.log_dict({f"budget/{k}": float(v) for k, v in self.training_progress().items()})
        if self.fraction() >= 1.0:
            trainer.should_stop = True

    def evaluation_due(self) -> bool:
        """Whether training has crossed the next ``eval_at`` fraction since the last call (several
        fractions crossed in one batch count once). Called after this batch was counted."""
        due = False
        while self._next_eval < len(self.eval_at) and self.fraction() >= self.eval_at[self._next_eval] - 1e-9:
            self._next_eval += 1
            due = True
        return due

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Write ``budget.json``: the budget, what was spent, and the training throughput."""
        if trainer.is_global_zero:
            out = Path(trainer.default_root_dir) / "budget.json"
            out.parent.mkdir(parents=True, exist_ok=True)
            report = {
                "max_images": self.max_images,
                "max_train_seconds": self.max_train_seconds,
                "eval_at": self.eval_at,
                "batches": self.batches,
                **self.training_progress(),
            }
            out.write_text(json.dumps(report, indent=2))

    # --- resume ----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "images_seen": self.images_seen,
            "train_seconds": self.train_seconds,
            "batches": self.batches,
            "next_eval": self._next_eval,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.images_seen = state_dict["images_seen"]
        self.train_seconds = state_dict["train_seconds"]
        self.batches = state_dict["batches"]
        self._next_eval = state_dict["next_eval"]
