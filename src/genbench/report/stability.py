"""How much a family's result depends on its seed: the per-seed training curves in one figure.

The leaderboard gives the numbers (mean ± std, the 95% interval and the spread over seeds, see
:mod:`genbench.report.leaderboard`); this module shows *why* they spread. An adversarially
trained model that diverges or oscillates on one seed shows it in its loss curves long before its
final FID does, so the figure puts each seed's training losses (from the CSV logger's
``csv/metrics.csv``) next to its FID at each evaluation point (``eval/metrics.jsonl``), one line
per seed, one row of panels per family.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FuncFormatter  # noqa: E402

from genbench.registry import family_sort_key  # noqa: E402
from genbench.report.collect import RunResult  # noqa: E402
from genbench.report.plots import compact_count  # noqa: E402

#: Where Lightning's CSVLogger (conf/logger/csv.yaml: name csv, version "") writes in a run.
CSV_METRICS = "csv/metrics.csv"


def loss_curves(run: RunResult, path: str = CSV_METRICS) -> dict[str, list[tuple[int, float]]]:
    """The run's per-step training losses (``train/*loss*`` columns of ``csv/metrics.csv``) as
    ``{name: [(step, value), ...]}``; empty when the run had no CSV logger."""
    file = Path(run.run_dir) / path
    if not file.is_file():
        return {}
    curves: dict[str, list[tuple[int, float]]] = {}
    with open(file, newline="") as f:
        for row in csv.DictReader(f):
            step = row.get("step")
            if step in (None, ""):
                continue
            for key, value in row.items():
                if not key or not key.startswith("train/") or "loss" not in key or value in (None, ""):
                    continue
                try:
                    v = float(value)
                except ValueError:
                    continue
                if math.isfinite(v):
                    curves.setdefault(key.removeprefix("train/"), []).append((int(float(step)), v))
    return curves


def fid_curve(run: RunResult, x_key: str = "images_seen") -> list[tuple[float, float]]:
    """(images seen, FID) at each evaluation point of the run during training (records without
    ``x_key``, e.g. a later ``genbench-eval`` of a checkpoint, have no place on this axis)."""
    return [(float(h[x_key]), float(h["fid"])) for h in run.fid_history(x_key)]


def per_seed_curves(runs: list[RunResult], path: Path, families: list[str] | None = None) -> Path | None:
    """One figure, one row per family (in display order; ``families`` to choose), with the training
    losses and the FID against images seen, one line per seed. Returns ``path``, or None when no
    successful run has a loss or FID curve (nothing to plot)."""
    runs = [r for r in runs if r.status == "ok"]
    chosen = families or sorted({r.family for r in runs}, key=family_sort_key)
    panels = []
    for family in chosen:
        group = sorted((r for r in runs if r.family == family), key=lambda r: (r.seed is None, r.seed))
        losses = {id(r): loss_curves(r) for r in group}
        fids = {id(r): fid_curve(r) for r in group}
        if any(losses.values()) or any(fids.values()):
            panels.append((family, group, losses, fids))
    if not panels:
        return None
    fig, axes = plt.subplots(len(panels), 2, figsize=(10, 3.2 * len(panels)), squeeze=False)
    cmap = plt.get_cmap("tab10")
    for (family, group, losses, fids), (ax_loss, ax_fid) in zip(panels, axes, strict=True):
        for i, run in enumerate(group):
            colour = cmap(i % 10)
            for j, (name, pts) in enumerate(sorted(losses[id(run)].items())):
                ax_loss.plot(
                    [p[0] for p in pts],
                    [p[1] for p in pts],
                    color=colour,
                    linestyle=["-", "--", ":", "-."][j % 4],
                    linewidth=1,
                    alpha=0.85,
                    label=f"seed {run.seed} {name}",
                )
            pts = fids[id(run)]
            if pts:
                ax_fid.plot(
                    [p[0] for p in pts], [p[1] for p in pts], marker="o", color=colour, label=f"seed {run.seed}"
                )
        ax_loss.set_title(f"{family}: training losses per seed")
        ax_loss.set_xlabel("training step")
        ax_fid.set_title(f"{family}: FID per seed (lower is better)")
        ax_fid.set_xlabel("training images seen")
        ax_fid.xaxis.set_major_formatter(FuncFormatter(compact_count))
        for ax in (ax_loss, ax_fid):
            if ax.has_data():
                ax.legend(fontsize=7)
            else:
                ax.text(0.5, 0.5, "no data in the runs", ha="center", va="center", transform=ax.transAxes)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
