"""Sampling cost and, for families with several samplers, quality per sampler.

At the end of training, ``SamplingBenchmark`` times ``sample()`` of the final model for each
configured sampler (a family with samplers: e.g. ancestral and DDIM at several step counts; the
others have one way to sample) and, when linked to the run's :class:`EvaluationCallback` (``link_callbacks``), evaluates each non-default
sampler with the same evaluator and sample count, so "quality against sampling steps" and
"quality against sampling cost" come from one protocol. Results go to ``<run>/sampling.json``.

It runs inside the training job, so on a cluster it is measured on the job's own hardware.
"""

from __future__ import annotations

import json
import logging
import statistics
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch

from genbench.callbacks.evaluation import EvaluationCallback
from genbench.io import atomic_write_bytes
from genbench.metrics import NOISE_METRIC
from genbench.metrics.evaluator import sample_share
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
    samplers: name -> unbound Sampler objects to measure (used only by models whose ``sample`` takes a
        ``sampler``, i.e. ``supports_samplers``; the model readies each with ``prepare_sampler``); the
        model's own sampler is always measured too, under its own name (e.g. ddim-10).
    evaluate: also compute the metrics of each extra sampler (needs an EvaluationCallback).
    timing_only: sampler names to time but not evaluate (e.g. the 1000-step ancestral sampler
        on a CPU, where evaluating thousands of samples would take an hour).
    noise_seeds: how many more sampling seeds the model's own sampler is evaluated with, so the
        seed-to-seed spread of each metric (its *sampling noise*: same weights, other samples) is
        measured; with it every evaluated sampler is marked as within that noise of the best one or
        not, and the fastest within it is marked ``recommended`` (:func:`choose_sampler`). 0: none.
    """

    def __init__(
        self,
        num_images: int = 256,
        samplers: Mapping[str, Any] | None = None,
        evaluate: bool = True,
        timing_only: list[str] | tuple[str, ...] = (),
        noise_seeds: int = 0,
        filename: str = "sampling.json",
    ) -> None:
        self.num_images = num_images
        self.samplers = dict(samplers or {})
        self.evaluate = evaluate
        self.timing_only = set(timing_only)
        self.noise_seeds = int(noise_seeds)
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
                    if sampler is not None:  # a model that takes samplers readies them for itself
                        sampler = pl_module.prepare_sampler(sampler)
                    # the model's own sampler is named by what it is (e.g. ddim-10); without samplers: "default"
                    used = sampler if sampler is not None else getattr(pl_module, "sampler", None)
                    timing = time_sampling(pl_module, self.num_images, sampler)
                    # read after sampling: an adaptive solver knows its steps and NFE only then
                    entry: dict[str, Any] = {
                        "sampler": used.label if used is not None else "default",
                        "steps": used.num_steps if used is not None else 1,
                        "nfe": used.nfe if used is not None else 1,  # network evaluations per image
                        **timing,
                    }
                    if name == "default" and evaluation is not None and evaluation.last_result is not None:
                        entry["metrics"] = EvaluationCallback.scalars(evaluation.last_result)
                    elif self.evaluate and evaluation is not None and name not in self.timing_only:
                        # the evaluation's noise (its seed's chunks), so the samplers differ only in how they solve
                        images, _ = sample_share(pl_module, evaluation.num_samples, evaluation.seed, sampler=sampler)
                        entry["metrics"] = EvaluationCallback.scalars(evaluation.evaluator(trainer).evaluate(images))
                    self.results.append(entry)
                    log.info(
                        "Sampling %s: %.1f images/s %s",
                        entry["sampler"],
                        entry["images_per_second"],
                        entry.get("metrics", ""),
                    )
                if takes_sampler and self.noise_seeds > 0 and evaluation is not None and "metrics" in self.results[0]:
                    self._measure_noise(trainer, pl_module, evaluation)
        except StopRequested as e:  # keep what was measured; the run is stopping
            log.warning("Sampling benchmark interrupted after %d sampler(s): %s.", len(self.results), e)
        out = Path(trainer.default_root_dir) / self.filename
        atomic_write_bytes(out, json.dumps(self.results, indent=2).encode())

    def _measure_noise(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, evaluation: EvaluationCallback
    ) -> None:
        """Evaluate the model's own sampler with ``noise_seeds`` more seeds (the first seed's metrics
        are the final evaluation's) and mark the samplers against that spread."""
        own = self.results[0]
        seeds = [evaluation.seed + k for k in range(self.noise_seeds + 1)]
        per_seed = [own["metrics"]]
        for seed in seeds[1:]:
            images, _ = sample_share(pl_module, evaluation.num_samples, seed)
            per_seed.append(EvaluationCallback.scalars(evaluation.evaluator(trainer).evaluate(images)))
        names = [k for k in own["metrics"] if all(isinstance(m.get(k), (int, float)) for m in per_seed)]
        own["noise"] = {
            "seeds": seeds,
            "values": {k: [m[k] for m in per_seed] for k in names},
            "std": {k: statistics.stdev(m[k] for m in per_seed) for k in names},  # n - 1: sample std
        }
        choice = choose_sampler(self.results, own["noise"]["std"].get(NOISE_METRIC))
        log.info("Sampling noise (%d seeds): %s; %s", len(seeds), own["noise"]["std"], choice["text"])


#: how many standard deviations of NOISE_METRIC (genbench.metrics) count as noise
NOISE_SIGMAS = 2.0


def choose_sampler(
    entries: list[dict[str, Any]], noise_std: float | None, metric: str = NOISE_METRIC, sigmas: float = NOISE_SIGMAS
) -> dict[str, Any]:
    """The fastest sampler whose ``metric`` (lower is better) is within ``sigmas`` x ``noise_std``
    of the best evaluated one: "as good as the best, as far as its sampling noise can tell".
    Marks each evaluated entry in place (``within_noise``, ``recommended``) and returns
    ``{"recommended": label, "best": label, "threshold": ..., "text": one sentence}``."""
    scored = [e for e in entries if isinstance((e.get("metrics") or {}).get(metric), (int, float))]
    if not scored or noise_std is None:
        return {"recommended": None, "text": "no sampler choice: no sampler has " + metric}
    best = min(scored, key=lambda e: e["metrics"][metric])
    threshold = best["metrics"][metric] + sigmas * noise_std
    for e in scored:
        e["within_noise"] = bool(e["metrics"][metric] <= threshold)
        e["recommended"] = False
    fastest = max((e for e in scored if e["within_noise"]), key=lambda e: e["images_per_second"])
    fastest["recommended"] = True
    name = metric.removeprefix("eval/").upper()
    text = (
        f"fastest sampler within the {name}'s sampling noise of the best ({best['sampler']} "
        f"{best['metrics'][metric]:.3g} + {sigmas:g} x {noise_std:.2g}): {fastest['sampler']} "
        f"({fastest['images_per_second']:,.1f} images/s)"
    )
    return {"recommended": fastest["sampler"], "best": best["sampler"], "threshold": threshold, "text": text}
