"""Read finished run directories back into plain records. The report needs nothing but files:
runs started together (a benchmark) and runs that were not (``genbench-compare``) look alike.

One results path: a run's evaluations come from the training-time callback
(``eval/metrics.jsonl``, ``eval/final.json``) *and* from ``genbench-eval`` (``checkpoints/metrics.json``,
``{"latest": ..., "history": [...]}``). Both are merged into one history, and the run's final
result is the newest evaluation of its most-trained model, whichever tool computed it; the
record says which (``source``), so the report can tell the reader."""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from genbench import rundir
from genbench.errors import GenbenchError
from genbench.io import read_json
from genbench.metrics.record import CALLBACK, CLI, record_step
from genbench.models import family_of_config
from genbench.rundir import RunLayout


@dataclass
class RunResult:
    run_dir: Path
    family: str
    seed: int | None
    status: str  # ok | failed | incomplete
    error: str | None = None
    train: dict[str, Any] = field(default_factory=dict)  # metrics.json
    budget: dict[str, Any] = field(default_factory=dict)  # budget.json
    final: dict[str, Any] = field(default_factory=dict)  # the newest evaluation of the final model
    history: list[dict[str, Any]] = field(default_factory=list)  # eval/metrics.jsonl + genbench-eval, by step
    sampling: list[dict[str, Any]] = field(default_factory=list)  # sampling.json
    grid: Path | None = None
    config: dict[str, Any] = field(default_factory=dict)
    #: where ``final`` came from: CALLBACK_SOURCE or EVAL_SOURCE (None: never evaluated)
    final_source: str | None = None
    #: the job's command-line overrides (``.hydra/overrides.yaml``, else those ``failed.json``
    #: recorded); None when the run kept no record of them. The leaderboard tells a sweep's points
    #: apart by them.
    overrides: list[str] | None = None

    def describe_source(self) -> str | None:
        """Which tool computed the final result, and the file it is in (for the report)."""
        if self.final_source is None:
            return None
        where = SOURCE_FILES.get(self.final_source)
        return f"{self.final_source} ({where})" if where else self.final_source

    def fid_history(self, x_key: str) -> list[dict[str, Any]]:
        """The evaluations with a finite FID and an ``x_key`` (images_seen, train_seconds...), sorted
        by it: the run's FID curve during training. A later ``genbench-eval`` of a checkpoint has no
        training position, so it has no place on such an axis."""
        points = [
            h
            for h in self.history
            if h.get(x_key) is not None and h.get("fid") is not None and math.isfinite(float(h["fid"]))
        ]
        return sorted(points, key=lambda h: float(h[x_key]))

    @property
    def last_ckpt(self) -> Path:
        """The checkpoint ``genbench-eval`` evaluates: the run's final model."""
        return RunLayout(self.run_dir).last_checkpoint


#: ``source`` of an evaluation record (the writers set it too), and where each one's records live
CALLBACK_SOURCE = CALLBACK
EVAL_SOURCE = CLI
#: where genbench-eval appends its results for a checkpoint of the run
EVAL_RESULTS = rundir.EVAL_RESULTS
SOURCE_FILES = {CALLBACK_SOURCE: rundir.EVAL_FINAL, EVAL_SOURCE: EVAL_RESULTS}


def _jsonl(path: Path) -> list[dict[str, Any]]:
    records = []
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue  # a line cut short by a killed job
            if isinstance(record, dict):
                records.append(record)
    return records


def _timestamp(text: Any) -> float | None:
    """``evaluated_at`` (local time, as genbench-eval writes it) as seconds since the epoch."""
    try:
        return time.mktime(time.strptime(str(text), "%Y-%m-%dT%H:%M:%S"))
    except (TypeError, ValueError, OverflowError):
        return None


_step = record_step


def merge_evaluations(
    callback: list[dict[str, Any]],
    callback_final: dict[str, Any] | None,
    callback_time: float | None,
    cli: list[dict[str, Any]],
) -> tuple[list[dict[str, Any]], dict[str, Any], str | None]:
    """(history, final, final's source) from the callback's records and genbench-eval's.

    Every record gets ``source`` and ``step`` (genbench-eval writes ``global_step``). The final
    result is the newest evaluation of the most-trained model (the highest step): a later
    ``genbench-eval`` of ``last.ckpt`` (more samples, another sampler) supersedes the callback's
    final evaluation, but evaluating an early checkpoint afterwards does not. The callback's
    records carry no time stamp, so ``callback_time`` (the mtime of its files) stands for them.
    """
    history = [{**r, "source": CALLBACK_SOURCE} for r in callback]
    cli_records = [{**r, "source": EVAL_SOURCE, "step": _step(r)} for r in cli if "error" not in r]
    history = sorted(history + cli_records, key=_step)  # stable: at one step the callback comes first
    candidates: list[tuple[int, float, int, dict[str, Any]]] = []
    if callback_final or callback:
        final = {**(callback_final or callback[-1]), "source": CALLBACK_SOURCE}
        candidates.append((_step(final), callback_time or 0.0, 0, final))
    for i, r in enumerate(cli_records):
        # ties (same step, same second) go to genbench-eval: it is run on a finished checkpoint
        candidates.append((_step(r), _timestamp(r.get("evaluated_at")) or 0.0, 1 + i, r))
    if not candidates:
        return history, {}, None
    final = max(candidates, key=lambda c: c[:3])[3]
    return history, final, final["source"]


def read_overrides(run: Path, failed: dict[str, Any] | None) -> list[str] | None:
    """The overrides the job was started with: Hydra's record, else the failure record's (a job
    that failed before Hydra wrote its files); None when neither says (a run written elsewhere)."""
    import yaml

    path = run / rundir.OVERRIDES
    if path.is_file():
        try:
            listed = yaml.safe_load(path.read_text())
        except yaml.YAMLError:
            listed = None
        if isinstance(listed, list):
            return [str(o) for o in listed]
    recorded = (failed or {}).get("overrides")
    return [str(o) for o in recorded] if isinstance(recorded, list) and recorded else None


def load_run(run_dir: str | Path) -> RunResult:
    run = Path(run_dir)
    config = rundir.read_config(run)
    failed = read_json(run / rundir.FAILED)
    train = read_json(run / rundir.METRICS) or {}
    # who wrote the run says which family it is; the config only for runs that never finished
    family = train.get("family") or (failed or {}).get("family") or family_of_config(config.get("model")) or "?"
    seed = config.get("seed", (failed or {}).get("seed"))
    callback = _jsonl(run / rundir.EVAL_HISTORY)
    callback_final = read_json(run / rundir.EVAL_FINAL)
    stamps = [(run / p).stat().st_mtime for p in (rundir.EVAL_FINAL, rundir.EVAL_HISTORY) if (run / p).is_file()]
    cli = read_json(run / EVAL_RESULTS)
    cli_history = cli.get("history", []) if isinstance(cli, dict) else []
    history, final, final_source = merge_evaluations(
        callback,
        callback_final if isinstance(callback_final, dict) else None,
        max(stamps, default=None),
        [r for r in cli_history if isinstance(r, dict)],
    )
    if failed:
        status, error = "failed", f"{failed.get('type', 'Error')}: {failed.get('error', '')}"
    elif train:
        status, error = "ok", None
    else:
        status, error = "incomplete", "no metrics.json: the job did not finish (still running, killed or crashed)"
    grid = run / rundir.FINAL_GRID
    return RunResult(
        run_dir=run,
        family=family,
        seed=seed,
        status=status,
        error=error,
        train=train,
        budget=read_json(run / rundir.BUDGET) or {},
        final=final,
        history=history,
        sampling=read_json(run / rundir.SAMPLING) or [],
        grid=grid if grid.is_file() else None,
        config=config,
        final_source=final_source,
        overrides=read_overrides(run, failed if isinstance(failed, dict) else None),
    )


def is_run_dir(path: Path) -> bool:
    return any((path / name).exists() for name in (rundir.CONFIG, rundir.FAILED, ".hydra"))


def find_runs(paths: list[str | Path]) -> list[RunResult]:
    """Run directories from a list of run directories and/or multirun (sweep) directories."""
    runs: list[RunResult] = []
    for p in map(Path, paths):
        if not p.is_dir():
            raise GenbenchError(f"{p} is not a directory: pass run directories or a multirun directory.")
        if is_run_dir(p) and not (p / "multirun.yaml").exists():
            runs.append(load_run(p))
            continue
        children = _run_dirs_below(p, depth=2)
        if not children:
            raise GenbenchError(f"{p} holds no run directories (none has config_resolved.yaml or failed.json).")
        runs.extend(load_run(c) for c in children)
    return runs


def _run_dirs_below(root: Path, depth: int) -> list[Path]:
    """Run directories under ``root``: its children, or (for a directory of sweeps such as a
    benchmark's ``runs/`` with ``<family>/<job>``) their children, down to ``depth`` levels;
    never inside a run directory. Sweep jobs in numeric order (2 before 10)."""
    found: list[Path] = []
    for child in sorted((c for c in root.iterdir() if c.is_dir()), key=lambda c: (len(c.name), c.name)):
        if is_run_dir(child):
            found.append(child)
        elif depth > 1:
            found += _run_dirs_below(child, depth - 1)
    return found


def failed_runs_line(runs: list[RunResult]) -> str | None:
    """One line naming the runs that did not finish (failed or incomplete), or None when all did:
    what ``genbench-benchmark`` and ``genbench-compare`` print before exiting with status 1."""
    bad = [r for r in runs if r.status != "ok"]
    if not bad:
        return None
    names = ", ".join(f"{r.family}{'' if r.seed is None else f' seed {r.seed}'} ({r.status})" for r in bad)
    return (
        f"{len(bad)} of {len(runs)} run(s) did not finish: {names}. The report shows each one's error; "
        "its failed.json or train.log says more."
    )
