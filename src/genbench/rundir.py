"""The files of a run directory, named once, and the failure record every writer shares.

Writers (``genbench.train``, the callbacks, ``genbench-benchmark``) and the reader
(``genbench.report.collect``) use these names, so a run looks the same to the report whether it
was part of a benchmark or not.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from genbench.io import atomic_write_json

CONFIG = "config_resolved.yaml"  # the fully resolved config of the run
METRICS = "metrics.json"  # final training metrics (family, steps, parameters, callback metrics)
FAILED = "failed.json"  # written instead of metrics.json when a fail_soft job fails
BUDGET = "budget.json"  # TrainingBudget: what was spent
SAMPLING = "sampling.json"  # SamplingBenchmark: sampling speed (and quality) per sampler
EVAL_HISTORY = "eval/metrics.jsonl"  # EvaluationCallback: one line per evaluation
EVAL_FINAL = "eval/final.json"  # EvaluationCallback: the final model's evaluation
FINAL_GRID = "samples/final.png"  # SampleGrid: the final model's samples


def write_failure(
    run_dir: Path,
    *,
    family: str | None,
    seed: int | None,
    error: BaseException | str,
    overrides: Sequence[str] = (),
    details: str | None = None,
) -> Path:
    """Record why a job failed in ``<run_dir>/failed.json`` (one schema for every writer): the
    family and seed it was, the error and its type, the job's overrides and ``details`` (a
    traceback or the tail of a launcher log)."""
    record: dict[str, Any] = {
        "family": family,
        "seed": seed,
        "type": type(error).__name__ if isinstance(error, BaseException) else "LaunchError",
        "error": str(error),
        "overrides": list(overrides),
        "details": details,
    }
    path = Path(run_dir) / FAILED
    atomic_write_json(path, record)
    return path
