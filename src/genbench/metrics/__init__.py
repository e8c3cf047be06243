"""Evaluation: feature extractors registered with torch-fidelity, metric computation with a
verified real-statistics cache, pure reference implementations, and the training callback."""

from genbench.metrics.callback import EvaluationCallback
from genbench.metrics.extractors import (
    EXTRACTOR_CHOICES,
    IN_DOMAIN,
    INCEPTION,
    ExtractorSpec,
    InDomainExtractor,
    ensure_in_domain_extractor,
    in_domain_spec,
    inception_spec,
    resolve_extractor,
    train_in_domain_extractor,
)
from genbench.metrics.fidelity import (
    Evaluator,
    MetricsConfig,
    UInt8ImageDataset,
    check_images,
    compute_metrics,
    real_cache_key,
    sample_uint8,
)

__all__ = [
    "EXTRACTOR_CHOICES",
    "INCEPTION",
    "IN_DOMAIN",
    "EvaluationCallback",
    "Evaluator",
    "ExtractorSpec",
    "InDomainExtractor",
    "MetricsConfig",
    "UInt8ImageDataset",
    "check_images",
    "compute_metrics",
    "ensure_in_domain_extractor",
    "in_domain_spec",
    "inception_spec",
    "real_cache_key",
    "resolve_extractor",
    "sample_uint8",
    "train_in_domain_extractor",
]
