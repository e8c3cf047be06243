"""What a metric computation needs to know about its feature extractor, in one small record.

An :class:`ExtractorSpec` names the torch-fidelity extractor, its weights file and their hash,
the feature dimension and input shape; the real-statistics cache is keyed on the weights hash,
so a retrained extractor never reuses stale statistics.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: torch-fidelity registry names of genbench's two extractors
IN_DOMAIN = "genbench-in-domain"
INCEPTION = "inception-v3-compat"


@dataclass(frozen=True)
class ExtractorSpec:
    """Everything torch-fidelity and the cache need to know about one extractor."""

    name: str  # torch-fidelity registry name
    weights_path: Path
    weights_hash: str  # sha256 of the weights file
    rgb: bool  # grayscale images must be repeated to 3 channels
    feature_dim: int  # dimension of the layer FID / KID / PRC use
    label: str  # recorded beside the metrics, e.g. "in-domain:fashion_mnist_32px_1ch"
    input_shape: tuple[int, int, int] | None = None  # None: any size (Inception resizes)
    test_accuracy: float | None = None

    def torch_fidelity_kwargs(self) -> dict[str, Any]:
        return {"feature_extractor": self.name, "feature_extractor_weights_path": str(self.weights_path)}

    def describe(self) -> dict[str, Any]:
        out = {"extractor": self.label, "extractor_weights_sha256": self.weights_hash[:16]}
        if self.test_accuracy is not None:
            out["extractor_test_accuracy"] = self.test_accuracy
        return out
