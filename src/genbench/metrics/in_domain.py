"""The in-domain feature extractor: a small CNN classifier trained on the dataset's own labels.

Its penultimate layer (``features``, 64-d by default: far fewer dimensions than the CPU presets'
sample counts, so covariances are full rank) serves FID / KID / precision-recall and its
``logits`` serve IS. It works offline and is the default for small grayscale datasets. This module
holds the network, its file format and its torch-fidelity adapter (registered on import);
training it lives in :mod:`genbench.metrics.in_domain_training`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch_fidelity.feature_extractor_base import FeatureExtractorBase
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY, register_feature_extractor

from genbench.data.base import to_unit_range
from genbench.errors import GenbenchError
from genbench.io import sha256_file
from genbench.metrics.spec import IN_DOMAIN, ExtractorSpec

FILE_FORMAT = "genbench-in-domain-extractor/1"


class DomainCNN(nn.Module):
    """Three conv stages (BatchNorm, max-pool) -> a ``feature_dim`` bottleneck -> class logits.

    The bottleneck is taken after its BatchNorm and before the ReLU: features are then roughly
    standardised and never exactly zero, which keeps their covariance well conditioned."""

    def __init__(self, channels: int, num_classes: int, feature_dim: int = 64, width: int = 16) -> None:
        super().__init__()
        self.config = {"channels": channels, "num_classes": num_classes, "feature_dim": feature_dim, "width": width}

        def stage(c_in: int, c_out: int) -> list[nn.Module]:
            return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]

        w = width
        self.body = nn.Sequential(
            *stage(channels, w),
            nn.MaxPool2d(2),
            *stage(w, 2 * w),
            nn.MaxPool2d(2),
            *stage(2 * w, 4 * w),
            nn.AdaptiveMaxPool2d(4),
            nn.Flatten(),
        )
        self.bottleneck = nn.Sequential(nn.Linear(4 * w * 16, feature_dim, bias=False), nn.BatchNorm1d(feature_dim))
        self.head = nn.Sequential(nn.ReLU(), nn.Dropout(0.2), nn.Linear(feature_dim, num_classes))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: float images in [-1, 1] -> (features, logits)."""
        features = self.bottleneck(self.body(x))
        return features, self.head(features)


def load_extractor_file(path: str | Path) -> dict[str, Any]:
    """Read and check an in-domain extractor file; every way it can be wrong is one clear error."""
    path = Path(path)
    if not path.is_file():
        raise GenbenchError(
            f"In-domain extractor weights {path} do not exist. Train them with "
            "`genbench-train-extractor data=<dataset>` (or let evaluation train them: metrics.train_extractor=true)."
        )
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise GenbenchError(
            f"In-domain extractor file {path} is corrupt ({type(e).__name__}). Delete it; it is retrained on next use."
        ) from e
    if not isinstance(payload, dict) or payload.get("format") != FILE_FORMAT:
        raise GenbenchError(f"{path} is not a genbench in-domain extractor file (expected format {FILE_FORMAT}).")
    return payload


def build_domain_cnn(payload: dict[str, Any], path: str | Path = "extractor") -> DomainCNN:
    net = DomainCNN(**payload["config"])
    try:
        net.load_state_dict(payload["state_dict"])
    except RuntimeError as e:
        raise GenbenchError(
            f"Weights in {path} do not fit the in-domain extractor they describe ({e}). Delete the file to retrain it."
        ) from e
    return net.eval()


class InDomainExtractor(FeatureExtractorBase):
    """torch-fidelity adapter around :class:`DomainCNN`.

    torch-fidelity constructs it as ``cls(name, features_list, **all_kwargs)``, so the weights
    file arrives as ``feature_extractor_weights_path``. It takes uint8 N×C×H×W (what
    torch-fidelity feeds) and normalises to [-1, 1] itself, exactly as during training.
    """

    #: images that went through ``forward`` since import (tests and perf read it to prove caching)
    images_seen: int = 0

    def __init__(
        self, name: str, features_list: list[str], feature_extractor_weights_path: str | None = None, **kwargs: Any
    ) -> None:
        super().__init__(name, features_list)
        if feature_extractor_weights_path is None:
            raise GenbenchError("The in-domain extractor needs feature_extractor_weights_path (its weights file).")
        payload = load_extractor_file(feature_extractor_weights_path)
        self.net = build_domain_cnn(payload, feature_extractor_weights_path)
        self.channels = int(payload["config"]["channels"])
        self.image_size = int(payload["image_size"])
        self.requires_grad_(False)
        self.eval()

    @staticmethod
    def get_provided_features_list() -> tuple[str, ...]:
        return ("features", "logits")

    @staticmethod
    def get_default_feature_layer_for_metric(metric: str) -> str:
        return "logits" if metric == "isc" else "features"

    @staticmethod
    def can_be_compiled() -> bool:
        return False

    @staticmethod
    def get_dummy_input_for_compile() -> torch.Tensor:
        return torch.zeros(1, 1, 32, 32, dtype=torch.uint8)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if not (torch.is_tensor(x) and x.dtype == torch.uint8 and x.ndim == 4):
            raise GenbenchError(f"The in-domain extractor takes uint8 N×C×H×W images, got {getattr(x, 'dtype', x)}.")
        if tuple(x.shape[1:]) != (self.channels, self.image_size, self.image_size):
            raise GenbenchError(
                f"The in-domain extractor was trained on {self.channels}×{self.image_size}×{self.image_size} images, "
                f"got {tuple(x.shape[1:])}: evaluate at the dataset's resolution and channels."
            )
        type(self).images_seen += x.shape[0]
        features, logits = self.net(to_unit_range(x))
        out = {"features": features.float(), "logits": logits.float()}
        return tuple(out[name] for name in self.features_list)


if IN_DOMAIN not in FEATURE_EXTRACTORS_REGISTRY:
    register_feature_extractor(IN_DOMAIN, InDomainExtractor)


def extractor_dir(cache_dir: str | Path, dataset: str, image_size: int, channels: int, key: str) -> Path:
    """``<cache>/extractors/<dataset>_<size>px_<channels>ch-<key>``: ``key`` hashes everything that
    changes the trained weights (training images and labels, training settings), so an extractor
    trained on a subset or with other settings never takes the full one's place."""
    return Path(cache_dir) / "extractors" / f"{dataset}_{image_size}px_{channels}ch-{key}"


def in_domain_spec(path: str | Path) -> ExtractorSpec:
    path = Path(path)
    payload = load_extractor_file(path)
    cfg = payload["config"]
    return ExtractorSpec(
        name=IN_DOMAIN,
        weights_path=path,
        weights_hash=sha256_file(path),
        rgb=False,
        feature_dim=int(cfg["feature_dim"]),
        label=f"in-domain:{payload.get('dataset', 'unknown')}_{payload['image_size']}px_{cfg['channels']}ch",
        input_shape=(int(cfg["channels"]), int(payload["image_size"]), int(payload["image_size"])),
        test_accuracy=payload.get("test_accuracy"),
    )
