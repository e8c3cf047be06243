"""The evaluation record: one result dict per evaluation, written by the training callback
(``eval/metrics.jsonl``, ``eval/final.json``) and by ``genbench-eval``
(``checkpoints/metrics.json``), read back by ``genbench.report.collect``. Besides the metrics (the
catalogue's names), every record carries the same provenance fields, stamped here, so a reader need
not know which tool wrote it: ``source`` (:data:`CALLBACK` or :data:`CLI`), ``family``, ``epoch``,
``step`` and ``global_step`` (the optimiser steps of the evaluated weights), ``evaluated_at``, and,
where known, ``seed`` (the sampling seed) and ``sampler`` (what drew the samples).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

#: ``source`` of a record written by the training callback
CALLBACK = "callback"
#: ``source`` of a record written by genbench-eval
CLI = "genbench-eval"


@dataclass(frozen=True)
class EvalRecord:
    """The provenance of one evaluation; :meth:`stamp` adds it to a result dict."""

    source: str
    family: str | None = None
    epoch: int | None = None
    step: int | None = None
    seed: int | None = None
    sampler: dict[str, Any] | None = None

    def stamp(self, result: dict[str, Any], **extra: Any) -> dict[str, Any]:
        """``result`` with the provenance fields (and ``extra``) set; returns the same dict."""
        result.update(source=self.source, family=self.family, epoch=self.epoch, step=self.step)
        result.update(global_step=self.step, seed=self.seed, sampler=self.sampler)
        result.update(extra)
        result["evaluated_at"] = time.strftime("%Y-%m-%dT%H:%M:%S")
        return result


def record_step(record: dict[str, Any]) -> int:
    """The optimiser step a record evaluated (older genbench-eval records hold only ``global_step``)."""
    step = record.get("step", record.get("global_step"))
    return int(step) if isinstance(step, int | float) else -1


__all__ = ["CALLBACK", "CLI", "EvalRecord", "record_step"]
