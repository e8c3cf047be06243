"""An :class:`Evaluator`: real images + an extractor + settings, ready to score generated images.

The one object every evaluation path uses (the training callback, ``genbench-eval``, the
benchmark's real-vs-real floor), so their numbers come from the same code.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from genbench.errors import GenbenchError
from genbench.metrics.extractors import resolve_extractor
from genbench.metrics.fidelity import compute_metrics
from genbench.metrics.images import check_images
from genbench.metrics.real_cache import real_cache_key
from genbench.metrics.settings import MetricsConfig
from genbench.metrics.spec import INCEPTION, ExtractorSpec


class Evaluator:
    """Real images + an extractor + settings: ``evaluate(generated)`` returns the metrics and
    the context needed to compare them (extractor, sample counts)."""

    def __init__(
        self,
        real_images: torch.Tensor,
        spec: ExtractorSpec,
        cfg: MetricsConfig | Mapping[str, Any] | None = None,
        cache_dir: str | Path | None = None,
        dataset: str = "real",
        split: str = "custom",
    ) -> None:
        self.real = check_images(real_images, "real")
        self.spec = spec
        self.cfg = MetricsConfig.from_mapping(cfg)
        self.cache_dir = cache_dir
        self.dataset = dataset
        self.split = split
        self._key: str | None = None

    @classmethod
    def for_datamodule(
        cls,
        datamodule: Any | None,
        cfg: MetricsConfig | Mapping[str, Any] | None = None,
        cache_dir: str | Path | None = None,
        progress: bool = True,
        real: torch.Tensor | None = None,
        real_label: str | None = None,
    ) -> Evaluator:
        """The evaluator of a dataset's split (``cfg.split``) with ``cfg.extractor`` (the in-domain
        one is trained on first use). ``real`` replaces the split's images (e.g. a folder or a
        slice of a split, named ``real_label`` as ``<dataset>:<split>``); the dataset is still
        what the in-domain extractor is trained on, and may only be left out with an explicit
        extractor (``metrics.extractor_path`` or InceptionV3)."""
        cfg = MetricsConfig.from_mapping(cfg)
        explicit = cfg.extractor == INCEPTION or cfg.extractor_path is not None
        if datamodule is None and not explicit:
            raise GenbenchError(
                "Without a dataset there is no in-domain extractor: add data=<name>, or metrics.extractor_path=<file>, "
                f"or metrics.extractor={INCEPTION}."
            )
        if cache_dir is None and not explicit:
            raise GenbenchError("The in-domain extractor lives in a cache directory: pass cache_dir (paths.cache_dir).")
        if datamodule is not None:
            datamodule.setup()
        spec = resolve_extractor(
            cfg.extractor,
            datamodule,
            cache_dir or ".",
            inception_weights=cfg.inception_weights,
            extractor_path=cfg.extractor_path,
            train_if_missing=cfg.train_extractor,
            train_kwargs={"progress": progress, **cfg.extractor_training},
        )
        if real is None:
            real, real_label = datamodule.real_images(cfg.split), f"{datamodule.name}:{cfg.split}"
        dataset, _, split = (real_label or "real").partition(":")
        return cls(real, spec, cfg, cache_dir=cache_dir, dataset=dataset, split=split or "custom")

    @property
    def real_key(self) -> str:
        if self._key is None:
            self._key = real_cache_key(self.real, self.spec, self.dataset, self.split)
        return self._key

    def evaluate(self, generated: torch.Tensor) -> dict[str, Any]:
        start = time.perf_counter()
        key = self.real_key if self.cfg.cache and self.cache_dir is not None else None
        metrics = compute_metrics(generated, self.real, self.spec, self.cfg, self.cache_dir, key)
        return {
            **metrics,
            "num_samples": len(generated),
            "num_real": len(self.real),
            "real": f"{self.dataset}:{self.split}",
            **self.spec.describe(),
            "eval_seconds": round(time.perf_counter() - start, 3),
        }
