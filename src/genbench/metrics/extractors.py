"""Which feature extractor an evaluation uses, all registered with torch-fidelity so every metric
runs its code path: ``in-domain`` (:mod:`~genbench.metrics.in_domain`, trained on the dataset's
labels, offline) or ``inception-v3-compat`` (:mod:`~genbench.metrics.inception`, a local weights
file). ``auto`` picks the in-domain one for small grayscale datasets.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from genbench.errors import GenbenchError
from genbench.metrics.in_domain import in_domain_spec
from genbench.metrics.in_domain_training import ensure_in_domain_extractor
from genbench.metrics.inception import inception_spec
from genbench.metrics.spec import INCEPTION, ExtractorSpec

EXTRACTOR_CHOICES = ("auto", "in-domain", INCEPTION)


def resolve_extractor(
    kind: str,
    datamodule: Any,
    cache_dir: str | Path,
    inception_weights: str | Path | None = None,
    extractor_path: str | Path | None = None,
    train_if_missing: bool = True,
    train_kwargs: dict[str, Any] | None = None,
) -> ExtractorSpec:
    """Pick the extractor for ``datamodule``. ``auto``: in-domain for small grayscale datasets
    (where Inception features mean little and cost a lot), InceptionV3 otherwise."""
    if kind == "auto" and datamodule is None:  # no dataset to judge by: an explicit file decides
        kind = "in-domain" if extractor_path is not None else INCEPTION
    elif kind == "auto":
        small_grey = datamodule.channels == 1 and datamodule.image_size <= 64
        kind = "in-domain" if small_grey else INCEPTION
    if kind == INCEPTION:
        return inception_spec(inception_weights)
    if kind == "in-domain":
        if extractor_path is not None:
            return in_domain_spec(extractor_path)
        return in_domain_spec(
            ensure_in_domain_extractor(datamodule, cache_dir, train_if_missing, **(train_kwargs or {}))
        )
    raise GenbenchError(f"Unknown extractor '{kind}': use one of {', '.join(EXTRACTOR_CHOICES)}.")
