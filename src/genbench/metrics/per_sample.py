"""Per-sample numbers of a few generated images, for a table a reader scans image by image.

An evaluation's metrics describe the whole sample; a table of samples (the W&B evaluation table)
is more useful when each image carries what the metrics saw in it. Two such numbers exist:

* ``predicted_class`` and ``confidence``: the in-domain classifier's arg-max class and its softmax
  probability (the classifier mode coverage counts with; absent with InceptionV3, whose classes
  are ImageNet's);
* ``nn_train_distance``: the distance, in the extractor's FID feature space, to the nearest
  training image of the memorisation check (absent when memorisation is off or there is no
  held-out split); the training features come from the evaluation's cache, so this costs a few
  extractor passes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from genbench.metrics import memorisation as mem
from genbench.metrics.fidelity import CLASS_LAYER, FeatureExtraction, RealSide, supports_coverage
from genbench.metrics.real_cache import RealFeatureCache, feature_layer


def per_sample_metrics(evaluator: Any, images_u8: torch.Tensor) -> dict[str, list[Any]]:
    """Column name -> one value per image of ``images_u8`` (uint8 N×C×H×W), for the numbers the
    ``evaluator``'s extractor and settings support (empty when none does)."""
    spec, cfg = evaluator.spec, evaluator.cfg
    classify = supports_coverage(spec)
    nearest = evaluator.train is not None and cfg.memorisation.enabled
    if not (classify or nearest):
        return {}
    layer = feature_layer(spec, "fid")
    extract = FeatureExtraction(spec, [CLASS_LAYER] * classify + [layer] * nearest, cfg)
    features = extract(images_u8)
    out: dict[str, list[Any]] = {}
    if classify:
        probs = features[CLASS_LAYER].double().softmax(dim=1)
        confidence, predicted = probs.max(dim=1)
        out["predicted_class"] = [int(c) for c in predicted]
        out["confidence"] = [round(float(p), 4) for p in confidence]
    if nearest:
        cache = None
        if cfg.cache and evaluator.cache_dir is not None and evaluator.train_key is not None:
            cache = RealFeatureCache(Path(evaluator.cache_dir) / "fidelity", evaluator.train_key)
        train = RealSide(evaluator.real, extract, None, evaluator.train, cache).train_features(layer)
        distances, _ = mem.nearest_neighbours(features[layer], train)
        out["nn_train_distance"] = [round(float(d), 4) for d in distances]
    return out
