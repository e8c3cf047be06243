"""The report's plots (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from genbench.report.collect import RunResult  # noqa: E402
from genbench.report.leaderboard import METRICS  # noqa: E402

COLOURS = {"gan": "tab:red", "vae": "tab:blue", "ddpm": "tab:green"}


def _colour(family: str) -> str:
    return COLOURS.get(family, "tab:gray")


def metrics_during_training(
    runs: list[RunResult], path: Path, x_key: str = "train_seconds", x_label: str = "training seconds"
) -> Path | None:
    """Each metric against training time (or images seen), one line per run, coloured by family."""
    runs = [r for r in runs if r.status == "ok" and any(x_key in h for h in r.history)]
    if not runs:
        return None
    fig, axes = plt.subplots(1, len(METRICS), figsize=(4 * len(METRICS), 3.4))
    seen = set()
    for run in runs:
        points = sorted((h[x_key], h) for h in run.history if x_key in h)
        for ax, (key, title, low) in zip(axes, METRICS, strict=True):
            xs = [x for x, h in points if h.get(key) is not None]
            ys = [h[key] for _, h in points if h.get(key) is not None]
            label = run.family if run.family not in seen else None
            ax.plot(xs, ys, marker="o", color=_colour(run.family), label=label, alpha=0.85)
            ax.set_title(f"{title} ({'lower' if low else 'higher'} is better)")
            ax.set_xlabel(x_label)
        seen.add(run.family)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _sampler_points(runs: list[RunResult]) -> list[tuple[str, str, int, float, dict]]:
    out = []
    for run in runs:
        if run.status != "ok":
            continue
        for s in run.sampling:
            out.append(
                (
                    run.family,
                    s["sampler"],
                    int(s.get("steps") or 1),
                    float(s["images_per_second"]),
                    s.get("metrics") or {},
                )
            )
    return out


def _save_log_x(fig, ax, path: Path, x_label: str, metric: str, title: str) -> Path:
    ax.set_xscale("log")
    ax.set_xlabel(x_label)
    ax.set_ylabel(metric.removeprefix("eval/").upper())
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def quality_vs_steps(runs: list[RunResult], path: Path, metric: str = "eval/fid") -> Path | None:
    """Quality of the families that have several samplers (the DDPM) against sampling steps."""
    points = [p for p in _sampler_points(runs) if metric in p[4]]
    families = {p[0] for p in points if sum(q[0] == p[0] for q in points) > 1}
    if not families:
        return None
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for family in sorted(families):
        by_kind: dict[str, list[tuple[int, float]]] = {}
        for fam, sampler, steps, _, m in points:
            if fam == family:
                by_kind.setdefault(sampler.split("-")[0], []).append((steps, m[metric]))
        for kind, pts in by_kind.items():
            pts.sort()
            ax.plot(
                [p[0] for p in pts],
                [p[1] for p in pts],
                marker="o",
                color=_colour(family),
                linestyle="-" if kind == "ddim" else "none",
                label=f"{family} {kind}",
            )
    return _save_log_x(fig, ax, path, "sampling steps", metric, "Quality against sampling steps")


def quality_vs_cost(runs: list[RunResult], path: Path, metric: str = "eval/fid") -> Path | None:
    """Quality against sampling throughput for every family and sampler (up-right is better for
    IS, down-right for FID)."""
    points = [p for p in _sampler_points(runs) if metric in p[4]]
    if not points:
        return None
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    seen = set()
    for family, sampler, _, ips, m in points:
        ax.scatter(ips, m[metric], color=_colour(family), label=family if family not in seen else None, s=40)
        ax.annotate(sampler, (ips, m[metric]), fontsize=7, xytext=(3, 3), textcoords="offset points")
        seen.add(family)
    return _save_log_x(fig, ax, path, "sampling images / s (log)", metric, "Quality against sampling cost")
