"""Everything a report holds, written from run records: leaderboard (md/csv/json), plots, sample
grids side by side with real images, report.html, and optionally the same in W&B."""

from __future__ import annotations

import logging
import platform
import subprocess
from pathlib import Path
from typing import Any

import torch

from genbench import __version__
from genbench.report.collect import RunResult
from genbench.report.figures import side_by_side
from genbench.report.html import write_html
from genbench.report.leaderboard import build_leaderboard, write_leaderboard
from genbench.report.plots import metrics_during_training, quality_vs_cost, quality_vs_steps

log = logging.getLogger("genbench.report")


def environment() -> dict[str, Any]:
    # The commit of genbench's own source checkout (an editable install). An installed package has
    # none: its files are not tracked by any repository (not even one its venv happens to sit in),
    # so git_commit and git_dirty are None there.
    package_dir = Path(__file__).resolve().parents[1]

    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", *args], cwd=package_dir, capture_output=True, text=True, timeout=5)

    commit, dirty = None, None
    try:
        if git("ls-files", "--error-unmatch", "__init__.py").returncode == 0:
            commit = git("rev-parse", "HEAD").stdout.strip() or None
            dirty = bool(git("status", "--porcelain").stdout.strip())
    except (OSError, subprocess.SubprocessError):
        commit, dirty = None, None
    return {
        "genbench": __version__,
        "git_commit": commit,
        "git_dirty": dirty,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "device": torch.cuda.get_device_name(0)
        if torch.cuda.is_available()
        else f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)",
        "platform": platform.platform(),
    }


def write_report(
    runs: list[RunResult],
    out_dir: Path,
    title: str = "genbench report",
    floor: dict[str, Any] | None = None,
    real_grid: Path | None = None,
    context: dict[str, Any] | None = None,
    wandb_run: Any = None,
) -> dict[str, Any]:
    out_dir.mkdir(parents=True, exist_ok=True)
    context = {"environment": environment(), **(context or {})}
    rows = build_leaderboard(runs, floor)
    paths = write_leaderboard(rows, out_dir)
    figures: dict[str, Path | None] = {
        "Metrics against training time": metrics_during_training(runs, out_dir / "metrics_vs_time.png"),
        "Metrics against images seen": metrics_during_training(
            runs, out_dir / "metrics_vs_images.png", "images_seen", "training images seen"
        ),
        "Quality against sampling steps": quality_vs_steps(runs, out_dir / "quality_vs_steps.png"),
        "Quality against sampling cost": quality_vs_cost(runs, out_dir / "quality_vs_cost.png"),
    }
    grids = {"real": real_grid} if real_grid else {}
    for run in runs:
        if run.grid is not None and run.status == "ok":
            grids.setdefault(run.family, run.grid)  # the first seed of each family
    figures["Samples side by side"] = side_by_side(grids, out_dir / "samples_side_by_side.png") if grids else None
    html_path = write_html(out_dir / "report.html", title, rows, figures, context)
    if wandb_run is not None:
        log_to_wandb(wandb_run, rows, figures)
    log.info("Report written to %s", html_path)
    return {"rows": rows, "paths": {**paths, "html": html_path}, "figures": figures}


def log_to_wandb(run: Any, rows: list[dict[str, Any]], figures: dict[str, Path | None]) -> None:
    import wandb

    columns = sorted({k for r in rows for k, v in r.items() if not isinstance(v, dict | list)})
    table = wandb.Table(columns=columns, data=[[r.get(c) for c in columns] for r in rows])
    run.log({"leaderboard": table, **{name: wandb.Image(str(p)) for name, p in figures.items() if p}})
