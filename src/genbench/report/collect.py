"""Read finished run directories back into plain records. The report needs nothing but files:
runs started together (a benchmark) and runs that were not (``genbench-compare``) look alike."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from genbench import GenbenchError


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

    @property
    def label(self) -> str:
        return f"{self.family} (seed {self.seed})" if self.seed is not None else self.family


def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def load_run(run_dir: str | Path) -> RunResult:
    run = Path(run_dir)
    config = {}
    if (run / "config_resolved.yaml").is_file():
        config = yaml.safe_load((run / "config_resolved.yaml").read_text()) or {}
    failed = _json(run / "failed.json")
    target = str((config.get("model") or {}).get("_target_", ""))
    family = target.rsplit(".", 1)[-1].lower() if target else (failed or {}).get("family", "?")
    seed = config.get("seed", (failed or {}).get("seed"))
    history = []
    if (run / "eval" / "metrics.jsonl").is_file():
        for line in (run / "eval" / "metrics.jsonl").read_text().splitlines():
            try:
                history.append(json.loads(line))
            except ValueError:
                continue
    final = _json(run / "eval" / "final.json") or (history[-1] if history else {})
    train = _json(run / "metrics.json") or {}
    if failed:
        status, error = "failed", f"{failed.get('type', 'Error')}: {failed.get('error', '')}"
    elif train:
        status, error = "ok", None
    else:
        status, error = "incomplete", "no metrics.json: the job did not finish (still running, killed or crashed)"
    grid = run / "samples" / "final.png"
    return RunResult(
        run_dir=run,
        family=family,
        seed=seed,
        status=status,
        error=error,
        train=train,
        budget=_json(run / "budget.json") or {},
        final=final,
        history=history,
        sampling=_json(run / "sampling.json") or [],
        grid=grid if grid.is_file() else None,
        config=config,
    )


def is_run_dir(path: Path) -> bool:
    return any((path / name).exists() for name in ("config_resolved.yaml", "failed.json", ".hydra"))


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
