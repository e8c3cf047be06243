"""Metric computation through torch-fidelity, with a verified on-disk cache for the real side.

Every reported number comes from one ``torch_fidelity.calculate_metrics`` call per evaluation:
input1 is the generated set, input2 the real split (torch-fidelity's precision/recall convention),
one registered extractor serves every metric. Around that call genbench adds what torch-fidelity
does not do:

* input checks that turn bad images or too few samples into one clear :class:`GenbenchError`
  (instead of a rank-deficient covariance or an assertion deep inside torch-fidelity);
* a cache key for the real features that names the dataset, split, resolution, the exact real
  images (content hash) and the extractor's weights hash -- torch-fidelity's own cache names
  carry none of the latter, so a retrained extractor would silently reuse stale statistics;
* a manifest of SHA-256 sums for the cache files: a corrupt or unknown file is deleted and
  recomputed, never loaded; filling the cache happens under a lock so concurrent jobs neither
  duplicate the work nor read each other's partial state.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from genbench import GenbenchError
from genbench.metrics.cache import atomic_write_json, file_lock, read_json, sha256_file, tensor_digest
from genbench.metrics.extractors import ExtractorSpec, resolve_extractor

log = logging.getLogger("genbench.metrics")

#: torch-fidelity's result keys -> genbench's (logged as ``eval/<name>``)
RESULT_NAMES = {
    "frechet_inception_distance": "fid",
    "kernel_inception_distance_mean": "kid_mean",
    "kernel_inception_distance_std": "kid_std",
    "inception_score_mean": "is_mean",
    "inception_score_std": "is_std",
    "precision": "precision",
    "recall": "recall",
    "f_score": "f_score",
}
#: the direction in which each metric improves (for monitors / reports)
LOWER_IS_BETTER = {"fid": True, "kid_mean": True, "is_mean": False, "precision": False, "recall": False}


@dataclass
class MetricsConfig:
    """The ``metrics`` config group (conf/metrics/*.yaml), one field per key."""

    num_samples: int = 10_000
    #: auto | in-domain | inception-v3-compat
    extractor: str = "auto"
    split: str = "test"
    #: local InceptionV3 weights (null: torch hub's cache); never downloaded
    inception_weights: str | None = None
    #: an explicit in-domain extractor file (null: the dataset's, under cache_dir/extractors/)
    extractor_path: str | None = None
    #: train the in-domain extractor when it does not exist yet
    train_extractor: bool = True
    #: kwargs of genbench.metrics.extractors.train_in_domain_extractor
    extractor_training: dict[str, Any] = field(default_factory=dict)
    fid: bool = True
    kid: bool = True
    isc: bool = True
    prc: bool = True
    kid_subsets: int = 100
    #: null: min(1000, number of samples)
    kid_subset_size: int | None = None
    isc_splits: int = 10
    prc_neighborhood: int = 3
    batch_size: int = 256
    rng_seed: int = 2020
    #: cache the real split's features and statistics
    cache: bool = True
    #: auto (cuda when available) | cpu | cuda
    device: str = "auto"
    verbose: bool = False

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Any] | None) -> MetricsConfig:
        if mapping is None:
            return cls()
        if isinstance(mapping, MetricsConfig):
            return mapping
        try:
            from omegaconf import DictConfig, OmegaConf

            if isinstance(mapping, DictConfig):
                mapping = OmegaConf.to_container(mapping, resolve=True)
        except ImportError:  # pragma: no cover
            pass
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(mapping) - known)
        if unknown:
            raise GenbenchError(f"Unknown metrics setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}.")
        return cls(**dict(mapping))

    def enabled(self) -> list[str]:
        return [m for m in ("fid", "kid", "isc", "prc") if getattr(self, m)]


# --- inputs --------------------------------------------------------------------------------------


class UInt8ImageDataset(Dataset):
    """What torch-fidelity wants from a Dataset: each item a bare uint8 C×H×W tensor (a tuple
    would fail). ``rgb`` repeats grayscale to 3 channels for InceptionV3."""

    def __init__(self, images_u8: torch.Tensor, rgb: bool = False) -> None:
        self.images = images_u8
        self.rgb = rgb and images_u8.shape[1] == 1

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> torch.Tensor:
        x = self.images[i]
        return x.expand(3, -1, -1).contiguous() if self.rgb else x


def check_images(images: Any, what: str) -> torch.Tensor:
    """Accept uint8 [0, 255] or float [-1, 1] (the sampling contract) N×C×H×W images and return
    them as uint8 on the CPU; anything else is a clear error naming what to change."""
    from genbench.data.base import to_uint8

    if not torch.is_tensor(images):
        raise GenbenchError(f"The {what} images must be a torch.Tensor, got {type(images).__name__}.")
    if images.ndim != 4 or images.shape[1] not in (1, 3) or images.shape[-1] < 2 or images.shape[-2] < 2:
        raise GenbenchError(
            f"The {what} images must be shaped N×C×H×W with C = 1 or 3, got {tuple(images.shape)}. "
            "A single image needs a batch dimension (x[None])."
        )
    if images.shape[0] == 0:
        raise GenbenchError(f"There are no {what} images.")
    if images.dtype == torch.uint8:
        return images.detach().cpu()
    if not images.is_floating_point():
        raise GenbenchError(f"The {what} images must be uint8 [0, 255] or float [-1, 1], got {images.dtype}.")
    if not bool(torch.isfinite(images).all()):
        raise GenbenchError(f"The {what} images contain NaN or inf: the model diverged (check its training losses).")
    lo, hi = float(images.min()), float(images.max())
    if lo < -1.001 or hi > 1.001:
        raise GenbenchError(
            f"The {what} images are floats in [{lo:.3g}, {hi:.3g}], outside [-1, 1] (the sampling contract). "
            "Scale them to [-1, 1], or pass uint8 [0, 255] images."
        )
    return to_uint8(images).cpu()


def _feature_layer(spec: ExtractorSpec, metric: str) -> str:
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

    return FEATURE_EXTRACTORS_REGISTRY[spec.name].get_default_feature_layer_for_metric(metric)


def check_sample_counts(n_generated: int, n_real: int, spec: ExtractorSpec, cfg: MetricsConfig) -> int | None:
    """Refuse counts for which a metric is undefined or meaningless; returns the KID subset size."""
    n = min(n_generated, n_real)
    if cfg.fid and n <= spec.feature_dim:
        raise GenbenchError(
            f"FID needs more samples than feature dimensions: {spec.label} features are {spec.feature_dim}-d but "
            f"there are {n_generated} generated and {n_real} real images, so the covariance is rank deficient. "
            f"Raise metrics.num_samples above {spec.feature_dim} (ideally 10x), or use the in-domain extractor."
        )
    subset = None
    if cfg.kid:
        subset = cfg.kid_subset_size if cfg.kid_subset_size is not None else min(1000, n)
        if subset < 2 or subset > n:
            raise GenbenchError(
                f"KID subsets of {subset} samples need at least that many images in each set (have {n_generated} "
                f"generated, {n_real} real). Set metrics.kid_subset_size <= {n} (or null for min(1000, n))."
            )
    if cfg.isc and n_generated < max(2, cfg.isc_splits):
        raise GenbenchError(
            f"IS over {cfg.isc_splits} splits needs at least {cfg.isc_splits} generated images, got {n_generated}: "
            "lower metrics.isc_splits or raise metrics.num_samples."
        )
    if cfg.prc and n <= cfg.prc_neighborhood:
        raise GenbenchError(
            f"Precision/recall with k={cfg.prc_neighborhood} neighbours needs more than {cfg.prc_neighborhood} "
            f"images per set, got {n}."
        )
    return subset


def _use_cuda(device: str) -> bool:
    if device == "auto":
        return torch.cuda.is_available()
    if device == "cuda" and not torch.cuda.is_available():
        raise GenbenchError("metrics.device=cuda but no GPU is visible; use metrics.device=auto or cpu.")
    if device not in ("cpu", "cuda"):
        raise GenbenchError(f"Unknown metrics.device={device}: use auto, cpu or cuda.")
    return device == "cuda"


# --- the verified cache --------------------------------------------------------------------------


class RealFeatureCache:
    """torch-fidelity's file cache for input2, under a key that means something, plus a manifest
    of SHA-256 sums so that only files this class has seen written are ever loaded."""

    def __init__(self, root: str | Path, key: str) -> None:
        self.root = Path(root)
        self.key = key
        self.manifest_path = self.root / f"{key}.manifest.json"

    def files(self) -> list[Path]:
        return sorted(self.root.glob(f"{self.key}-*.pt"))

    def _manifest(self) -> dict[str, str]:
        data = read_json(self.manifest_path)
        files = data.get("files") if isinstance(data, dict) else None
        return files if isinstance(files, dict) else {}

    def expected(self, spec: ExtractorSpec, cfg: MetricsConfig) -> list[str]:
        """The file names torch-fidelity will look up for this request (see its metrics.py)."""
        prefix = f"{self.key}-{spec.name}"
        layers = sorted({_feature_layer(spec, m) for m in cfg.enabled()})
        only_fid = cfg.enabled() == ["fid"]
        names = [] if only_fid else [f"{prefix}-features-{layer}.pt" for layer in layers]
        if cfg.fid:
            names.append(f"{prefix}-stat-fid-{_feature_layer(spec, 'fid')}.pt")
        return names

    def is_complete(self, names: list[str]) -> bool:
        manifest = self._manifest()
        for name in names:
            path = self.root / name
            if not path.is_file() or manifest.get(name) != sha256_file(path):
                return False
        return True

    def purge_unverified(self) -> list[str]:
        """Delete every file of this key whose checksum the manifest does not vouch for."""
        manifest, removed = self._manifest(), []
        for path in self.files():
            if manifest.get(path.name) != sha256_file(path):
                path.unlink(missing_ok=True)
                removed.append(path.name)
        if removed:
            log.warning("Real-feature cache: discarded %s (corrupt or unverified); recomputing.", ", ".join(removed))
        return removed

    def record(self) -> None:
        files = {p.name: sha256_file(p) for p in self.files()}
        atomic_write_json(self.manifest_path, {"key": self.key, "files": files, "written": time.time()})

    def lock(self) -> Any:
        return file_lock(self.root / f".{self.key}.lock")


def real_cache_key(real: torch.Tensor, spec: ExtractorSpec, dataset: str = "real", split: str = "custom") -> str:
    """dataset, split, resolution, the exact images and the extractor weights, in one file-name-safe key."""
    c, h, w = real.shape[1:]
    safe = "".join(ch if ch.isalnum() or ch in "._" else "_" for ch in f"{dataset}-{split}")
    return f"{safe}-{h}x{w}x{c}-n{len(real)}-img{tensor_digest(real)[:12]}-w{spec.weights_hash[:12]}"


# --- the computation -----------------------------------------------------------------------------


def compute_metrics(
    generated: torch.Tensor,
    real: torch.Tensor,
    spec: ExtractorSpec,
    cfg: MetricsConfig | Mapping[str, Any] | None = None,
    cache_dir: str | Path | None = None,
    real_key: str | None = None,
) -> dict[str, float]:
    """FID / KID / IS / precision-recall of ``generated`` (input1) against ``real`` (input2),
    all from one torch-fidelity call. With ``cache_dir`` and ``real_key`` the real side's features
    and statistics are cached (verified) under ``<cache_dir>/fidelity/``."""
    import torch_fidelity

    cfg = MetricsConfig.from_mapping(cfg)
    if not cfg.enabled():
        raise GenbenchError("No metric enabled: set at least one of metrics.fid/kid/isc/prc to true.")
    generated, real = check_images(generated, "generated"), check_images(real, "real")
    if generated.shape[1:] != real.shape[1:]:
        raise GenbenchError(
            f"Generated images are {tuple(generated.shape[1:])} but real ones {tuple(real.shape[1:])}: "
            "evaluate a model against the dataset it was trained on (same resolution and channels)."
        )
    if spec.input_shape is not None and tuple(real.shape[1:]) != spec.input_shape:
        raise GenbenchError(
            f"The extractor {spec.label} takes {spec.input_shape} images, these are {tuple(real.shape[1:])}: "
            "use the in-domain extractor of this dataset/resolution (metrics.extractor=in-domain)."
        )
    kid_subset = check_sample_counts(len(generated), len(real), spec, cfg)
    binary = cfg.fid or cfg.kid or cfg.prc  # IS alone never looks at the real images
    kwargs: dict[str, Any] = dict(
        input1=UInt8ImageDataset(generated, rgb=spec.rgb),
        input2=UInt8ImageDataset(real, rgb=spec.rgb) if binary else None,
        fid=cfg.fid,
        kid=cfg.kid,
        isc=cfg.isc,
        prc=cfg.prc,
        kid_subsets=cfg.kid_subsets,
        kid_subset_size=kid_subset or 1000,
        isc_splits=cfg.isc_splits,
        prc_neighborhood=cfg.prc_neighborhood,
        batch_size=cfg.batch_size,
        rng_seed=cfg.rng_seed,
        cuda=_use_cuda(cfg.device),
        save_cpu_ram=True,  # num_workers=0: the images are already in memory; no worker processes
        verbose=cfg.verbose,
        cache=False,
        **spec.torch_fidelity_kwargs(),
    )

    def run() -> dict[str, Any]:
        try:
            return torch_fidelity.calculate_metrics(**kwargs)
        except ValueError as e:  # torch-fidelity's vassert
            raise GenbenchError(f"torch-fidelity rejected the evaluation: {e}") from e
        except RuntimeError as e:
            if "state_dict" in str(e):
                raise GenbenchError(f"The weights {spec.weights_path} do not fit {spec.label}: {e}") from e
            raise

    if binary and cfg.cache and cache_dir is not None and real_key is not None:
        cache = RealFeatureCache(Path(cache_dir) / "fidelity", real_key)
        kwargs.update(cache=True, cache_root=str(cache.root), input2_cache_name=real_key)
        names = cache.expected(spec, cfg)
        if not cache.is_complete(names):
            cache.root.mkdir(parents=True, exist_ok=True)
            with cache.lock():
                if not cache.is_complete(names):  # still missing after waiting for other jobs
                    cache.purge_unverified()
                    raw = run()
                    cache.record()
                    return _rename(raw)
        raw = run()
    else:
        raw = run()
    return _rename(raw)


def _rename(raw: Mapping[str, Any]) -> dict[str, float]:
    return {RESULT_NAMES[k]: float(v) for k, v in raw.items() if k in RESULT_NAMES}


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
        datamodule: Any,
        cfg: MetricsConfig | Mapping[str, Any] | None = None,
        cache_dir: str | Path | None = None,
        progress: bool = True,
    ) -> Evaluator:
        """The evaluator of a dataset's split (``cfg.split``) with ``cfg.extractor`` (trained if needed)."""
        cfg = MetricsConfig.from_mapping(cfg)
        if cache_dir is None and cfg.extractor != "inception-v3-compat" and cfg.extractor_path is None:
            raise GenbenchError("The in-domain extractor lives in a cache directory: pass cache_dir (paths.cache_dir).")
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
        real = datamodule.real_images(cfg.split)
        return cls(real, spec, cfg, cache_dir=cache_dir, dataset=datamodule.name, split=cfg.split)

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


def sample_uint8(
    model: Any, n: int, generator: torch.Generator | None = None, batch_size: int | None = None, **sample_kwargs: Any
) -> torch.Tensor:
    """Draw ``n`` images through the sampling contract and return them as uint8 on the CPU,
    moving each chunk off the device as soon as it is drawn (10k images stay cheap in memory)."""
    chunk = batch_size or getattr(model, "sample_batch_size", 256)
    out = []
    for start in range(0, n, chunk):
        x = model.sample(min(chunk, n - start), generator=generator, **sample_kwargs)
        out.append(check_images(x, "generated"))
    return torch.cat(out)
