"""Evaluate a model while it trains: sample through the contract, compute metrics, log them.

The callback knows nothing of the family it evaluates: it calls ``pl_module.sample(n, generator,
**sample_kwargs)`` (plus ``sampler=`` when one is configured; families without samplers ignore
it, a family with samplers uses it with its EMA weights) and hands the images to
:class:`~genbench.metrics.Evaluator`.

Where it runs: at the end of every ``every_n_epochs``-th epoch -- inside the epoch's final
validation when there is one, so that ``ModelCheckpoint(monitor="eval/fid")`` (which saves at
validation end) sees the fresh value; otherwise at train-epoch end -- and/or every
``every_n_train_steps`` steps, and once more at the end of training unless the last evaluation
was already at the final step. Linked to a :class:`~genbench.callbacks.TrainingBudget`
(``genbench.callbacks.link_callbacks`` does it), it also evaluates at the budget's fractions and
records the images seen and training seconds of each measurement.

Under DDP each rank draws its share of the samples (:func:`genbench.metrics.evaluator.sample_share`:
the same images, seeded per chunk of global indices, whatever the number of ranks, exactly
``num_samples`` of them) and extracts their features; the images and feature rows are gathered in
rank order, rank 0 computes the metrics from them (precision/recall, KID, IS and the rest need every
row, not sums: see :mod:`genbench.metrics.evaluator`) and broadcasts the result, so every rank logs
the same values, equal to a one-process evaluation's. The likelihood bound is split the same way:
each rank bounds a share of the test images and the per-image bounds are gathered. Nothing of the training state changes: RNG streams (torch CPU/CUDA,
numpy, random) and every submodule's train/eval flag are restored afterwards.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch

from genbench.callbacks.budget import TrainingBudget
from genbench.distributed import first_error, gather_rows
from genbench.errors import GenbenchError
from genbench.io import atomic_write_bytes, atomic_write_json
from genbench.loggers import TABLE_SAMPLES, log_evaluation_media, wandb_loggers
from genbench.metrics import Evaluator, MetricsConfig, scalar_results
from genbench.metrics import conditional as cond
from genbench.metrics.evaluator import sample_share
from genbench.metrics.record import CALLBACK, EvalRecord
from genbench.reproducibility import preserved_training_state
from genbench.rundir import RunLayout
from genbench.stopping import StopRequested

log = logging.getLogger("genbench.metrics")

PREFIX = "eval/"


class EvaluationCallback(pl.Callback):
    """Periodic FID / KID / IS / precision-recall, mode coverage and memorisation during training
    (and the test-set likelihood at the final evaluation: ``metrics.likelihood.when``), logged as
    ``eval/<metric>`` (the scalars of ``genbench.metrics.SCALAR_RESULTS``).

    A conditional model is asked for balanced classes (0, 1, ..., K-1, 0, ...) and its samples keep
    their classes, which adds the class accuracy and the intra-class FID; a guided family's final
    evaluation also sweeps the guidance scale (``metrics.conditional``), logged as
    ``eval/guidance_w<w>/<metric>`` and recorded as the result's ``guidance`` list.

    Args:
        num_samples: images drawn per evaluation (split across DDP ranks).
        every_n_epochs: evaluate after every n-th epoch (null/0: never by epoch).
        every_n_train_steps: evaluate every n optimizer steps (null/0: never by step).
        at_train_end: evaluate the final model too (skipped when the last evaluation already saw it).
        seed: the sampling generator's seed: every evaluation sees the same latent noise.
        sampler: a sampler object for a family with samplers (e.g. DDIM with few steps for CPU
            runs); null: the model's.
        sample_kwargs: more keyword arguments for ``sample()``.
        metrics: the ``metrics`` settings (see ``MetricsConfig``); ``num_samples`` here wins.
        cache_dir: where the in-domain extractor and the real statistics are cached.
        output_dir: run directory; results are appended to ``<output_dir>/eval/metrics.jsonl``.
        skip_fast_dev_run: do nothing under ``fast_dev_run`` (a wiring check, not a measurement).
    """

    def __init__(
        self,
        num_samples: int = 1000,
        every_n_epochs: int | None = 1,
        every_n_train_steps: int | None = None,
        at_train_end: bool = True,
        seed: int = 1234,
        sampler: Any = None,
        sample_kwargs: Mapping[str, Any] | None = None,
        metrics: Mapping[str, Any] | MetricsConfig | None = None,
        cache_dir: str | None = None,
        output_dir: str | None = None,
        skip_fast_dev_run: bool = True,
    ) -> None:
        if num_samples < 2:
            raise GenbenchError(f"The evaluation callback needs num_samples >= 2, got {num_samples}.")
        self.cfg = MetricsConfig.from_mapping(metrics).replace(num_samples=num_samples)
        self.num_samples = num_samples
        self.every_n_epochs = every_n_epochs or 0
        self.every_n_train_steps = every_n_train_steps or 0
        self.at_train_end = at_train_end
        self.seed = seed
        self.sample_kwargs = dict(sample_kwargs or {})
        if sampler is not None:
            self.sample_kwargs["sampler"] = sampler
        self.cache_dir = cache_dir
        self.output_dir = output_dir
        self.skip_fast_dev_run = skip_fast_dev_run
        self._evaluator: Evaluator | None = None
        #: the run's budget, when there is one (set by ``link_callbacks``): evaluate at its
        #: fractions and record its progress with each result
        self.budget: TrainingBudget | None = None
        self.last_result: dict[str, Any] | None = None
        self.history: list[dict[str, Any]] = []
        self._last_step = -1
        #: the first samples of the latest evaluation and their classes, for the W&B samples table
        self._media: tuple[torch.Tensor, torch.Tensor | None] | None = None

    # --- when ----------------------------------------------------------------------------------
    def _active(self, trainer: pl.Trainer) -> bool:
        return not trainer.sanity_checking and not (self.skip_fast_dev_run and trainer.fast_dev_run)

    def _epoch_due(self, trainer: pl.Trainer) -> bool:
        return self.every_n_epochs > 0 and (trainer.current_epoch + 1) % self.every_n_epochs == 0

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Only the validation that closes an epoch (not mid-epoch val_check_interval runs).
        last_batch = getattr(trainer.fit_loop.epoch_loop.batch_progress, "is_last_batch", True)
        if trainer.state.fn == "fit" and self._active(trainer) and self._epoch_due(trainer) and last_batch:
            self._run(trainer, pl_module, can_log=True)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._active(trainer) and self._epoch_due(trainer):  # epochs without a validation run
            self._run(trainer, pl_module, can_log=True)

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        n = self.every_n_train_steps
        by_step = n > 0 and trainer.global_step > 0 and trainer.global_step % n == 0
        by_budget = self.budget is not None and self.budget.evaluation_due()
        if (by_step or by_budget) and self._active(trainer):
            self._run(trainer, pl_module, can_log=True)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.at_train_end and self._active(trainer):
            self._run(trainer, pl_module, can_log=False, final=True)

    # --- what ----------------------------------------------------------------------------------
    def evaluator(self, trainer: pl.Trainer) -> Evaluator:
        """The run's evaluator (built on first use: the in-domain extractor may be trained then).
        Every rank builds it (each extracts its share's features); other callbacks that score
        images with this protocol use it too."""
        if self._evaluator is None:
            datamodule = trainer.datamodule
            if datamodule is None or not hasattr(datamodule, "real_images"):
                raise GenbenchError(
                    "The evaluation callback needs a genbench ImageDataModule (trainer.fit(model, datamodule=...))."
                )
            self._evaluator = Evaluator.for_datamodule(datamodule, self.cfg, cache_dir=self.cache_dir)
        return self._evaluator

    def _run(self, trainer: pl.Trainer, pl_module: pl.LightningModule, can_log: bool, final: bool = False) -> None:
        if trainer.global_step == self._last_step:  # the model has not changed since the last evaluation
            if final and self.last_result is not None:
                self._finish_last(trainer, pl_module)
            return
        start = time.perf_counter()
        try:
            result = self.evaluate(trainer, pl_module)
            if self.cfg.likelihood.due(final):
                result.update(self.likelihood(trainer, pl_module))
            if cond.guided(pl_module) and self.cfg.conditional.sweep_due(final):
                result.update(self.guidance_sweep(trainer, pl_module))
        except StopRequested as e:  # the run stops at its next step boundary; this point is not measured
            log.warning("Evaluation at step %d interrupted: %s.", trainer.global_step, e)
            return
        self._last_step = trainer.global_step
        EvalRecord(CALLBACK, pl_module.family, trainer.current_epoch, trainer.global_step, self.seed).stamp(
            result, seconds=round(time.perf_counter() - start, 2)
        )
        if self.budget is not None:  # images seen, pure training seconds, CPU time and load so far
            result.update(self.budget.training_progress())
        self.last_result = result
        self.history.append(result)
        scalars = self.scalars(result)
        self._log(trainer, pl_module, scalars, can_log)
        if trainer.is_global_zero:
            if len(self.history) == 1:
                for logger in trainer.loggers:
                    logger.log_hyperparams(
                        {f"{PREFIX}extractor": result.get("extractor"), f"{PREFIX}real": result.get("real")}
                    )
            self._write(trainer, result, final)
            self._log_media(trainer, result)
            shown = ", ".join(f"{k.removeprefix(PREFIX)}={v:.4g}" for k, v in scalars.items())
            log.info(
                "Evaluation at step %d (%s, n=%d): %s",
                trainer.global_step,
                result.get("extractor"),
                result["num_samples"],
                shown,
            )

    def _finish_last(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """The end of training when the last evaluation already saw the final weights: add what
        only the final evaluation computes (the likelihood, by default) to that record, log it, and
        write it as ``final.json``."""
        assert self.last_result is not None
        result = self.last_result
        extra: dict[str, Any] = {}
        try:
            if self.cfg.likelihood.due(final=True) and "likelihood" not in result:
                extra.update(self.likelihood(trainer, pl_module))
            if cond.guided(pl_module) and self.cfg.conditional.sweep_due(True) and cond.GUIDANCE not in result:
                extra.update(self.guidance_sweep(trainer, pl_module))
        except StopRequested as e:
            log.warning("Final evaluation at step %d interrupted: %s.", trainer.global_step, e)
        if extra:
            result.update(extra)
            self._log(trainer, pl_module, self.scalars(extra), can_log=False)
            self._write(trainer, result, False, append=False, replace_last=True)
        self._write(trainer, {**result, "final": True}, True, append=False)

    def _log(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, scalars: dict[str, float], can_log: bool
    ) -> None:
        if can_log:
            for name, value in scalars.items():
                pl_module.log(name, value, prog_bar=name == f"{PREFIX}fid", sync_dist=False)
        else:  # on_train_end: self.log is not allowed; go to the loggers directly
            for logger in trainer.loggers:
                logger.log_metrics(scalars, step=trainer.global_step)
            trainer.callback_metrics.update({k: torch.tensor(v) for k, v in scalars.items()})

    def _log_media(self, trainer: pl.Trainer, result: Mapping[str, Any]) -> None:
        """The evaluation's samples table (image, asked class, the per-sample numbers that exist)
        and class histograms, on the run's W&B loggers (rank 0; nothing without one)."""
        media, self._media = self._media, None
        if media is None:
            return
        from genbench.metrics.per_sample import per_sample_metrics

        images, labels = media
        per_sample = per_sample_metrics(self.evaluator(trainer), images)
        log_evaluation_media(trainer.loggers, images, dict(result), trainer.global_step, per_sample, labels)

    @staticmethod
    def scalars(result: Mapping[str, Any]) -> dict[str, float]:
        """The result's scalars as ``eval/<name>`` (the names: ``genbench.metrics.SCALAR_RESULTS``),
        and a guidance sweep's as ``eval/guidance_w<w>/<name>``."""
        return {**scalar_results(result, PREFIX), **cond.sweep_scalars(result.get(cond.GUIDANCE) or [], PREFIX)}

    def run_dir(self, trainer: pl.Trainer) -> Path:
        return Path(self.output_dir or trainer.default_root_dir)

    def _write(
        self,
        trainer: pl.Trainer,
        result: dict[str, Any],
        final: bool,
        append: bool = True,
        replace_last: bool = False,
    ) -> None:
        """Append to ``eval/metrics.jsonl`` (the history; ``replace_last``: amend its last line)
        and refresh ``latest.json`` / ``final.json``. The history is rewritten whole, atomically,
        rather than appended to: an append that meets a full disk would leave half a JSON line."""
        if not trainer.is_global_zero:
            return
        layout = RunLayout(self.run_dir(trainer))
        layout.eval_dir.mkdir(parents=True, exist_ok=True)
        history = layout.eval_history
        if (replace_last and history.is_file()) or append:
            lines = history.read_text().splitlines() if history.is_file() else []
            if replace_last:
                lines = lines[:-1]
            atomic_write_bytes(history, "".join(f"{line}\n" for line in [*lines, json.dumps(result)]).encode())
        atomic_write_json(layout.eval_final if final else layout.eval_latest, result)
        if final:
            atomic_write_json(layout.eval_latest, result)

    def evaluate(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, guidance: float | None = None
    ) -> dict[str, Any]:
        """Each rank samples and extracts the features of its share, the features (and images) are
        gathered, rank 0 computes and broadcasts. Collective: every rank must call it. A
        conditional model is asked for balanced classes over all the images, each rank drawing its
        part; ``guidance``: sample with ``guidance=w`` (the sweep's
        ``metrics.conditional.guidance_samples`` images, no memorisation picture)."""
        world, rank = trainer.world_size, trainer.global_rank
        n = self.num_samples if guidance is None else (self.cfg.conditional.guidance_samples or self.num_samples)
        kwargs = dict(self.sample_kwargs)
        num_classes = getattr(pl_module, "num_classes", None)
        labels = None if num_classes is None else cond.balanced_labels(n, num_classes)
        if guidance is not None:
            kwargs["guidance"] = guidance
        result: dict[str, Any] | None = None
        with preserved_training_state(pl_module):
            images = features = None
            error = None
            try:  # a failure on one rank must not leave the others waiting in the gather
                evaluator = self.evaluator(trainer)
                images, _ = sample_share(pl_module, n, self.seed, rank, world, labels=labels, **kwargs)
                features = evaluator.extract(images, labelled=labels is not None)
            except GenbenchError as e:
                error = str(e)
            error = first_error(error) if world > 1 else error
            if error is not None:
                raise GenbenchError(f"Evaluation callback: {error}")
            assert images is not None and features is not None
            if world > 1:  # in rank order: the n images and rows one process would have
                images = gather_rows(images)
                features = {name: gather_rows(rows) for name, rows in sorted(features.items())}
            if trainer.is_global_zero:
                pairs = self.run_dir(trainer) / "eval" / "closest_pairs" / f"step-{trainer.global_step:07d}.png"
                try:
                    result = evaluator.evaluate(
                        images,
                        pairs_path=pairs if guidance is None else None,
                        labels=labels,
                        num_classes=num_classes,
                        features=features,
                    )
                except GenbenchError as e:
                    result = {"error": str(e)}
                if guidance is None and wandb_loggers(trainer.loggers):
                    self._media = (images[:TABLE_SAMPLES], None if labels is None else labels[:TABLE_SAMPLES])
                if "closest_pairs" in result:  # relative to the run directory: the run stays movable
                    result["closest_pairs"] = (
                        Path(result["closest_pairs"]).relative_to(self.run_dir(trainer)).as_posix()
                    )
            if world > 1:
                result = trainer.strategy.broadcast(result, src=0)
        assert result is not None
        if "error" in result:
            raise GenbenchError(f"Evaluation callback: {result['error']}")
        return result

    def guidance_sweep(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
        """FID, precision, recall, class accuracy and intra-class FID at each of
        ``metrics.conditional.guidance_scales`` (the same sampling seed at every scale). Collective."""
        scales = self.cfg.conditional.guidance_scales
        sweep = cond.guidance_sweep(scales, lambda w: self.evaluate(trainer, pl_module, guidance=w))
        return {cond.GUIDANCE: sweep, "guidance_samples": self.cfg.conditional.guidance_samples or self.num_samples}

    def likelihood(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
        """Test-set bits/dim (``metrics.likelihood``): each rank bounds a share of the test images,
        the per-image bounds are gathered, so every rank has the numbers one process would have.
        Collective."""
        world = trainer.world_size
        out: dict[str, Any] | None = None
        error = None
        with preserved_training_state(pl_module), torch.no_grad():
            try:
                evaluator = self.evaluator(trainer)
            except GenbenchError as e:
                error = str(e)
            error = first_error(error) if world > 1 else error
            if error is None:
                generator = torch.Generator(device="cpu").manual_seed(self.seed)
                try:  # the checks before any collective are the same on every rank: all fail or none
                    out = evaluator.likelihood(pl_module, generator, distributed=world > 1)
                except GenbenchError as e:
                    error = str(e)
        if error is not None:
            raise GenbenchError(f"Evaluation callback (likelihood): {error}")
        assert out is not None
        return out
