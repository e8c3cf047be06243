"""The metric catalogue: every number an evaluation can report, declared once with its name
constant, direction, format and meaning. The evaluator logs the scalars it lists (``eval/<name>``
in every logger, W&B included), the leaderboard aggregates and formats them, the verdict ranks by
their direction, and genbench-compare reads them back: a new metric is one entry here.

Likelihoods are reported per bound: a family's ``likelihood_bounds`` names its bounds (``elbo``,
``iwae``, ``vlb``, ``exact``...), and each becomes ``bpd_<bound>`` (:func:`metric` derives its
entry), so a family with a new kind of bound needs no entry of its own.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

# --- name constants: what results, logs and tables call each measure ------------------------------
FID = "fid"
KID = "kid_mean"
KID_STD = "kid_std"
IS = "is_mean"
IS_STD = "is_std"
PRECISION = "precision"
RECALL = "recall"
F_SCORE = "f_score"
BPD = "bpd"
BPD_SE = "bpd_se"
BOUND_PREFIX = "bpd_"  # bpd_<bound>: one entry per likelihood bound a family reports
CLASSES_COVERED = "classes_covered"
NUM_CLASSES = "num_classes"
CLASS_KL = "class_kl"
MEMORISED = "memorised_frac"
NN_TRAIN = "nn_train_median"
NN_HELDOUT = "nn_heldout_median"
COND_ACCURACY = "cond_accuracy"
INTRA_FID = "intra_fid"
INTRA_FID_SAMPLES = "intra_fid_samples_per_class"

#: the logged metric the sampling noise is judged on (lower is better): SamplingBenchmark chooses
#: the sampler by it, and the report quotes its standard deviation over sampling seeds
NOISE_METRIC = f"eval/{FID}"


@dataclass(frozen=True)
class Metric:
    """One measure: its result key, table title, better direction (None: a count or diagnostic),
    format style (fid | sci | is | pct | bpd | nats | int | sig3 | seconds | load | rate), unit,
    the values it can take (a t interval is clipped to them: with 2 seeds t = 12.7, and
    "FID [-3, 150]" would be nonsense; KID's unbiased estimate can be negative), what it means,
    and whether it is a per-evaluation metric the leaderboard aggregates over seeds (else it is
    bookkeeping: a count, a cost)."""

    name: str
    title: str
    lower_is_better: bool | None
    style: str
    description: str
    unit: str = ""
    bounds: tuple[float | None, float | None] = (0.0, None)
    aggregate: bool = True
    scalar: bool = True


_ENTRIES = (
    Metric(FID, "FID", True, "fid", "Fréchet distance between real and generated feature statistics"),
    Metric(
        KID, "KID", True, "sci", "kernel inception distance (unbiased MMD^2, mean over subsets)", bounds=(None, None)
    ),
    Metric(KID_STD, "KID std", None, "sci", "KID's standard deviation over subsets", aggregate=False),
    Metric(IS, "IS", False, "is", "inception score (exp of the mean KL of p(y|x) from p(y))", bounds=(1.0, None)),
    Metric(IS_STD, "IS std", None, "is", "IS's standard deviation over splits", aggregate=False),
    Metric(PRECISION, "precision", False, "pct", "share of samples inside the real manifold (k-NN)", bounds=(0, 1)),
    Metric(RECALL, "recall", False, "pct", "share of real images inside the samples' manifold (k-NN)", bounds=(0, 1)),
    Metric(F_SCORE, "F-score", False, "pct", "harmonic mean of precision and recall", bounds=(0, 1), aggregate=False),
    Metric(BPD, "bpd", True, "bpd", "the family's headline NLL bound on the test split", "bits/dim"),
    Metric(BPD_SE, "bpd s.e.", None, "bpd", "standard error of bpd over test images", "bits/dim"),
    Metric(CLASSES_COVERED, "classes covered", False, "int", "classes the extractor assigns to any sample"),
    Metric(NUM_CLASSES, "classes", None, "int", "classes of the dataset", aggregate=False),
    Metric(CLASS_KL, "class KL", True, "nats", "KL of the real class histogram from the samples'", "nats"),
    Metric(
        MEMORISED, "memorised", True, "pct", "samples nearer a training image than any test image is", bounds=(0, 1)
    ),
    Metric(NN_TRAIN, "NN dist. to train", None, "sig3", "median feature distance of samples to training images"),
    Metric(NN_HELDOUT, "held-out NN dist.", None, "sig3", "median feature distance of test images to training"),
    Metric(
        COND_ACCURACY,
        "class accuracy",
        False,
        "pct",
        "share of a conditional model's samples the in-domain classifier assigns to the class asked for (mean over classes)",
        bounds=(0, 1),
    ),
    Metric(
        INTRA_FID,
        "intra-class FID",
        True,
        "fid",
        "FID of the samples asked for each class against that class's real images, averaged over classes",
    ),
    Metric(
        INTRA_FID_SAMPLES, "samples per class", None, "int", "samples per class of the intra-class FID", aggregate=False
    ),
    # bookkeeping: recorded with every evaluation, formatted in tables, not ranked
    Metric("iwae_k", "IWAE samples", None, "int", "importance samples of an IWAE bound", aggregate=False),
    Metric("likelihood_images", "likelihood images", None, "int", "test images of the bound", aggregate=False),
    Metric("images_seen", "images seen", None, "int", "training images seen", aggregate=False),
    Metric("cpu_seconds", "CPU s", None, "seconds", "process CPU seconds in training batches", aggregate=False),
    Metric("load_avg", "load", None, "load", "mean 1-minute load average while training", aggregate=False),
    Metric("cpu_count", "cores", None, "int", "cores of the machine", aggregate=False),
    Metric("num_samples", "samples", None, "int", "generated images per evaluation", aggregate=False),
    Metric("train_seconds", "train s", None, "seconds", "pure training seconds", aggregate=False, scalar=False),
    Metric("num_parameters", "params", None, "int", "trainable parameters", aggregate=False, scalar=False),
    Metric(
        "train_images_per_second", "train img/s", None, "rate", "training throughput", aggregate=False, scalar=False
    ),  # fmt: skip
    Metric(
        "sample_images_per_second", "sample img/s", None, "rate", "sampling throughput", aggregate=False, scalar=False
    ),  # fmt: skip
)

#: name -> Metric, in display order
CATALOGUE: dict[str, Metric] = {m.name: m for m in _ENTRIES}

#: the headline metrics: plots and the short table show these
HEADLINE: tuple[str, ...] = (FID, KID, IS, PRECISION, RECALL)

#: the extra columns of the markdown table (shown when any row has them)
EXTRA_COLUMNS: tuple[str, ...] = (BPD, CLASSES_COVERED, CLASS_KL, MEMORISED)

#: the conditional table's columns (a class-conditional model's runs and the floor)
CONDITIONAL_COLUMNS: tuple[str, ...] = (COND_ACCURACY, INTRA_FID)

#: well-known bound names and how tables title them (any other bound: "bpd (<name>)")
_BOUND_TITLES = {"elbo": "ELBO", "iwae": "IWAE", "vlb": "VLB", "ode": "ODE"}


def metric(name: str) -> Metric | None:
    """The catalogue entry of ``name`` (``bpd_<bound>`` derived from ``bpd``), or None."""
    if name in CATALOGUE:
        return CATALOGUE[name]
    if name.startswith(BOUND_PREFIX) and name not in (BPD_SE, BOUND_PREFIX):
        bound = name.removeprefix(BOUND_PREFIX)
        title = _BOUND_TITLES.get(bound, bound)
        return replace(CATALOGUE[BPD], name=name, title=f"bpd ({title})", description=f"the {title} bound on NLL")
    return None


def is_scalar(name: str) -> bool:
    """Whether an evaluation logs ``name`` as ``eval/<name>``."""
    m = metric(name)
    return m is not None and m.scalar


def scalar_results(result: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """The numeric entries of ``result`` that the catalogue lists as scalars, as floats (``prefix``
    prepended, e.g. ``eval/``); absent, None and non-numeric values are left out."""
    out = {}
    for name, value in result.items():
        if isinstance(value, bool) or not isinstance(value, int | float) or not is_scalar(name):
            continue
        out[f"{prefix}{name}"] = float(value)
    return out


def aggregated(keys: Any = ()) -> list[str]:
    """The per-evaluation metrics a leaderboard aggregates: the catalogue's, then any bound names
    among ``keys`` (e.g. the keys the runs' results have), in catalogue order."""
    names = [m.name for m in _ENTRIES if m.aggregate]
    names += sorted({k for k in keys if k not in CATALOGUE and (m := metric(k)) is not None and m.aggregate})
    return names


__all__ = [
    "BPD",
    "CATALOGUE",
    "COND_ACCURACY",
    "CONDITIONAL_COLUMNS",
    "EXTRA_COLUMNS",
    "FID",
    "HEADLINE",
    "INTRA_FID",
    "IS",
    "KID",
    "NOISE_METRIC",
    "PRECISION",
    "RECALL",
    "Metric",
    "aggregated",
    "is_scalar",
    "metric",
    "scalar_results",
]
