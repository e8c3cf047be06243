"""Mode coverage: which of the dataset's classes a model produces, and how far its class mix is
from the real one, judged by the in-domain extractor's classifier (trained on the dataset's labels).

FID mixes quality and diversity into one number; a generator that collapses onto three garments
can still reach a fair FID. Counting the classes the classifier assigns to generated samples makes
the collapse a number of its own. Both histograms are of *predicted* classes (the real one too), so the
classifier's own confusions appear on both sides and largely cancel.

Rules (documented in the README):

* ``classes_covered``: classes predicted for at least ``min_fraction`` (default 1 %) of the
  generated samples, and at least one sample;
* ``class_kl``: KL(real || generated) in nats between the two histograms after additive smoothing
  with ``smoothing`` pseudo-counts per class (default 0.5, Jeffreys): a class the model never
  produces gives a large but finite KL, which shrinks as the sample count grows.
"""

from __future__ import annotations

import math

import torch

from genbench.errors import GenbenchError


def class_counts(logits: torch.Tensor, num_classes: int | None = None) -> torch.Tensor:
    """Per-class counts of the arg-max predictions of N×K ``logits`` (int64, length K)."""
    if logits.ndim != 2 or logits.shape[0] == 0:
        raise GenbenchError(f"Class logits must be N×K with N >= 1, got {tuple(logits.shape)}.")
    k = num_classes or logits.shape[1]
    return torch.bincount(logits.argmax(dim=1), minlength=k).to(torch.int64)


def histogram(counts: torch.Tensor) -> list[float]:
    """Counts -> fractions summing to one (a plain list: it goes into JSON records)."""
    total = int(counts.sum())
    if total <= 0:
        raise GenbenchError("A class histogram needs at least one sample.")
    return [float(c) / total for c in counts.tolist()]


def classes_covered(counts: torch.Tensor, min_fraction: float = 0.01) -> int:
    """Classes that received at least ``min_fraction`` of the samples (and at least one)."""
    total = int(counts.sum())
    threshold = max(1, math.ceil(min_fraction * total - 1e-9))
    return int((counts >= threshold).sum())


def smoothed_kl(real_counts: torch.Tensor, generated_counts: torch.Tensor, smoothing: float = 0.5) -> float:
    """KL(p_real || p_generated) in nats, each histogram smoothed with ``smoothing`` pseudo-counts
    per class (so an empty class gives a finite value)."""
    if real_counts.shape != generated_counts.shape:
        raise GenbenchError(
            f"Class histograms of different lengths ({len(real_counts)} vs {len(generated_counts)}): "
            "both must come from the same classifier."
        )
    if smoothing < 0:
        raise GenbenchError(f"metrics.coverage.smoothing must be >= 0, got {smoothing}.")
    p = real_counts.double() + smoothing
    q = generated_counts.double() + smoothing
    p, q = p / p.sum(), q / q.sum()
    mask = p > 0
    if bool((q[mask] == 0).any()):
        return math.inf  # no smoothing and a real class the model never produces
    return float((p[mask] * (p[mask].log() - q[mask].log())).sum())


def coverage_metrics(
    generated_logits: torch.Tensor, real_counts: torch.Tensor, min_fraction: float = 0.01, smoothing: float = 0.5
) -> dict[str, object]:
    """The agreed result keys: ``classes_covered``, ``num_classes``, ``class_kl``, ``class_hist``
    (generated fractions) and ``real_class_hist``."""
    counts = class_counts(generated_logits, len(real_counts))
    return {
        "classes_covered": classes_covered(counts, min_fraction),
        "num_classes": len(real_counts),
        "class_kl": smoothed_kl(real_counts, counts, smoothing),
        "class_hist": histogram(counts),
        "real_class_hist": histogram(real_counts),
    }
