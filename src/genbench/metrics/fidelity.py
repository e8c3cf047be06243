"""Metric computation through torch-fidelity: one ``calculate_metrics`` call per evaluation.

input1 is the generated set, input2 the real split (torch-fidelity's precision/recall
convention), one registered extractor serves every metric. Around that call genbench checks the
inputs and sample counts (one clear error instead of a rank-deficient covariance or an assertion
deep inside torch-fidelity) and caches the real side (:mod:`genbench.metrics.real_cache`).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch_fidelity

from genbench.devices import resolve_device
from genbench.errors import GenbenchError
from genbench.metrics.images import UInt8ImageDataset, check_images
from genbench.metrics.real_cache import RealFeatureCache
from genbench.metrics.settings import MetricsConfig
from genbench.metrics.spec import ExtractorSpec

#: torch-fidelity's result keys -> genbench's (logged as ``eval/<name>``)
RESULT_NAMES = {
    torch_fidelity.KEY_METRIC_FID: "fid",
    torch_fidelity.KEY_METRIC_KID_MEAN: "kid_mean",
    torch_fidelity.KEY_METRIC_KID_STD: "kid_std",
    torch_fidelity.KEY_METRIC_ISC_MEAN: "is_mean",
    torch_fidelity.KEY_METRIC_ISC_STD: "is_std",
    torch_fidelity.KEY_METRIC_PRECISION: "precision",
    torch_fidelity.KEY_METRIC_RECALL: "recall",
    torch_fidelity.KEY_METRIC_F_SCORE: "f_score",
}


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
        cuda=resolve_device(cfg.device).type == "cuda",
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
