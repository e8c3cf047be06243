"""The ``metrics`` config group as a dataclass: one field per key, unknown keys refused."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig, OmegaConf

from genbench.errors import GenbenchError


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
        if isinstance(mapping, DictConfig):
            mapping = OmegaConf.to_container(mapping, resolve=True)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(mapping) - known)
        if unknown:
            raise GenbenchError(f"Unknown metrics setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}.")
        return cls(**dict(mapping))

    def replace(self, **changes: Any) -> MetricsConfig:
        """A copy with ``changes``: settings objects are shared, so nobody mutates one in place."""
        return dataclasses.replace(self, **changes)

    def enabled(self) -> list[str]:
        return [m for m in ("fid", "kid", "isc", "prc") if getattr(self, m)]
