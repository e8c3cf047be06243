"""Evaluation as torch-fidelity does it, with extraction and caching around pure metrics.

* :mod:`~genbench.metrics.settings` -- the ``metrics`` config group (:class:`MetricsConfig`);
* :mod:`~genbench.metrics.spec`, :mod:`~genbench.metrics.extractors` -- which feature extractor;
  :mod:`~genbench.metrics.in_domain` (+ ``_training``) and :mod:`~genbench.metrics.inception` the two kinds;
* :mod:`~genbench.metrics.images` -- images checked and converted for torch-fidelity;
* :mod:`~genbench.metrics.fidelity` -- the one torch-fidelity call, :mod:`~genbench.metrics.real_cache`
  its verified cache of the real side;
* :mod:`~genbench.metrics.evaluator` -- :class:`Evaluator`, what every evaluation path uses, and
  :data:`SCALAR_RESULTS`, the one list of scalar result names (logged as ``eval/<name>``), and
  :data:`NOISE_METRIC`, the one the sampling noise is judged on;
* :mod:`~genbench.metrics.coverage` (class histogram vs the real one) and
  :mod:`~genbench.metrics.memorisation` (nearest training images) -- pure functions;
* :mod:`~genbench.metrics.likelihood` -- bits/dim of the families that have a likelihood (its
  maths, which the models use too, is in :mod:`genbench.distributions`).

The formulas written independently of torch-fidelity, which the tests check it against, are in
``tests/reference_metrics.py``.

The Lightning callback that evaluates during training is :class:`genbench.callbacks.EvaluationCallback`.
"""

from genbench.metrics.catalogue import NOISE_METRIC, scalar_results
from genbench.metrics.evaluator import SCALAR_RESULTS, Evaluator
from genbench.metrics.extractors import EXTRACTOR_CHOICES, resolve_extractor
from genbench.metrics.fidelity import RESULT_NAMES, compute_metrics
from genbench.metrics.images import UInt8ImageDataset, check_images, sample_uint8
from genbench.metrics.in_domain import InDomainExtractor, in_domain_spec
from genbench.metrics.in_domain_training import ensure_in_domain_extractor, train_in_domain_extractor
from genbench.metrics.inception import inception_spec
from genbench.metrics.real_cache import real_cache_key
from genbench.metrics.settings import MetricsConfig
from genbench.metrics.spec import IN_DOMAIN, INCEPTION, ExtractorSpec

__all__ = [
    "EXTRACTOR_CHOICES",
    "INCEPTION",
    "IN_DOMAIN",
    "NOISE_METRIC",
    "RESULT_NAMES",
    "SCALAR_RESULTS",
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
    "scalar_results",
    "train_in_domain_extractor",
]
