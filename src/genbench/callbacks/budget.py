"""An equal training budget for every family: images seen or pure training seconds.

"Equal" must not depend on how expensive a family's evaluation, validation or checkpointing is,
nor on what a step means (a family with two optimizers, under manual optimisation, makes two
optimiser steps per batch). So the budget counts what all families share: training images
consumed, and the seconds spent inside training batches (from batch start to batch end: forward,
backward, optimiser step; no validation, evaluation, sample grids or checkpointing). When either
limit is reached, training stops at the end of that batch.

It also marks fixed fractions of the budget (``eval_at``) at which an
:class:`~genbench.callbacks.EvaluationCallback` linked to it evaluates, so every family is measured
at the same points of its training curve, and reports how far training has come
(``training_progress()``) so each measurement records images seen and seconds. The budget knows
nothing of evaluation: the evaluation callback asks it (:meth:`TrainingBudget.evaluation_due`).

On a GPU the per-batch timer reads the host clock without synchronising (a sync per step would
slow training); steady-state throughput makes the sum accurate to within one step's latency.

A time budget measures the machine as much as the model: on a 2-core machine with a load average
of 20 each family got 15-25x fewer images than on an idle one (issue #12.6). So the budget also
records what the machine gave: ``cpu_seconds`` (this process's CPU time inside training batches,
all its threads: ``time.process_time``), ``load_avg`` (the mean 1-minute load average while
training, sampled at most every ``load_every_seconds``: reading /proc/loadavg costs microseconds)
and ``cpu_count`` (the cores this process may run on). An image budget (``max_images``) is the
reproducible alternative: training stops at the end of the first batch that reaches it, i.e. after
exactly ``ceil(max_images / batch_size)`` full batches, whatever the load.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import pytorch_lightning as pl

from genbench.errors import GenbenchError
from genbench.io import atomic_write_bytes
from genbench.rundir import RunLayout


class TrainingBudget(pl.Callback):
    def __init__(
        self,
        max_images: int | None = None,
        max_train_seconds: float | None = None,
        eval_at: list[float] | tuple[float, ...] = (),
        log_every_n_steps: int = 50,
        load_every_seconds: float = 5.0,
    ) -> None:
        if max_images is None and max_train_seconds is None:
            raise GenbenchError("TrainingBudget needs max_images or max_train_seconds (the budget to share).")
        if max_images is not None and (isinstance(max_images, bool) or int(max_images) != max_images or max_images < 1):
            raise GenbenchError(
                f"callbacks.budget.max_images must be a positive whole number of training images, got {max_images!r}."
            )
        if max_train_seconds is not None and not max_train_seconds > 0:
            raise GenbenchError(f"callbacks.budget.max_train_seconds must be > 0, got {max_train_seconds!r}.")
        if any(not 0 < f <= 1 for f in eval_at):
            raise GenbenchError(f"budget eval_at fractions must lie in (0, 1], got {list(eval_at)}.")
        self.max_images = int(max_images) if max_images is not None else None
        self.max_train_seconds = max_train_seconds
        self.eval_at = sorted(eval_at)
        self.log_every_n_steps = max(1, log_every_n_steps)
        self.images_seen = 0
        self.train_seconds = 0.0
        self.batches = 0
        self.cpu_seconds = 0.0
        self.load_every_seconds = load_every_seconds
        self._load_sum = 0.0
        self._load_samples = 0
        self._last_load_sample: float | None = None
        self._next_eval = 0
        self._t0: float | None = None
        self._cpu0: float | None = None

    # --- progress --------------------------------------------------------------------------
    def fraction(self) -> float:
        """How much of the budget is spent (the larger of the two, when both are set)."""
        parts = []
        if self.max_images:
            parts.append(self.images_seen / self.max_images)
        if self.max_train_seconds:
            parts.append(self.train_seconds / self.max_train_seconds)
        return max(parts)

    def load_avg(self) -> float | None:
        """Mean 1-minute load average over the samples taken while training (None: none taken, or
        a platform without ``os.getloadavg``)."""
        return self._load_sum / self._load_samples if self._load_samples else None

    def training_progress(self) -> dict[str, float | int | None]:
        load = self.load_avg()
        return {
            "images_seen": self.images_seen,
            "train_seconds": round(self.train_seconds, 3),
            "budget_fraction": round(min(1.0, self.fraction()), 4),
            "train_images_per_second": round(self.images_seen / self.train_seconds, 2) if self.train_seconds else 0.0,
            "cpu_seconds": round(self.cpu_seconds, 3),
            "load_avg": round(load, 3) if load is not None else None,
            "cpu_count": cpu_count(),
        }

    def _sample_load(self, now: float) -> None:
        if self._last_load_sample is not None and now - self._last_load_sample < self.load_every_seconds:
            return
        self._last_load_sample = now
        try:
            self._load_sum += os.getloadavg()[0]
            self._load_samples += 1
        except (OSError, AttributeError):  # no load average on this platform
            pass

    # --- hooks -----------------------------------------------------------------------------
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._t0 = time.perf_counter()
        self._cpu0 = time.process_time()
        self._sample_load(self._t0)

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self._t0 is not None:
            self.train_seconds += time.perf_counter() - self._t0
        if self._cpu0 is not None:
            self.cpu_seconds += time.process_time() - self._cpu0
        self.batches += 1
        self.images_seen += int(batch[0].shape[0]) * trainer.world_size
        if self.max_train_seconds is not None and trainer.world_size > 1:
            # ranks must agree on when to stop: take rank 0's clock
            self.train_seconds = float(trainer.strategy.broadcast(self.train_seconds, src=0))
        if self.batches % self.log_every_n_steps == 0:
            pl_module.log_dict({f"budget/{k}": float(v) for k, v in self.training_progress().items() if v is not None})
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
            out = RunLayout(trainer.default_root_dir).budget
            out.parent.mkdir(parents=True, exist_ok=True)
            report = {
                "max_images": self.max_images,
                "max_train_seconds": self.max_train_seconds,
                "eval_at": self.eval_at,
                "batches": self.batches,
                **self.training_progress(),
            }
            atomic_write_bytes(out, json.dumps(report, indent=2).encode())

    # --- resume ----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "images_seen": self.images_seen,
            "train_seconds": self.train_seconds,
            "batches": self.batches,
            "next_eval": self._next_eval,
            "cpu_seconds": self.cpu_seconds,
            "load_sum": self._load_sum,
            "load_samples": self._load_samples,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.images_seen = state_dict["images_seen"]
        self.train_seconds = state_dict["train_seconds"]
        self.batches = state_dict["batches"]
        self._next_eval = state_dict["next_eval"]
        # checkpoints written before the CPU/load figures existed resume with them at zero
        self.cpu_seconds = state_dict.get("cpu_seconds", 0.0)
        self._load_sum = state_dict.get("load_sum", 0.0)
        self._load_samples = state_dict.get("load_samples", 0)


def cpu_count() -> int | None:
    """The cores this process may run on (its CPU affinity: a SLURM job's share of a node, not the
    node), which is what a load average must be compared with."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count()
