"""Metric computation with torch-fidelity's metric functions, around one feature pass per set.

input1 is the generated set, input2 the real split (torch-fidelity's precision/recall
convention), one registered extractor serves every metric. genbench runs torch-fidelity's own
extractor and per-metric functions (``isc/fid/kid_featuresdict_to_metric``, and the same k-NN
radii and ball tests as its ``calculate_precision_recall_part``), so the numbers are those of
``torch_fidelity.calculate_metrics`` (a test checks they are identical), but it drives them itself
for two reasons:

* everything about the real set that does not depend on the generated one -- features, FID
  statistics, precision/recall k-NN radii, class histogram, held-out nearest-training distances --
  is cached (verified, :mod:`genbench.metrics.real_cache`); torch-fidelity's own cache keeps the
  features and statistics but recomputes the N×N radii of the real set on every call, which made a
  cached evaluation only 1.6x faster than a cold one;
* one forward pass of the generated images gives the features of every metric plus the
  classifier logits of mode coverage (:mod:`genbench.metrics.coverage`) and the features of the
  memorisation check (:mod:`genbench.metrics.memorisation`).

Around that genbench checks the inputs and sample counts (one clear error instead of a
rank-deficient covariance or an assertion deep inside torch-fidelity).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, nullcontext
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch_fidelity
from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric
from torch_fidelity.metric_isc import isc_featuresdict_to_metric
from torch_fidelity.metric_prc import calc_cdist_part
from torch_fidelity.utils import create_feature_extractor, get_featuresdict_from_dataset

from genbench.devices import resolve_device
from genbench.errors import GenbenchError
from genbench.io import tensor_digest
from genbench.metrics import catalogue
from genbench.metrics import conditional as cond
from genbench.metrics import coverage as cov
from genbench.metrics import memorisation as mem
from genbench.metrics.images import UInt8ImageDataset, check_images
from genbench.metrics.real_cache import RealFeatureCache, feature_layer
from genbench.metrics.settings import MetricsConfig
from genbench.metrics.spec import IN_DOMAIN, ExtractorSpec

log = logging.getLogger("genbench.metrics")

#: the classifier layer mode coverage reads (only the in-domain extractor has one trained on the dataset's labels)
CLASS_LAYER = "logits"
#: reasons coverage was skipped, logged once per process each
_SKIPPED: set[str] = set()

#: torch-fidelity's result keys -> genbench's (logged as ``eval/<name>``)
RESULT_NAMES = {
    torch_fidelity.KEY_METRIC_FID: catalogue.FID,
    torch_fidelity.KEY_METRIC_KID_MEAN: catalogue.KID,
    torch_fidelity.KEY_METRIC_KID_STD: catalogue.KID_STD,
    torch_fidelity.KEY_METRIC_ISC_MEAN: catalogue.IS,
    torch_fidelity.KEY_METRIC_ISC_STD: catalogue.IS_STD,
    torch_fidelity.KEY_METRIC_PRECISION: catalogue.PRECISION,
    torch_fidelity.KEY_METRIC_RECALL: catalogue.RECALL,
    torch_fidelity.KEY_METRIC_F_SCORE: catalogue.F_SCORE,
}


def fid_from_features(generated: torch.Tensor, real: torch.Tensor | Mapping[str, np.ndarray]) -> float:
    """FID between two sets of features (N×d tensors; ``real`` may be its statistics already, as
    :func:`fid_features_to_statistics` gives them): torch-fidelity's statistics and Fréchet distance,
    the one FID computation of genbench (the unconditional number and the per-class one)."""
    real_stats = real if isinstance(real, Mapping) else fid_features_to_statistics(real)
    try:
        return float(
            fid_statistics_to_metric(fid_features_to_statistics(generated), real_stats, False)[
                torch_fidelity.KEY_METRIC_FID
            ]
        )
    except ValueError as e:  # torch-fidelity's vassert
        raise GenbenchError(f"torch-fidelity rejected the evaluation: {e}") from e


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


def supports_coverage(spec: ExtractorSpec) -> bool:
    """Mode coverage needs a classifier trained on the dataset's labels: the in-domain extractor's
    head. InceptionV3's logits are ImageNet classes, meaningless for the dataset's modes."""
    return spec.name == IN_DOMAIN


def _log_once(reason: str) -> None:
    if reason not in _SKIPPED:
        _SKIPPED.add(reason)
        log.info(reason)


def knn_radii(features: torch.Tensor, k: int, batch_size: int = 10_000) -> torch.Tensor:
    """Distance of each row to its k-th nearest other row: the radius of its ball in improved
    precision/recall, computed exactly as torch-fidelity 0.4.0's ``calculate_precision_recall_part``."""
    return torch.cat(
        [calc_cdist_part(b, features, batch_size).kthvalue(k + 1).values for b in features.split(batch_size)]
    )


def precision_recall_from_radii(
    generated: torch.Tensor,
    real: torch.Tensor,
    generated_radii: torch.Tensor,
    real_radii: torch.Tensor,
    batch_size: int = 10_000,
) -> dict[str, float]:
    """torch-fidelity's precision/recall/F-score given both sets' k-NN radii (the real ones
    cached). One generated x real distance matrix serves both (torch-fidelity computes it twice,
    once per direction), in generated-row chunks to bound memory."""
    inside_real = []  # per generated sample: inside some real sample's ball (precision)
    covered = torch.zeros(len(real), dtype=torch.bool)  # per real sample: inside some generated ball (recall)
    for start in range(0, len(generated), batch_size):
        d = calc_cdist_part(generated[start : start + batch_size], real, batch_size)
        inside_real.append((d <= real_radii).any(dim=1))
        covered |= (d <= generated_radii[start : start + batch_size, None]).any(dim=0)
    p, r = torch.cat(inside_real).float().mean().item(), covered.float().mean().item()
    return {"precision": p, "recall": r, "f_score": 2 * p * r / max(1e-5, p + r)}


def _poly_kernel_sum(x: np.ndarray, y: np.ndarray, gamma: float, off_diagonal: bool) -> float:
    """Sum of KID's polynomial kernel (x·y γ + 1)^3 over all pairs (without the diagonal when
    ``off_diagonal``): float32 products as torch-fidelity, cubed by two in-place multiplications
    (torch-fidelity's ``** 3`` is ~50x slower) and summed in float64."""
    k = x @ y.T
    k *= np.float32(gamma)
    k += np.float32(1.0)
    cube = k * k
    cube *= k
    total = float(cube.sum(dtype=np.float64))
    return total - float(np.trace(cube, dtype=np.float64)) if off_diagonal else total


def kid_subsets(n1: int, n2: int, subsets: int, subset_size: int, rng_seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """The (generated, real) row subsets torch-fidelity 0.4.0's KID draws: one RandomState, two
    draws without replacement per subset. The real ones depend on ``n1`` through the shared stream."""
    rng = np.random.RandomState(rng_seed)
    return [
        (rng.choice(n1, subset_size, replace=False), rng.choice(n2, subset_size, replace=False)) for _ in range(subsets)
    ]


def real_kernel_sums(real: torch.Tensor, draws: list[tuple[np.ndarray, np.ndarray]]) -> torch.Tensor:
    """Per subset, the off-diagonal kernel sum of the real rows: KID's term that depends on the
    real set alone (cached)."""
    gamma = 1.0 / real.shape[1]
    y = real.float().numpy()
    return torch.tensor([_poly_kernel_sum(y[iy], y[iy], gamma, True) for _, iy in draws], dtype=torch.float64)


def _subset_kernel_sums(
    x_all: np.ndarray, y_all: np.ndarray, x_idx: list[np.ndarray], y_idx: list[np.ndarray], gamma: float
) -> np.ndarray:
    """For every subset s, the sum of the cubic kernel over all pairs (x_idx[s] × y_idx[s]).

    Instead of one small kernel matrix per subset (torch-fidelity: 2 per subset on the generated
    side), the kernel of all generated rows against all of ``y_all`` is computed once, in row
    chunks, and multiplied by the subsets' 0/1 indicator matrix: one large matrix product in
    float64 instead of hundreds of small ones and their element-wise cubes."""
    subsets = len(x_idx)
    ax = np.zeros((subsets, len(x_all)))
    ay = np.zeros((subsets, len(y_all)))
    for s, (ix, iy) in enumerate(zip(x_idx, y_idx, strict=True)):
        ax[s, ix] = 1.0
        ay[s, iy] = 1.0
    total = np.zeros(subsets)
    for start in range(0, len(x_all), 1024):
        k = (x_all[start : start + 1024] @ y_all.T).astype(np.float64)
        k *= gamma
        k += 1.0
        cube = k * k
        cube *= k
        total += np.einsum("sc,cs->s", ax[:, start : start + 1024], cube @ ay.T)
    return total


def kid_from_features(
    generated: torch.Tensor,
    real: torch.Tensor,
    draws: list[tuple[np.ndarray, np.ndarray]],
    real_sums: torch.Tensor | None = None,
) -> dict[str, float]:
    """KID (Binkowski et al., 2018) as torch-fidelity 0.4.0 computes it (cubic polynomial kernel,
    gamma = 1/d, coef0 = 1, unbiased MMD^2 over the same random subsets; mean and population std),
    with the kernel sums in float64 (it agrees with torch-fidelity's float32 to ~1e-6 relative, and
    is several times faster: see :func:`_subset_kernel_sums`), and the real-only term
    ``real_sums`` taken from the cache when given."""
    gamma = 1.0 / generated.shape[1]
    x_all, y_all = generated.float().numpy(), real.float().numpy()
    if real_sums is None:
        real_sums = real_kernel_sums(real, draws)
    x_idx, y_idx = [ix for ix, _ in draws], [iy for _, iy in draws]
    m = len(x_idx[0])
    xx = _subset_kernel_sums(x_all, x_all, x_idx, x_idx, gamma)
    diag = ((x_all.astype(np.float64) ** 2).sum(axis=1) * gamma + 1.0) ** 3  # k(x_i, x_i)
    xx -= np.array([diag[ix].sum() for ix in x_idx])
    xy = _subset_kernel_sums(x_all, y_all, x_idx, y_idx, gamma)
    values = (xx + real_sums.numpy()) / (m * (m - 1)) - 2 * xy / (m * m)
    return {"kid_mean": float(values.mean()), "kid_std": float(values.std())}


class FeatureExtraction:
    """One torch-fidelity extractor (built once) that returns the requested layers of a set of images."""

    def __init__(self, spec: ExtractorSpec, layers: list[str], cfg: MetricsConfig) -> None:
        self.spec, self.layers, self.cfg = spec, sorted(set(layers)), cfg
        self.cuda = resolve_device(cfg.device).type == "cuda"

    @cached_property
    def extractor(self) -> Any:
        kwargs = {**self.spec.torch_fidelity_kwargs(), "verbose": self.cfg.verbose}
        try:
            return create_feature_extractor(self.spec.name, self.layers, cuda=self.cuda, **kwargs)
        except RuntimeError as e:
            if "state_dict" in str(e):
                raise GenbenchError(f"The weights {self.spec.weights_path} do not fit {self.spec.label}: {e}") from e
            raise

    def __call__(self, images_u8: torch.Tensor) -> dict[str, torch.Tensor]:
        data = UInt8ImageDataset(images_u8, rgb=self.spec.rgb)
        # save_cpu_ram: num_workers=0 -- the images are already in memory; no worker processes
        return get_featuresdict_from_dataset(
            data, self.extractor, self.cfg.batch_size, self.cuda, True, self.cfg.verbose
        )


class RealSide:
    """Everything about the real set that does not depend on the generated one, each item computed
    on first use and, with a cache, read from (or written to) its verified file."""

    def __init__(
        self,
        images: torch.Tensor,
        extract: FeatureExtraction,
        cache: RealFeatureCache | None,
        train: torch.Tensor | None = None,
        train_cache: RealFeatureCache | None = None,
    ) -> None:
        self.images, self.extract, self.cache = images, extract, cache
        self.train, self.train_cache = train, train_cache
        self.name = extract.spec.name
        self._features: dict[str, torch.Tensor] | None = None
        self._train_features: dict[str, torch.Tensor] | None = None

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the real set's cache lock, then the training set's (re-entrant: items fetched
        inside take them again freely)."""
        real_lock = self.cache.lock() if self.cache is not None else nullcontext()
        train_lock = self.train_cache.lock() if self.train_cache is not None else nullcontext()
        with real_lock, train_lock:
            yield

    def _get(self, cache: RealFeatureCache | None, item: str, compute: Any) -> Any:
        return compute() if cache is None else cache.get(f"{self.name}-{item}", compute)

    def _all_features(self) -> dict[str, torch.Tensor]:
        if self._features is None:  # one pass gives every layer; the others are stored alongside
            self._features = self.extract(self.images)
            if self.cache is not None:
                for layer, value in self._features.items():
                    self.cache.store(f"{self.name}-features-{layer}", value)
        return self._features

    def features(self, layer: str) -> torch.Tensor:
        return self._get(self.cache, f"features-{layer}", lambda: self._all_features()[layer])

    def fid_statistics(self, layer: str) -> dict[str, np.ndarray]:
        def compute() -> dict[str, torch.Tensor]:
            stats = fid_features_to_statistics(self.features(layer))
            return {k: torch.from_numpy(np.asarray(v)) for k, v in stats.items()}

        return {k: v.numpy() for k, v in self._get(self.cache, f"stat-fid-{layer}", compute).items()}

    def prc_radii(self, layer: str, k: int) -> torch.Tensor:
        return self._get(self.cache, f"prc-radii-k{k}-{layer}", lambda: knn_radii(self.features(layer), k))

    def kid_real_sums(self, layer: str, draws: list[tuple[np.ndarray, np.ndarray]], n1: int, seed: int) -> torch.Tensor:
        """KID's real-only kernel sums for torch-fidelity's subsets at ``n1`` generated images."""
        m = len(draws[0][1])
        return self._get(
            self.cache,
            f"kid-real-sums-n{n1}-m{m}-s{len(draws)}-seed{seed}-{layer}",
            lambda: real_kernel_sums(self.features(layer), draws),
        )

    def class_counts(self) -> torch.Tensor:
        return self._get(self.cache, "class-counts", lambda: cov.class_counts(self.features(CLASS_LAYER)))

    def train_features(self, layer: str) -> torch.Tensor:
        assert self.train is not None

        def compute() -> torch.Tensor:
            if self._train_features is None:
                self._train_features = self.extract(self.train)
            return self._train_features[layer]

        return self._get(self.train_cache, f"features-{layer}", compute)

    def heldout_nn(self, layer: str) -> torch.Tensor:
        """Each real (held-out) image's distance to its nearest training image."""
        assert self.train is not None
        digest = tensor_digest(self.train)[:12]
        return self._get(
            self.cache,
            f"nn-train{len(self.train)}-{digest}-{layer}",
            lambda: mem.nearest_neighbours(self.features(layer), self.train_features(layer))[0],
        )


def generated_layers(
    spec: ExtractorSpec, cfg: MetricsConfig, memorise: bool = False, labels: bool = False
) -> list[str]:
    """The extractor layers :func:`compute_metrics` reads of the generated images: each enabled
    metric's layer, FID's for memorisation (``memorise``: training images given and the check on),
    and the classifier's for mode coverage and, with ``labels`` (a conditional model's samples),
    the class accuracy -- both only where the extractor has a classifier of the dataset's labels."""
    layer = feature_layer(spec, "fid")
    isc_layer, kid_layer, prc_layer = (feature_layer(spec, m) for m in ("isc", "kid", "prc"))
    memorise = memorise and cfg.memorisation.enabled
    wanted = [(isc_layer, cfg.isc), (layer, cfg.fid or memorise), (kid_layer, cfg.kid), (prc_layer, cfg.prc)]
    classes = supports_coverage(spec) and (cfg.coverage.enabled or (labels and cfg.conditional.enabled))
    return sorted({name for name, used in wanted if used} | ({CLASS_LAYER} if classes else set()))


def compute_metrics(
    generated: torch.Tensor,
    real: torch.Tensor,
    spec: ExtractorSpec,
    cfg: MetricsConfig | Mapping[str, Any] | None = None,
    cache_dir: str | Path | None = None,
    real_key: str | None = None,
    train: torch.Tensor | None = None,
    train_key: str | None = None,
    pairs_path: str | Path | None = None,
    labels: torch.Tensor | None = None,
    real_labels: torch.Tensor | None = None,
    num_classes: int | None = None,
    features: Mapping[str, torch.Tensor] | None = None,
) -> dict[str, Any]:
    """FID / KID / IS / precision-recall of ``generated`` (input1) against ``real`` (input2), plus
    mode coverage (in-domain extractor only) and, with ``train`` images, memorisation (the PNG of
    the closest pairs goes to ``pairs_path``). With ``cache_dir`` and ``real_key`` (``train_key``)
    everything about the real (training) set is cached, verified, under ``<cache_dir>/fidelity/``.

    ``labels``: the classes the generated images were asked for (a conditional model), out of
    ``num_classes``; with them come the class accuracy (in-domain extractor only) and, given the
    real images' ``real_labels``, the intra-class FID (:mod:`genbench.metrics.conditional`), from the
    same feature pass.

    ``features``: the generated images' features, already extracted (layer -> one row per image, in
    the images' order; the layers :func:`generated_layers` names), e.g. by several DDP ranks each
    extracting its share; None: extracted here."""
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
    if train is not None:
        train = check_images(train, "training")
        if train.shape[1:] != real.shape[1:]:
            raise GenbenchError(f"Training images are {tuple(train.shape[1:])}, real ones {tuple(real.shape[1:])}.")

    coverage = cfg.coverage.enabled and supports_coverage(spec)
    if cfg.coverage.enabled and not coverage:
        _log_once(f"Mode coverage skipped: {spec.label} has no classifier trained on the dataset's labels.")
    conditional = labels is not None and cfg.conditional.enabled
    if conditional and num_classes is None:
        raise GenbenchError("Conditional metrics need the number of classes (num_classes) beside the labels.")
    accuracy = conditional and supports_coverage(spec)
    if conditional and not accuracy:
        _log_once(f"Class accuracy skipped: {spec.label} has no classifier trained on the dataset's labels.")
    intra = conditional and cfg.fid and real_labels is not None
    memorise = cfg.memorisation.enabled and train is not None
    layer = feature_layer(spec, "fid")  # FID's layer also serves memorisation
    isc_layer, kid_layer, prc_layer = (feature_layer(spec, m) for m in ("isc", "kid", "prc"))
    layers = generated_layers(spec, cfg, memorise=memorise, labels=labels is not None)
    extract = FeatureExtraction(spec, layers, cfg)
    cache = train_cache = None
    if cfg.cache and cache_dir is not None and real_key is not None:
        cache = RealFeatureCache(Path(cache_dir) / "fidelity", real_key)
        if train is not None and train_key is not None:
            train_cache = RealFeatureCache(Path(cache_dir) / "fidelity", train_key)
    real_side = RealSide(real, extract, cache, train, train_cache)

    if features is None:
        gen = extract(generated)
    else:  # extracted elsewhere (each DDP rank its share, then gathered): the same rows, in order
        missing = [name for name in layers if name not in features]
        if missing or any(len(features[name]) != len(generated) for name in layers):
            raise GenbenchError(
                f"compute_metrics got features of layers {sorted(features)} for {len(generated)} images; it needs "
                f"layers {layers} with one row per image (extract them with genbench.metrics.fidelity.generated_layers)."
            )
        gen = {name: features[name].cpu() for name in layers}
    # Everything about the real (and training) set, read or computed in one go under their locks
    # (real, then training: one order everywhere), so of concurrent jobs exactly one computes it.
    with real_side.locked():
        wanted_real = {kid_layer} if cfg.kid else set()
        wanted_real |= {prc_layer} if cfg.prc else set()
        wanted_real |= {layer} if intra else set()
        real_features = {name: real_side.features(name) for name in wanted_real}
        fid_stats = real_side.fid_statistics(layer) if cfg.fid else None
        kid_draws = kid_sums = None
        if cfg.kid:
            n_real = len(real_features[kid_layer])
            kid_draws = kid_subsets(len(generated), n_real, cfg.kid_subsets, kid_subset or 1000, cfg.rng_seed)
            kid_sums = real_side.kid_real_sums(kid_layer, kid_draws, len(generated), cfg.rng_seed)
        real_radii = real_side.prc_radii(prc_layer, cfg.prc_neighborhood) if cfg.prc else None
        real_counts = real_side.class_counts() if coverage else None
        train_features = real_side.train_features(layer) if memorise else None
        heldout_nn = real_side.heldout_nn(layer) if memorise else None

    kwargs = dict(isc_splits=cfg.isc_splits, rng_seed=cfg.rng_seed, verbose=cfg.verbose)
    out: dict[str, Any] = {}
    try:
        if cfg.isc:
            out.update(isc_featuresdict_to_metric(gen, isc_layer, **kwargs))
    except ValueError as e:  # torch-fidelity's vassert
        raise GenbenchError(f"torch-fidelity rejected the evaluation: {e}") from e
    result: dict[str, Any] = _rename(out)
    if fid_stats is not None:
        result[catalogue.FID] = fid_from_features(gen[layer], fid_stats)
    if kid_draws is not None:
        result.update(kid_from_features(gen[kid_layer], real_features[kid_layer], kid_draws, kid_sums))
    if real_radii is not None:
        g = gen[prc_layer]
        result.update(
            precision_recall_from_radii(g, real_features[prc_layer], knn_radii(g, cfg.prc_neighborhood), real_radii)
        )
    if real_counts is not None:
        result.update(
            cov.coverage_metrics(gen[CLASS_LAYER], real_counts, cfg.coverage.min_fraction, cfg.coverage.smoothing)
        )
    if accuracy:
        assert labels is not None
        result.update(cond.class_accuracy(gen[CLASS_LAYER], labels, num_classes))
    if intra:
        assert labels is not None and real_labels is not None and num_classes is not None
        result.update(cond.intra_class_fid(gen[layer], labels, real_features[layer], real_labels, num_classes))
    if train_features is not None and heldout_nn is not None:
        assert train is not None
        nn_dist, nn_idx = mem.nearest_neighbours(gen[layer], train_features)
        result.update(mem.memorisation_metrics(nn_dist, heldout_nn))
        if pairs_path is not None and cfg.memorisation.grid_pairs > 0:
            written = mem.save_closest_pairs(generated, train, nn_dist, nn_idx, pairs_path, cfg.memorisation.grid_pairs)
            result["closest_pairs"] = str(written)
    return result


def _rename(raw: Mapping[str, Any]) -> dict[str, Any]:
    return {RESULT_NAMES[k]: float(v) for k, v in raw.items() if k in RESULT_NAMES}
