"""The report's plots (matplotlib, Agg backend: no display needed).

Every axis goes through :func:`tidy_axis`: matplotlib's default formatter turns a nearly constant
series (an IS of 1.0000004 on every point) into tick labels like "1e-5+1", an offset and a
scale the reader has to decode. Ticks here are plain numbers, and a range too narrow to show
anything but noise is widened around its value."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FuncFormatter, NullFormatter, ScalarFormatter  # noqa: E402

from genbench.registry import family_colour  # noqa: E402
from genbench.report.collect import RunResult  # noqa: E402
from genbench.report.leaderboard import METRICS  # noqa: E402


class PlainFormatter(ScalarFormatter):
    """Tick labels as plain numbers: no offset ("1e-5+1"), no scientific notation, thousands
    separated from 10,000 up (a KID of 10,000,000 reads as such)."""

    def __init__(self) -> None:
        super().__init__(useOffset=False)
        self.set_scientific(False)

    def __call__(self, x: float, pos: int | None = None) -> str:
        return f"{x:,.0f}" if abs(x) >= 1e4 else super().__call__(x, pos)


def compact_count(x: float, pos: int | None = None) -> str:
    """A count as a short tick label (60k, 1.2M): long counts under each tick run into each other."""
    for size, suffix in ((1e6, "M"), (1e3, "k")):
        if abs(x) >= size:
            return f"{x / size:.3g}{suffix}"
    return f"{x:.0f}"


def _log_label(x: float, pos: int | None = None) -> str:
    return f"{x:,.0f}" if x >= 1 else f"{x:g}"


def tidy_axis(ax, values: list[float] | None = None, min_span: float = 1e-3) -> None:
    """Plain tick labels on both axes of ``ax`` (:class:`PlainFormatter`; log axes as "2", "50",
    "1,000" instead of "2x10^0"); where the y ``values`` span less than ``min_span`` of their
    magnitude, the y range is widened to +-1 % of it (at least +-0.01) so a constant series reads
    as the constant it is."""
    for axis, scale in ((ax.xaxis, ax.get_xscale()), (ax.yaxis, ax.get_yscale())):
        if scale == "linear":
            axis.set_major_formatter(PlainFormatter())
        elif scale == "log":
            low, high = axis.get_view_interval()
            axis.set_major_formatter(FuncFormatter(_log_label))
            # within one decade matplotlib labels only minor ticks, as "3x10^0": label them plainly
            axis.set_minor_formatter(FuncFormatter(_log_label) if low > 0 and high / low < 10 else NullFormatter())
    finite = [float(v) for v in values or [] if v is not None and v == v and abs(v) != float("inf")]
    if finite:
        lo, hi = min(finite), max(finite)
        scale = max(abs(lo), abs(hi))
        if hi - lo <= min_span * max(scale, 1e-12):
            half = max(0.01 * scale, 0.01)
            centre = (lo + hi) / 2
            ax.set_ylim(centre - half, centre + half)


def metrics_during_training(
    runs: list[RunResult], path: Path, x_key: str = "train_seconds", x_label: str = "training seconds"
) -> Path | None:
    """Each metric against training time (or images seen), one line per run, coloured by family."""
    runs = [r for r in runs if r.status == "ok" and any(x_key in h for h in r.history)]
    metrics = [m for m in METRICS if any(h.get(m[0]) is not None for r in runs for h in r.history if x_key in h)]
    if not runs or not metrics:
        return None
    ncols = min(3, len(metrics))  # at most three panels a row: readable at the report's width
    nrows = -(-len(metrics) // ncols)
    fig, grid = plt.subplots(nrows, ncols, figsize=(4.4 * ncols, 3.4 * nrows), squeeze=False)
    for ax in grid.flat[len(metrics) :]:
        ax.remove()
    axes = list(grid.flat[: len(metrics)])
    seen = set()
    values: dict[str, list[float]] = {key: [] for key, _, _ in metrics}
    for run in runs:
        points = sorted(((h[x_key], h) for h in run.history if x_key in h), key=lambda p: p[0])
        for ax, (key, title, low) in zip(axes, metrics, strict=True):
            xs = [x for x, h in points if h.get(key) is not None]
            ys = [h[key] for _, h in points if h.get(key) is not None]
            values[key] += ys
            label = run.family if run.family not in seen else None
            ax.plot(xs, ys, marker="o", color=family_colour(run.family), label=label, alpha=0.85)
            ax.set_title(f"{title} ({'lower' if low else 'higher'} is better)")
            ax.set_xlabel(x_label)
        seen.add(run.family)
    for ax, (key, _, _) in zip(axes, metrics, strict=True):
        tidy_axis(ax, values[key])
        if x_key == "images_seen":
            ax.xaxis.set_major_formatter(FuncFormatter(compact_count))
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _sampler_points(runs: list[RunResult]) -> list[tuple[str, str, int, float, dict]]:
    """(family, sampler label, network evaluations per sample, images/s, metrics) of every timed sampler."""
    out = []
    for run in runs:
        if run.status != "ok":
            continue
        for s in run.sampling:
            out.append(
                (
                    run.family,
                    s["sampler"],
                    int(s.get("nfe") or s.get("steps") or 1),  # network evaluations: the cost
                    float(s["images_per_second"]),
                    s.get("metrics") or {},
                )
            )
    return out


def _save_log_x(fig, ax, path: Path, x_label: str, metric: str, title: str) -> Path:
    ax.set_xscale("log")
    ys = [float(y) for line in ax.get_lines() for y in line.get_ydata()]
    ys += [float(xy[1]) for c in ax.collections for xy in c.get_offsets()]  # scatter points
    tidy_axis(ax, ys)
    ax.set_xlabel(x_label)
    ax.set_ylabel(metric.removeprefix("eval/").upper())
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def quality_vs_steps(runs: list[RunResult], path: Path, metric: str = "eval/fid") -> Path | None:
    """Quality of the families that have several samplers (diffusion, flow) against network
    evaluations per sample (NFE: what sampling costs, comparable between a 1-evaluation and a
    2-evaluation step), one curve per family and sampler kind; a star marks each family's
    recommended sampler (the fastest within the sampling noise of its best, ``sampling.json``)."""
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
                color=family_colour(family),
                linestyle="-" if len(pts) > 1 else "none",
                label=f"{family} {kind}",
            )
    for run in runs:
        for s in run.sampling if run.status == "ok" and run.family in families else ():
            if s.get("recommended") and metric in (s.get("metrics") or {}):
                nfe = int(s.get("nfe") or s.get("steps") or 1)
                ax.plot([nfe], [s["metrics"][metric]], marker="*", markersize=14, color=family_colour(run.family),
                        linestyle="none")  # fmt: skip
    return _save_log_x(
        fig, ax, path, "network evaluations per sample (NFE)", metric, "Quality against sampling cost (NFE)"
    )


def quality_vs_cost(runs: list[RunResult], path: Path, metric: str = "eval/fid") -> Path | None:
    """Quality against sampling throughput for every family and sampler (up-right is better for
    IS, down-right for FID)."""
    points = [p for p in _sampler_points(runs) if metric in p[4]]
    if not points:
        return None
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    seen = set()
    for family, sampler, _, ips, m in points:
        ax.scatter(ips, m[metric], color=family_colour(family), label=family if family not in seen else None, s=40)
        ax.annotate(sampler, (ips, m[metric]), fontsize=7, xytext=(3, 3), textcoords="offset points")
        seen.add(family)
    return _save_log_x(fig, ax, path, "sampling images / s (log)", metric, "Quality against sampling cost")


def guidance_curves(runs: list[RunResult], path: Path) -> Path | None:
    """A guided family's final guidance sweep: FID (and intra-class FID, dashed), class accuracy, and
    precision (solid) / recall (dashed) against the guidance scale w, one colour per family (mean
    over seeds). None when no run swept guidance."""
    from genbench.report.verdict import guidance_means

    sweeps = guidance_means(runs)
    if not sweeps:
        return None
    panels = (
        ("FID against w (dashed: intra-class FID; lower is better)", (("fid", "-"), ("intra_fid", "--"))),
        ("class accuracy against w (higher is better)", (("cond_accuracy", "-"),)),
        ("precision (solid) and recall (dashed) against w", (("precision", "-"), ("recall", "--"))),
    )
    fig, axes = plt.subplots(1, 3, figsize=(13.2, 3.6))
    for ax, (title, keys) in zip(axes, panels, strict=True):
        values = []
        for family, by_w in sweeps.items():
            for key, style in keys:
                pts = [(w, m[key]) for w, m in by_w.items() if key in m]
                if pts:
                    label = family if style == "-" or len(keys) == 1 else None
                    ax.plot(
                        *zip(*pts, strict=True), marker="o", linestyle=style, color=family_colour(family), label=label
                    )
                    values += [v for _, v in pts]
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("guidance scale w")
        tidy_axis(ax, values)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
