"""An :class:`Evaluator`: real images + an extractor + settings, ready to score generated images.

The one object every evaluation path uses (the training callback, ``genbench-eval``, the
benchmark's real-vs-real floor), so their numbers come from the same code.

Evaluation images are drawn by :func:`sample_share` in chunks whose noise depends only on the
evaluation seed and the chunk's index, so one process or several DDP ranks (each drawing a
contiguous share of the chunks) produce the same images in the same order. Under DDP each rank also
extracts its share's features (:meth:`Evaluator.extract`); the rows are gathered in rank order
(:func:`genbench.distributed.gather_rows`, torchmetrics' uneven all-gather) and rank 0 computes the
metrics from them.

Why gathered rows and not torchmetrics' sum-reduced metric states (``FrechetInceptionDistance``
keeps the sum of features and of their outer products, reduced with ``dist_reduce_fx="sum"``):
only FID can be computed from sums. KID draws random subsets of rows, precision/recall needs every
row's k-th nearest neighbour, IS splits the rows in order, mode coverage and the class accuracy read
each sample's logits, the intra-class FID and memorisation need each sample's features -- and KID,
precision/recall, intra-class FID and memorisation read FID's own layer with both extractors. The rows are therefore gathered anyway, and sums would only
add traffic; from the rows FID is torch-fidelity's own computation (a test checks that torchmetrics'
FID of the same features agrees). The rows are small: n x d float32 (64-d in-domain features:
2.6 MB for 10,000 samples; 2048-d InceptionV3 features: 82 MB).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import torch

from genbench.distributed import share
from genbench.errors import GenbenchError
from genbench.metrics.catalogue import CATALOGUE
from genbench.metrics.extractors import resolve_extractor
from genbench.metrics.fidelity import FeatureExtraction, compute_metrics, generated_layers
from genbench.metrics.images import check_images, sample_uint8
from genbench.metrics.real_cache import real_cache_key
from genbench.metrics.settings import MetricsConfig
from genbench.metrics.spec import INCEPTION, ExtractorSpec

log = logging.getLogger("genbench.metrics")

#: every scalar an evaluation result may carry (the metric catalogue's scalars): the training
#: callback logs these as ``eval/<name>``, genbench-eval logs them too, and readers (compare,
#: report) can rely on it; a family's likelihood bounds add ``bpd_<bound>`` (catalogue.metric).
#: Lists and texts (``class_hist``, ``likelihood``, ``closest_pairs``, ``extractor``...) are
#: recorded in the JSON results but are not scalars.
SCALAR_RESULTS: tuple[str, ...] = tuple(m.name for m in CATALOGUE.values() if m.scalar)

#: the evaluation images come in at least this many chunks (fewer only when there are fewer
#: images), so up to this many DDP ranks each draw a share; a chunk is never larger than the
#: model's ``sample_batch_size``
SAMPLE_CHUNKS = 8


def sample_chunks(n: int, batch_size: int) -> list[range]:
    """The global image indices of each sampling chunk of an ``n``-image evaluation: a function of
    ``n`` and the model's batch size alone, never of the number of ranks (that is what makes the
    images the same whatever the world size)."""
    size = max(1, min(batch_size, math.ceil(n / SAMPLE_CHUNKS)))
    return [range(start, min(start + size, n)) for start in range(0, n, size)]


class SampleChunk(NamedTuple):
    """One chunk of an evaluation's images: their global indices, the uint8 images, their classes."""

    indices: range
    images: torch.Tensor
    labels: torch.Tensor | None


def seeded_chunks(
    model: Any,
    n: int,
    seed: int,
    labels: torch.Tensor | None = None,
    which: Iterable[int] | None = None,
    **sample_kwargs: Any,
) -> Iterator[SampleChunk]:
    """The images of seed ``seed``, one chunk of :func:`sample_chunks` at a time (``which``: these
    chunk numbers only, in this order; None: every chunk). This is the one definition of "the
    ``n`` images of a seed" that the evaluations, ``genbench.api.sample`` and ``genbench-sample``
    share: chunk c is drawn with a CPU generator seeded ``seed + 7919 c``, so an image depends on
    the seed, ``n``, the model's ``sample_batch_size`` (the chunking) and its index only, never on
    which process draws it or whether the chunks are kept or written out one by one.

    ``labels``: the classes of all ``n`` images, each chunk given its part; a conditional model
    asked for nothing gets every class in turn over the ``n`` images (not restarting at each chunk)."""
    if labels is not None and len(labels) != n:
        raise GenbenchError(f"An evaluation of {n} images needs one label per image, got {len(labels)}.")
    if labels is None and getattr(model, "num_classes", None) is not None:
        labels = model.class_labels(n)
    chunks = sample_chunks(n, int(getattr(model, "sample_batch_size", None) or 256))
    for c in range(len(chunks)) if which is None else which:
        part = chunks[c]
        generator = torch.Generator().manual_seed(seed + 7919 * c)
        classes = None if labels is None else labels[part.start : part.stop]
        given = {} if classes is None else {"labels": classes}
        images = sample_uint8(model, len(part), generator, batch_size=len(part), **given, **sample_kwargs)
        yield SampleChunk(part, images, classes)


def sample_share(
    model: Any,
    n: int,
    seed: int,
    rank: int = 0,
    world: int = 1,
    labels: torch.Tensor | None = None,
    **sample_kwargs: Any,
) -> tuple[torch.Tensor, range]:
    """Rank ``rank``'s share of ``n`` evaluation images as uint8, and their global indices.

    The images are :func:`seeded_chunks`'; the ranks take contiguous runs of chunks
    (:func:`genbench.distributed.share`: earlier ranks one chunk more where they do not divide
    evenly). So every image depends on the seed and its index only: gathered in rank order, the
    shares are exactly the ``n`` images one process draws (``world=1``), no padding and no
    duplicate. ``labels``: the classes of all ``n`` images (a conditional model), each chunk given
    its part."""
    chunks = sample_chunks(n, int(getattr(model, "sample_batch_size", None) or 256))
    mine = share(len(chunks), world, rank)
    out = [chunk.images for chunk in seeded_chunks(model, n, seed, labels, which=mine, **sample_kwargs)]
    span = range(chunks[mine[0]].start, chunks[mine[-1]].stop) if len(mine) else range(0)
    if out:
        return torch.cat(out), span
    return torch.zeros((0, *tuple(model.image_shape)), dtype=torch.uint8), span


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
        train_images: torch.Tensor | None = None,
        test_images: torch.Tensor | None = None,
        test_labels: torch.Tensor | None = None,
        real_labels: torch.Tensor | None = None,
        num_classes: int | None = None,
    ) -> None:
        """``train_images``: the training subset memorisation compares against (None: no
        memorisation); ``test_images``: the held-out images the likelihood is measured on, and
        ``test_labels`` their classes (what a conditional model's likelihood is conditioned on);
        ``real_labels``: the classes of ``real_images`` (out of ``num_classes``), which the
        intra-class FID of a conditional model's samples needs (None: no intra-class FID)."""
        self.real = check_images(real_images, "real")
        self.spec = spec
        self.cfg = MetricsConfig.from_mapping(cfg)
        self.cache_dir = cache_dir
        self.dataset = dataset
        self.split = split
        self._key: str | None = None
        self.train = None if train_images is None else check_images(train_images, "training")
        self.test_images = test_images
        self.test_labels = test_labels
        self.real_labels = None if real_labels is None else torch.as_tensor(real_labels).long()
        if self.real_labels is not None and len(self.real_labels) != len(self.real):
            raise GenbenchError(f"{len(self.real_labels)} real labels for {len(self.real)} real images.")
        self.num_classes = num_classes
        self._train_key: str | None = None
        if self.train is not None and split == "train":
            log.info("Memorisation skipped: the real images are the training split, so none is held out.")
            self.train = None

    @classmethod
    def for_datamodule(
        cls,
        datamodule: Any | None,
        cfg: MetricsConfig | Mapping[str, Any] | None = None,
        cache_dir: str | Path | None = None,
        progress: bool = True,
        real: torch.Tensor | None = None,
        real_label: str | None = None,
    ) -> Evaluator:
        """The evaluator of a dataset's split (``cfg.split``) with ``cfg.extractor`` (the in-domain
        one is trained on first use). ``real`` replaces the split's images (e.g. a folder or a
        slice of a split, named ``real_label`` as ``<dataset>:<split>``); the dataset is still
        what the in-domain extractor is trained on, and may only be left out with an explicit
        extractor (``metrics.extractor_path`` or InceptionV3)."""
        cfg = MetricsConfig.from_mapping(cfg)
        explicit = cfg.extractor == INCEPTION or cfg.extractor_path is not None
        if datamodule is None and not explicit:
            raise GenbenchError(
                "Without a dataset there is no in-domain extractor: add data=<name>, or metrics.extractor_path=<file>, "
                f"or metrics.extractor={INCEPTION}."
            )
        if cache_dir is None and not explicit:
            raise GenbenchError("The in-domain extractor lives in a cache directory: pass cache_dir (paths.cache_dir).")
        if datamodule is not None:
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
        if real is None:
            real, real_label = datamodule.real_images(cfg.split), f"{datamodule.name}:{cfg.split}"
        dataset, _, split = (real_label or "real").partition(":")
        train = test = test_labels = real_labels = None
        num_classes = getattr(datamodule, "num_classes", None)
        if datamodule is not None and real_label == f"{datamodule.name}:{cfg.split}" and num_classes:
            labels = datamodule.dataset(cfg.split).labels
            real_labels = labels if len(labels) and int(labels.min()) >= 0 else None  # -1: unlabelled data
        if datamodule is not None:
            test = datamodule.real_images("test")
            test_labels = datamodule.dataset("test").labels
            if cfg.memorisation.enabled:  # the train split is shuffled once (split_seed): its head is a random subset
                train = datamodule.real_images("train")[: cfg.memorisation.train_subset]
        return cls(
            real,
            spec,
            cfg,
            cache_dir=cache_dir,
            dataset=dataset,
            split=split or "custom",
            train_images=train,
            test_images=test,
            test_labels=test_labels,
            real_labels=real_labels,
            num_classes=num_classes,
        )

    @property
    def real_key(self) -> str:
        if self._key is None:
            self._key = real_cache_key(self.real, self.spec, self.dataset, self.split)
        return self._key

    @property
    def train_key(self) -> str | None:
        if self._train_key is None and self.train is not None:
            self._train_key = real_cache_key(self.train, self.spec, self.dataset, "train")
        return self._train_key

    def extract(self, images: torch.Tensor, labelled: bool = False) -> dict[str, torch.Tensor]:
        """The features :meth:`evaluate` reads of generated ``images`` (uint8; ``labelled``: a
        conditional model's samples, which add the classifier's layer), one row per image -- what
        each DDP rank computes of its share. No images: empty N=0 rows of the right width."""
        layers = generated_layers(self.spec, self.cfg, memorise=self.train is not None, labels=labelled)
        extract = FeatureExtraction(self.spec, layers, self.cfg)
        if len(images) == 0:  # a rank without a share still takes part in the gather
            return {name: rows[:0] for name, rows in extract(torch.zeros_like(self.real[:1])).items()}
        return extract(check_images(images, "generated"))

    def evaluate(
        self,
        generated: torch.Tensor,
        pairs_path: str | Path | None = None,
        labels: torch.Tensor | None = None,
        num_classes: int | None = None,
        features: Mapping[str, torch.Tensor] | None = None,
    ) -> dict[str, Any]:
        """Every metric of ``generated``; ``pairs_path``: where the memorisation check's PNG of the
        closest generated/training pairs goes (None: no picture). ``labels``: the classes a
        conditional model's samples were asked for (out of ``num_classes``, default the data's),
        which adds the class accuracy and the intra-class FID (:mod:`genbench.metrics.conditional`).
        ``features``: ``generated``'s features as :meth:`extract` gives them (e.g. gathered from
        the DDP ranks); None: extracted here."""
        start = time.perf_counter()
        cached = self.cfg.cache and self.cache_dir is not None
        key = self.real_key if cached else None
        train_key = self.train_key if cached else None
        metrics = compute_metrics(
            generated,
            self.real,
            self.spec,
            self.cfg,
            self.cache_dir,
            key,
            train=self.train,
            train_key=train_key,
            pairs_path=pairs_path,
            labels=labels,
            real_labels=self.real_labels,
            num_classes=num_classes or self.num_classes,
            features=features,
        )
        return {
            **metrics,
            "num_samples": len(generated),
            "num_real": len(self.real),
            "real": f"{self.dataset}:{self.split}",
            **self.spec.describe(),
            **({"memorisation_train_images": len(self.train)} if self.train is not None else {}),
            "eval_seconds": round(time.perf_counter() - start, 3),
        }

    def likelihood(
        self, model: Any, generator: torch.Generator | None = None, distributed: bool = False
    ) -> dict[str, Any]:
        """Test-set bits/dim of ``model`` (:func:`genbench.metrics.likelihood.evaluate_likelihood`
        on the test split; an implicit model's answer says it has none). Empty when switched off
        (``metrics.likelihood.enabled=false``) or when there is no test split. ``distributed``:
        every rank of the process group calls this, computes a share of the test images' bounds
        and gets the same answer."""
        settings = self.cfg.likelihood
        lcfg = settings.config()
        if not getattr(lcfg, "enabled", True):
            return {}
        if self.test_images is None:
            log.info("Likelihood skipped: no test split (evaluating against images without a dataset).")
            return {}
        from genbench.metrics.likelihood import evaluate_likelihood

        start = time.perf_counter()
        out = dict(evaluate_likelihood(model, self.test_images, lcfg, generator, self.test_labels, distributed))
        out["likelihood_seconds"] = round(time.perf_counter() - start, 2)
        return out
