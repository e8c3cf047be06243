"""Metrics of a class-conditional model: does a sample asked for class k look like class k, and
like the real images of class k? Pure functions over features, logits and labels (torch-fidelity
style), plus the guidance sweep that scores a guided family at several guidance scales.

* ``cond_accuracy``: the in-domain classifier (trained on the dataset's labels; its test accuracy
  is recorded beside every result) classifies each sample; the share classified as the class it
  was asked for, per class, and their mean (the mean over classes, so a class the model renders
  badly weighs as much as any other). It is bounded by the classifier's own accuracy: real test
  images score about that, which is why the floor row reports the same number for real images.
* ``intra_fid``: FID of the samples asked for class k against the real images of class k (the
  evaluation's real split), computed per class with the same FID code as the unconditional
  number (:func:`genbench.metrics.fidelity.fid_from_features`) and averaged over classes. FID is
  biased by the sample count, so it is comparable only at equal per-class counts: the floor
  repeats it for real training images at the same count per class.
* the guidance sweep (:func:`guidance_sweep`): FID, precision, recall, accuracy and intra-class
  FID at several guidance scales w, for a family that declares ``FamilySpec.guidance`` (its
  ``sample()`` takes ``guidance=w``: guided = (1 + w) * conditional - w * unconditional, so w = 0
  is the plain conditional model and larger w trades diversity for class fidelity).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from genbench.errors import GenbenchError
from genbench.metrics import catalogue

#: result keys (registered in the metric catalogue)
ACCURACY = catalogue.COND_ACCURACY
INTRA_FID = catalogue.INTRA_FID
#: per-class lists recorded beside them (not scalars)
ACCURACY_PER_CLASS = "cond_accuracy_per_class"
INTRA_FID_PER_CLASS = "intra_fid_per_class"
#: the smallest per-class sample count of the intra-class FID (what the floor repeats)
INTRA_FID_SAMPLES = catalogue.INTRA_FID_SAMPLES
#: the guidance sweep's record: a list of {"guidance": w, <metric>: value, ...}
GUIDANCE = "guidance"
#: what the sweep keeps of each evaluation
SWEEP_METRICS = (catalogue.FID, catalogue.PRECISION, catalogue.RECALL, ACCURACY, INTRA_FID)


def _check_labels(labels: torch.Tensor, n: int, num_classes: int, what: str) -> torch.Tensor:
    labels = torch.as_tensor(labels).detach().cpu()
    if labels.ndim != 1 or len(labels) != n or labels.is_floating_point():
        raise GenbenchError(
            f"The {what} labels must be {n} integers (one per image), got {labels.dtype} {tuple(labels.shape)}."
        )
    if n and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise GenbenchError(
            f"The {what} labels run {int(labels.min())}..{int(labels.max())}, outside the {num_classes} classes: "
            "use a conditional model trained on this dataset (data.num_classes)."
        )
    return labels.long()


def class_accuracy(logits: torch.Tensor, labels: torch.Tensor, num_classes: int | None = None) -> dict[str, Any]:
    """The classifier's accuracy on samples asked for ``labels``: per class (None for a class no
    sample was asked for) and the mean over the classes that were asked for.

    ``logits``: N×K classifier outputs of the samples (the in-domain extractor's ``logits``)."""
    if logits.ndim != 2 or logits.shape[0] == 0:
        raise GenbenchError(f"Class logits must be N×K with N >= 1, got {tuple(logits.shape)}.")
    k = num_classes or logits.shape[1]
    labels = _check_labels(labels, len(logits), k, "generated")
    correct = (logits.argmax(dim=1).cpu() == labels).double()
    per_class: list[float | None] = []
    for c in range(k):
        mask = labels == c
        per_class.append(float(correct[mask].mean()) if bool(mask.any()) else None)
    asked = [a for a in per_class if a is not None]
    return {ACCURACY: float(np.mean(asked)), ACCURACY_PER_CLASS: per_class}


def intra_class_fid(
    generated: torch.Tensor,
    labels: torch.Tensor,
    real: torch.Tensor,
    real_labels: torch.Tensor,
    num_classes: int,
) -> dict[str, Any]:
    """FID per class between the features of the samples asked for class k and those of the real
    images of class k, and its mean over the classes that were asked for (None for the others).

    Every class asked for needs more samples (and real images) than feature dimensions, else its
    covariance is rank deficient: that is one clear error naming the count to raise."""
    from genbench.metrics.fidelity import fid_from_features

    labels = _check_labels(labels, len(generated), num_classes, "generated")
    real_labels = _check_labels(real_labels, len(real), num_classes, "real")
    dim = generated.shape[1]
    per_class: list[float | None] = []
    counts = []
    for c in range(num_classes):
        gen_c, real_c = generated[labels == c], real[real_labels == c]
        if len(gen_c) == 0:
            per_class.append(None)
            continue
        if min(len(gen_c), len(real_c)) <= dim:
            raise GenbenchError(
                f"Intra-class FID needs more images per class than feature dimensions ({dim}), but class {c} has "
                f"{len(gen_c)} samples and {len(real_c)} real images. Raise metrics.num_samples to at least "
                f"{num_classes * (dim + 1)} ({num_classes} classes x {dim + 1}), or set metrics.conditional.enabled=false."
            )
        per_class.append(fid_from_features(gen_c, real_c))
        counts.append(len(gen_c))
    asked = [f for f in per_class if f is not None]
    return {INTRA_FID: float(np.mean(asked)), INTRA_FID_PER_CLASS: per_class, INTRA_FID_SAMPLES: min(counts)}


def balanced_indices(labels: torch.Tensor, per_class: int, num_classes: int) -> torch.Tensor:
    """Indices of the first ``per_class`` images of every class (in the order given): a real set
    with as many images per class as a conditional model's balanced sample, for the floor."""
    labels = torch.as_tensor(labels)
    picked = []
    for c in range(num_classes):
        idx = torch.nonzero(labels == c).flatten()[:per_class]
        if len(idx) < per_class:
            raise GenbenchError(
                f"The floor needs {per_class} real images of class {c} but the split has {len(idx)}: lower "
                "metrics.num_samples."
            )
        picked.append(idx)
    # interleaved (0, 1, ..., K-1, 0, ...) like the classes a conditional model is asked for
    return torch.stack(picked, dim=1).flatten()


def balanced_labels(n: int, num_classes: int) -> torch.Tensor:
    """The classes of a class-balanced sample of ``n``: 0, 1, ..., K-1, 0, ... (as
    ``GenerativeModel.class_labels`` draws them when asked for nothing)."""
    return torch.arange(n) % num_classes


def guided(model: Any) -> bool:
    """Whether ``model`` takes ``sample(..., guidance=w)``: a conditional model of a family whose
    spec declares ``guidance`` (genbench.registry)."""
    from genbench.registry import find_family

    spec = find_family(getattr(model, "family", None))
    return bool(getattr(model, "conditional", False) and spec is not None and spec.guidance)


def guidance_sweep(scales: Sequence[float], evaluate_at: Callable[[float], Mapping[str, Any]]) -> list[dict[str, Any]]:
    """``evaluate_at(w)`` (sample with ``guidance=w``, evaluate) for every scale, keeping the
    sweep's metrics (:data:`SWEEP_METRICS`, those that were computed): a list of
    ``{"guidance": w, "fid": ..., ...}`` in the order of ``scales``."""
    out = []
    for w in scales:
        result = evaluate_at(float(w))
        out.append({"guidance": float(w), **{k: result[k] for k in SWEEP_METRICS if result.get(k) is not None}})
    return out


def sweep_scalars(sweep: Sequence[Mapping[str, Any]], prefix: str = "eval/") -> dict[str, float]:
    """The sweep as loggable scalars: ``<prefix>guidance_w<w>/<metric>`` (e.g. ``eval/guidance_w2/fid``)."""
    out = {}
    for point in sweep:
        w = f"{point['guidance']:g}"
        for k, v in point.items():
            if k != GUIDANCE and isinstance(v, int | float):
                out[f"{prefix}guidance_w{w}/{k}"] = float(v)
    return out


__all__ = [
    "ACCURACY",
    "GUIDANCE",
    "INTRA_FID",
    "SWEEP_METRICS",
    "balanced_indices",
    "balanced_labels",
    "class_accuracy",
    "guidance_sweep",
    "guided",
    "intra_class_fid",
    "sweep_scalars",
]
