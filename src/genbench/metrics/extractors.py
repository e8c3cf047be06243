"""Feature extractors, all registered with torch-fidelity so every metric runs its code path.

Two kinds:

* ``inception-v3-compat`` -- torch-fidelity's own InceptionV3, for numbers comparable with papers.
  Its weights cannot be downloaded on our machines, so they must be a local file (or already be
  in the torch hub cache). We resolve the file *before* calling torch-fidelity, which would
  otherwise try the network; a missing file is an immediate error saying where to put it.
* ``genbench-in-domain`` -- a small CNN classifier trained on the dataset's own labels. Its
  penultimate layer (``features``, 64-d by default: far fewer dimensions than the CPU presets'
  sample counts, so covariances are full rank) serves FID / KID / precision-recall and its
  ``logits`` serve IS. It works offline and is the default for small grayscale datasets. It is
  trained once per (dataset, resolution, channels) into the cache directory and reused.

An :class:`ExtractorSpec` says which one a computation uses, with the hash of its weights: the
real-statistics cache is keyed on it, so a retrained extractor never reuses stale statistics.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch_fidelity.feature_extractor_base import FeatureExtractorBase
from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY, register_feature_extractor

from genbench import GenbenchError
from genbench.metrics.cache import atomic_torch_save, atomic_write_json, file_lock, read_json, sha256_file

log = logging.getLogger("genbench.metrics")

IN_DOMAIN = "genbench-in-domain"
INCEPTION = "inception-v3-compat"
EXTRACTOR_CHOICES = ("auto", "in-domain", INCEPTION)
_FILE_FORMAT = "genbench-in-domain-extractor/1"
INCEPTION_FILENAME = URL_INCEPTION_V3.rsplit("/", 1)[-1]


# --- the in-domain network ---------------------------------------------------------------------


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


def _normalise(images_u8: torch.Tensor) -> torch.Tensor:
    return images_u8.float().div(127.5).sub(1.0)


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
    if not isinstance(payload, dict) or payload.get("format") != _FILE_FORMAT:
        raise GenbenchError(f"{path} is not a genbench in-domain extractor file (expected format {_FILE_FORMAT}).")
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
        features, logits = self.net(_normalise(x))
        out = {"features": features.float(), "logits": logits.float()}
        return tuple(out[name] for name in self.features_list)


if IN_DOMAIN not in FEATURE_EXTRACTORS_REGISTRY:
    register_feature_extractor(IN_DOMAIN, InDomainExtractor)


# --- which extractor a computation uses ---------------------------------------------------------


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


def extractor_dir(cache_dir: str | Path, dataset: str, image_size: int, channels: int) -> Path:
    return Path(cache_dir) / "extractors" / f"{dataset}_{image_size}px_{channels}ch"


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


def inception_hub_path() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILENAME


def resolve_inception_weights(weights_path: str | Path | None = None) -> Path:
    """The local InceptionV3 weights file: the given path, else torch hub's cache.

    Checked before torch-fidelity is called: torch-fidelity would otherwise try to download the
    file (no internet here), and we never fall back silently to another extractor."""
    hub = inception_hub_path()
    how = (
        f"Download {URL_INCEPTION_V3} on a machine with internet access, then either put it at {hub} "
        "(torch hub's cache; TORCH_HOME moves it) or pass metrics.inception_weights=/path/to/"
        f"{INCEPTION_FILENAME}. Offline alternative: metrics.extractor=in-domain."
    )
    if weights_path is not None:
        path = Path(weights_path).expanduser()
        if not path.is_file():
            raise GenbenchError(f"InceptionV3 weights file {path} does not exist. {how}")
    elif hub.is_file():
        path = hub
    else:
        raise GenbenchError(f"InceptionV3 weights for {INCEPTION} are not available offline. {how}")
    _check_inception_state_dict(path)
    return path


_INCEPTION_SHAPES = {"Conv2d_1a_3x3.conv.weight": (32, 3, 3, 3), "fc.weight": (1008, 2048), "fc.bias": (1008,)}


def _check_inception_state_dict(path: Path) -> None:
    """Cheap structural check, so a wrong file is a clear error and not a stack of missing keys."""
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise GenbenchError(f"InceptionV3 weights file {path} cannot be read ({type(e).__name__}: {e}).") from e
    if not isinstance(sd, dict):
        raise GenbenchError(f"{path} is not a state dict of torch-fidelity's InceptionV3.")
    for key, shape in _INCEPTION_SHAPES.items():
        if key not in sd or tuple(sd[key].shape) != shape:
            found = tuple(sd[key].shape) if key in sd else "missing"
            raise GenbenchError(
                f"{path} is not torch-fidelity's InceptionV3 ({INCEPTION_FILENAME}): {key} should be {shape}, "
                f"found {found}. Use the file from {URL_INCEPTION_V3}."
            )


def inception_spec(weights_path: str | Path | None = None) -> ExtractorSpec:
    path = resolve_inception_weights(weights_path)
    return ExtractorSpec(
        name=INCEPTION, weights_path=path, weights_hash=sha256_file(path), rgb=True, feature_dim=2048, label=INCEPTION
    )


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
    if kind == "auto":
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


# --- training the in-domain extractor ------------------------------------------------------------


def _labels(datamodule: Any, split: str) -> torch.Tensor:
    labels = datamodule.dataset(split).labels
    if labels is None or bool((labels < 0).any()):
        raise GenbenchError(
            f"{datamodule.name} has no class labels, so no in-domain extractor can be trained on it. "
            "Use metrics.extractor=inception-v3-compat (with local weights) or a labelled dataset."
        )
    return labels.long()


@torch.no_grad()
def classifier_accuracy(net: DomainCNN, images_u8: torch.Tensor, labels: torch.Tensor, batch_size: int = 500) -> float:
    net.eval()
    correct = 0
    for i in range(0, len(images_u8), batch_size):
        _, logits = net(_normalise(images_u8[i : i + batch_size]))
        correct += int((logits.argmax(1) == labels[i : i + batch_size]).sum())
    return correct / max(1, len(images_u8))


def train_in_domain_extractor(
    datamodule: Any,
    epochs: int = 2,
    batch_size: int = 128,
    lr: float = 3e-3,
    feature_dim: int = 64,
    width: int = 16,
    seed: int = 0,
    min_steps: int = 200,
    progress: bool = True,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Train a :class:`DomainCNN` on the datamodule's training labels; return (file payload, report).

    A plain loop rather than a Lightning Trainer: it runs inside other jobs (a training run's
    evaluation callback, genbench-eval) where a nested Trainer would fight for loggers and hooks.
    Adam with a one-cycle schedule reaches >90% on Fashion-MNIST in 2 epochs on 2 CPU cores.
    ``min_steps`` raises the epoch count on small datasets (the synthetic one has a few batches
    per epoch), so the extractor is never left barely trained.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    datamodule.setup()
    images, labels = datamodule.real_images("train"), _labels(datamodule, "train")
    test_images, test_labels = datamodule.real_images("test"), _labels(datamodule, "test")
    num_classes = int(max(labels.max(), test_labels.max())) + 1
    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = DomainCNN(images.shape[1], num_classes, feature_dim=feature_dim, width=width)
    batch_size = min(batch_size, len(images))
    steps_per_epoch = len(images) // batch_size
    epochs = max(epochs, -(-min_steps // steps_per_epoch))
    total = epochs * steps_per_epoch
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=max(1, total), pct_start=0.15)
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn()]
    start = time.perf_counter()
    net.train()
    with Progress(*columns, transient=True, disable=not progress) as bar:
        task = bar.add_task(f"training in-domain extractor ({datamodule.name})", total=total)
        for _ in range(epochs):
            perm = torch.randperm(len(images), generator=g)
            for s in range(steps_per_epoch):
                idx = perm[s * batch_size : (s + 1) * batch_size]
                _, logits = net(_normalise(images[idx]))
                loss = F.cross_entropy(logits, labels[idx], label_smoothing=0.05)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                bar.advance(task)
    train_seconds = time.perf_counter() - start
    accuracy = classifier_accuracy(net, test_images, test_labels)
    report = {
        "dataset": datamodule.name,
        "image_size": int(images.shape[-1]),
        "channels": int(images.shape[1]),
        "num_classes": num_classes,
        "test_accuracy": accuracy,
        "num_test": len(test_images),
        "num_train": len(images),
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": lr,
        "train_seconds": round(train_seconds, 2),
        "seed": seed,
        **net.config,
    }
    payload = {
        "format": _FILE_FORMAT,
        "config": net.config,
        "state_dict": {k: v.detach().clone() for k, v in net.state_dict().items()},
        "dataset": datamodule.name,
        "image_size": int(images.shape[-1]),
        "test_accuracy": accuracy,
    }
    return payload, report


def ensure_in_domain_extractor(
    datamodule: Any,
    cache_dir: str | Path,
    train_if_missing: bool = True,
    force: bool = False,
    **train_kwargs: Any,
) -> Path:
    """Path of the dataset's in-domain extractor, training it first when missing (once: concurrent
    jobs wait on a lock and then reuse the file the first one wrote atomically)."""
    datamodule.setup()
    directory = extractor_dir(cache_dir, datamodule.name, datamodule.image_size, datamodule.channels)
    path = directory / "extractor.pt"

    def usable() -> bool:
        if force or not path.is_file():
            return False
        try:
            load_extractor_file(path)
            return True
        except GenbenchError as e:
            log.warning("%s; retraining it.", e)
            return False

    if usable():
        return path
    if not train_if_missing:
        raise GenbenchError(
            f"No in-domain extractor for {datamodule.name} at {datamodule.image_size}px in {directory}. Train it "
            f"with `genbench-train-extractor data={datamodule.name}` or set metrics.train_extractor=true."
        )
    with file_lock(directory.parent / f".{directory.name}.lock"):
        if usable():  # another job trained it while we waited
            return path
        log.info("Training the in-domain extractor for %s into %s", datamodule.name, directory)
        # callers may sit inside Lightning's validation loop (inference mode, no grad)
        with torch.inference_mode(False), torch.enable_grad():
            payload, report = train_in_domain_extractor(datamodule, **train_kwargs)
        atomic_torch_save(payload, path)
        report["weights_sha256"] = sha256_file(path)
        atomic_write_json(directory / "extractor.json", report)
        log.info(
            "In-domain extractor: %.2f%% test accuracy after %d epochs (%.0f s).",
            100 * report["test_accuracy"],
            report["epochs"],
            report["train_seconds"],
        )
    return path


def extractor_report(path: str | Path) -> dict[str, Any] | None:
    """The json written beside an extractor (test accuracy, training time...), if any."""
    return read_json(Path(path).with_name("extractor.json"))
