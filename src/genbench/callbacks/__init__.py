"""Every Lightning callback genbench has, and the one place that links those that cooperate.

Links run one way and are set explicitly by :func:`link_callbacks` (``genbench.train`` calls it
after instantiating the ``callbacks`` group): the evaluation callback reads the budget (when to
evaluate, how far training has come), the sampling benchmark uses the evaluation callback's
protocol, and the NaN guard names the step of the last.ckpt that ResumeCheckpoint kept. No callback looks for another by duck typing.
"""

from __future__ import annotations

import pytorch_lightning as pl

from genbench.callbacks.budget import TrainingBudget
from genbench.callbacks.ddp_sync import DDPSyncCheck
from genbench.callbacks.evaluation import EvaluationCallback
from genbench.callbacks.finite_guard import FiniteLossGuard
from genbench.callbacks.resume import ResumeCheckpoint
from genbench.callbacks.sample_grid import SampleGrid
from genbench.callbacks.sampling_benchmark import SamplingBenchmark
from genbench.errors import GenbenchError


def _only(callbacks: list[pl.Callback], kind: type) -> pl.Callback | None:
    found = [cb for cb in callbacks if isinstance(cb, kind)]
    if len(found) > 1:
        raise GenbenchError(f"The callbacks config has {len(found)} {kind.__name__} callbacks; keep one.")
    return found[0] if found else None


def link_callbacks(callbacks: list[pl.Callback]) -> list[pl.Callback]:
    """Connect the callbacks that cooperate and return them in the order they must run: the
    budget counts a batch before the evaluation callback asks it whether an evaluation is due."""
    budget = _only(callbacks, TrainingBudget)
    evaluation = _only(callbacks, EvaluationCallback)
    sampling = _only(callbacks, SamplingBenchmark)
    guard = _only(callbacks, FiniteLossGuard)
    if guard is not None:
        guard.resume = _only(callbacks, ResumeCheckpoint)
    if evaluation is not None:
        evaluation.budget = budget
    if sampling is not None:
        sampling.evaluation = evaluation
    if budget is None:
        return list(callbacks)
    return [budget, *(cb for cb in callbacks if cb is not budget)]


__all__ = [
    "DDPSyncCheck",
    "EvaluationCallback",
    "FiniteLossGuard",
    "ResumeCheckpoint",
    "SampleGrid",
    "SamplingBenchmark",
    "TrainingBudget",
    "link_callbacks",
]
