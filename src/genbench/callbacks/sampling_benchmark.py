"""Sampling cost and, for families with several samplers, quality per sampler.

At the end of training, ``SamplingBenchmark`` times ``sample()`` of the final model for each
configured sampler (the DDPM: ancestral and DDIM at several step counts; the GAN and VAE have one
way to sample) and, when linked to the run's :class:`EvaluationCallback` (``link_callbacks``), evaluates each non-default
sampler with the same evaluator and sample count, so "quality against sampling steps" and
"quality against sampling cost" come from one protocol. Results go to ``<run>/sampling.json``.

It runs inside the training job, so on a cluster it is measured on the job's own hardware.
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

from genbench.callbacks.evaluation import EvaluationCallback
from genbench.metrics import sample_uint8
from genbench.reproducibility import preserved_training_state
from genbench.stopping import StopRequested

log = logging.getLogger("genbench.metrics")


def time_sampling(model: pl.LightningModule, n: int, sampler: Any = None, seed: int = 0) -> dict[str, float]:
    """Images per second of ``model.sample`` (synchronised on CUDA so the clock is honest)."""
    kwargs = {"sampler": sampler} if sampler is not None else {}
    generator = torch.Generator().manual_seed(seed)
    model.sample(min(n, 2), generator=generator, **kwargs)  # warm-up: kernels, caches, lazy init
    if torch.cuda.is_available() and model.device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    model.sample(n, generator=generator, **kwargs)
    if torch.cuda.is_available() and model.device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return {"num_images": n, "seconds": round(seconds, 3), "images_per_second": round(n / seconds, 2)}


class SamplingBenchmark(pl.Callback):
    """Args:
    num_images: images drawn for each throughput measurement.
    samplers: name -> Sampler objects to measure (used only by models whose ``sample`` takes a
        ``sampler``, i.e. the DDPM); the model's own sampler is always measured too, under its own name (e.g. ddim-10).
    evaluate: also compute the metrics of each extra sampler (needs an EvaluationCallback).
    timing_only: sampler names to time but not evaluate (e.g. the 1000-step ancestral sampler
        on a CPU, where evaluating thousands of samples would take an hour).
    """

    def __init__(
        self,
        num_images: int = 256,
        samplers: Mapping[str, Any] | None = None,
        evaluate: bool = True,
        timing_only: list[str] | tuple[str, ...] = (),
        filename: str = "sampling.json",
    ) -> None:
        self.num_images = num_images
        self.samplers = dict(samplers or {})
        self.evaluate = evaluate
        self.timing_only = set(timing_only)
        self.filename = filename
        self.results: list[dict[str, Any]] = []
        #: the run's evaluation callback (set by ``link_callbacks``): its protocol scores each sampler
        self.evaluation: EvaluationCallback | None = None

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.fast_dev_run or not trainer.is_global_zero:
            return
        takes_sampler = getattr(pl_module, "supports_samplers", False)
        evaluation = self.evaluation
        candidates: dict[str, Any] = {"default": None}
        if takes_sampler:
            candidates.update(self.samplers)
        try:
            with preserved_training_state(pl_module):
                for name, sampler in candidates.items():
                    if sampler is not None:
                        sampler = sampler.bind(pl_module.schedule)
                    # the model's own sampler is named by what it is (e.g. ddim-10); GAN/VAE: "default"
                    used = sampler if sampler is not None else getattr(pl_module, "sampler", None)
                    entry: dict[str, Any] = {
                        "sampler": used.label if used is not None else "default",
                        "steps": used.num_steps if used is not None else 1,
                        **time_sampling(pl_module, self.num_images, sampler),
                    }
                    if name == "default" and evaluation is not None and evaluation.last_result is not None:
                        entry["metrics"] = EvaluationCallback.scalars(evaluation.last_result)
                    elif self.evaluate and evaluation is not None and name not in self.timing_only:
                        images = sample_uint8(
                            pl_module,
                            evaluation.num_samples,
                            torch.Generator().manual_seed(evaluation.seed),
                            sampler=sampler,
                        )
                        entry["metrics"] = EvaluationCallback.scalars(evaluation.evaluator(trainer).evaluate(images))
                    self.results.append(entry)
                    log.info(
                        "Sampling %s: %.1f images/s %s",
                        entry["sampler"],
                        entry["images_per_second"],
                        entry.get("metrics", ""),
                    )
        except StopRequested as e:  # keep what was measured; the run is stopping
            log.warning("Sampling benchmark interrupted after %d sampler(s): %s.", len(self.results), e)
        out = Path(trainer.default_root_dir) / self.filename
        out.write_text(json.dumps(self.results, indent=2))
