"""Read finished run directories back into plain records. The report needs nothing but files:
runs started together (a benchmark) and runs that were not (``genbench-compare``) look alike."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from genbench import rundir
from genbench.errors import GenbenchError
from genbench.io import read_json
from genbench.models import family_of_config


@dataclass
class RunResult:
    run_dir: Path
    family: str
    seed: int | None
    status: str  # ok | failed | incomplete
    error: str | None = None
    train: dict[str, Any] = field(default_factory=dict)  # metrics.json
    budget: dict[str, Any] = field(default_factory=dict)  # budget.json
    final: dict[str, Any] = field(default_factory=dict)  # eval/final.json (or the last evaluation)
    history: list[dict[str, Any]] = field(default_factory=list)  # eval/metrics.jsonl
    sampling: list[dict[str, Any]] = field(default_factory=list)  # sampling.json
    grid: Path | None = None
    config: dict[str, Any] = field(default_factory=dict)


def load_run(run_dir: str | Path) -> RunResult:
    run = Path(run_dir)
    config = {}
    if (run / rundir.CONFIG).is_file():
        config = yaml.safe_load((run / rundir.CONFIG).read_text()) or {}
    failed = read_json(run / rundir.FAILED)
    train = read_json(run / rundir.METRICS) or {}
    # who wrote the run says which family it is; the config only for runs that never finished
    family = train.get("family") or (failed or {}).get("family") or family_of_config(config.get("model")) or "?"
    seed = config.get("seed", (failed or {}).get("seed"))
    history = []
    if (run / rundir.EVAL_HISTORY).is_file():
        for line in (run / rundir.EVAL_HISTORY).read_text().splitlines():
            try:
                history.append(json.loads(line))
            except ValueError:
                continue
    final = read_json(run / rundir.EVAL_FINAL) or (history[-1] if history else {})
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
        children = sorted((c for c in p.iterdir() if c.is_dir() and is_run_dir(c)), key=lambda c: (len(c.name), c.name))
        if not children:
            raise GenbenchError(f"{p} holds no run directories (none has config_resolved.yaml or failed.json).")
        runs.extend(load_run(c) for c in children)
    return runs
