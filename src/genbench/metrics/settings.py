"""The ``metrics`` config group as a dataclass: one field per key, unknown keys refused."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig, OmegaConf

from genbench.errors import GenbenchError


@dataclass
class CoverageConfig:
    """``metrics.coverage``: class histogram of the generated samples by the in-domain classifier
    (rules in :mod:`genbench.metrics.coverage`)."""

    enabled: bool = True
    #: a class is covered when predicted for at least this fraction of the samples
    min_fraction: float = 0.01
    #: pseudo-counts added to every class of both histograms before the KL
    smoothing: float = 0.5


@dataclass
class MemorisationConfig:
    """``metrics.memorisation``: nearest-training-image distances (see :mod:`genbench.metrics.memorisation`)."""

    enabled: bool = True
    #: training images compared against (the first n of the shuffled train split; its features are cached)
    train_subset: int = 10_000
    #: closest generated/training pairs drawn in the PNG grid (0: no grid)
    grid_pairs: int = 16


#: when the likelihood is computed during training
LIKELIHOOD_WHEN = ("final", "every", "never")


@dataclass
class ConditionalConfig:
    """``metrics.conditional``: the metrics of a class-conditional model (class accuracy,
    intra-class FID: :mod:`genbench.metrics.conditional`) and the guidance sweep of a family
    whose ``sample()`` takes ``guidance=w``."""

    #: class accuracy and intra-class FID of a conditional model's samples
    enabled: bool = True
    #: the guidance scales w of the sweep (guided = (1 + w) * conditional - w * unconditional); [] for none
    guidance_scales: list[float] = field(default_factory=lambda: [0.0, 0.5, 1.0, 2.0, 4.0])
    #: samples per scale (null: metrics.num_samples)
    guidance_samples: int | None = None
    #: final: the final evaluation of training (and every genbench-eval); every: each evaluation; never
    guidance_when: str = "final"

    def __post_init__(self) -> None:
        if self.guidance_when not in LIKELIHOOD_WHEN:
            raise GenbenchError(
                f"metrics.conditional.guidance_when={self.guidance_when} is unknown: use one of {', '.join(LIKELIHOOD_WHEN)}."
            )
        self.guidance_scales = [float(w) for w in self.guidance_scales or []]
        if self.guidance_samples is not None and self.guidance_samples < 2:
            raise GenbenchError(
                f"metrics.conditional.guidance_samples must be >= 2 or null, got {self.guidance_samples}."
            )

    def sweep_due(self, final: bool) -> bool:
        """Whether an evaluation (the final one or not) runs the guidance sweep."""
        return bool(self.guidance_scales) and (
            self.guidance_when == "every" or (self.guidance_when == "final" and final)
        )


@dataclass
class LikelihoodSettings:
    """``metrics.likelihood``: when test-set bits/dim are computed; every other key goes to
    :class:`genbench.distributions.LikelihoodConfig` unchanged."""

    #: final: the final evaluation of training (and every genbench-eval of a checkpoint); every: each evaluation; never
    when: str = "final"
    options: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Any] | None) -> LikelihoodSettings:
        if isinstance(mapping, LikelihoodSettings):
            return mapping
        options = dict(mapping or {})
        when = str(options.pop("when", "final"))
        if when not in LIKELIHOOD_WHEN:
            raise GenbenchError(f"metrics.likelihood.when={when} is unknown: use one of {', '.join(LIKELIHOOD_WHEN)}.")
        from genbench.distributions import LikelihoodConfig

        LikelihoodConfig.from_mapping(options)  # a typo is refused now, not after training
        return cls(when=when, options=options)

    def config(self) -> Any:
        """The :class:`~genbench.distributions.LikelihoodConfig` of these options."""
        from genbench.distributions import LikelihoodConfig

        return LikelihoodConfig.from_mapping(self.options)

    def due(self, final: bool) -> bool:
        return self.when == "every" or (self.when == "final" and final)


def _section(cls: type, mapping: Any, name: str) -> Any:
    """A nested settings dataclass from a mapping, refusing unknown keys with the section's name."""
    if isinstance(mapping, cls):
        return mapping
    mapping = dict(mapping or {})
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(mapping) - known)
    if unknown:
        raise GenbenchError(
            f"Unknown metrics.{name} setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}."
        )
    return cls(**mapping)


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
    coverage: CoverageConfig = field(default_factory=CoverageConfig)
    memorisation: MemorisationConfig = field(default_factory=MemorisationConfig)
    conditional: ConditionalConfig = field(default_factory=ConditionalConfig)
    likelihood: LikelihoodSettings = field(default_factory=LikelihoodSettings)

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Any] | None) -> MetricsConfig:
        if mapping is None:
            return cls()
        if isinstance(mapping, MetricsConfig):
            return mapping
        if isinstance(mapping, DictConfig):
            mapping = OmegaConf.to_container(mapping, resolve=True)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(mapping) - known)
        if unknown:
            raise GenbenchError(f"Unknown metrics setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}.")
        values = dict(mapping)
        values["coverage"] = _section(CoverageConfig, values.get("coverage"), "coverage")
        values["memorisation"] = _section(MemorisationConfig, values.get("memorisation"), "memorisation")
        values["conditional"] = _section(ConditionalConfig, values.get("conditional"), "conditional")
        values["likelihood"] = LikelihoodSettings.from_mapping(values.get("likelihood"))
        if values["memorisation"].train_subset < 1:
            raise GenbenchError(
                f"metrics.memorisation.train_subset must be >= 1, got {values['memorisation'].train_subset} "
                "(to skip memorisation set metrics.memorisation.enabled=false)."
            )
        return cls(**values)

    def replace(self, **changes: Any) -> MetricsConfig:
        """A copy with ``changes``: settings objects are shared, so nobody mutates one in place."""
        return dataclasses.replace(self, **changes)

    def enabled(self) -> list[str]:
        return [m for m in ("fid", "kid", "isc", "prc") if getattr(self, m)]
