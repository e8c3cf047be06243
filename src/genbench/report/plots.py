"""The report's plots (matplotlib, Agg backend: no display needed).

Every axis goes through :func:`tidy_axis`: matplotlib's default formatter turns a nearly constant
series (an IS of 1.0000004 on every point) into tick labels like "1e-5+1", an offset and a
scale the reader has to decode. Ticks here are plain numbers, and a range too narrow to show
anything but noise is widened around its value.

The plots name their lines as the leaderboard names its rows (:func:`row_styles`): a sweep's
configurations of one family share the family's colour and differ in line style and marker, each
with its own legend entry; a benchmark of one configuration per family draws solid lines in the
family colours, one legend entry per family."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import FuncFormatter, NullFormatter, ScalarFormatter  # noqa: E402

from genbench.registry import family_colour  # noqa: E402
from genbench.report.collect import RunResult  # noqa: E402
from genbench.report.leaderboard import METRICS, RunGroup  # noqa: E402

#: a family's n-th configuration (leaderboard row order) is drawn with the n-th line style and
#: marker; the first is solid with round markers, so a family of one configuration looks as it
#: always did
LINESTYLES = ("-", "--", ":", "-.")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


@dataclass(frozen=True)
class RowStyle:
    """How one leaderboard row's runs are drawn: the family's colour, the configuration's line
    style and marker."""

    colour: str
    linestyle: str = "-"
    marker: str = "o"


Styles = Mapping[str, RowStyle]


def row_styles(groups: Sequence[RunGroup]) -> dict[str, RowStyle]:
    """{row label: style} for the leaderboard's rows (:func:`~genbench.report.leaderboard.group_runs`),
    the keys the runs of :func:`~genbench.report.leaderboard.named_runs` carry as ``family``. Every
    configuration of a family keeps the family's colour, so families stay recognisable, and the
    configurations are told apart by line style and marker, in the rows' order."""
    styles: dict[str, RowStyle] = {}
    count: dict[str, int] = {}
    for group in groups:
        i = count[group.family] = count.get(group.family, -1) + 1
        styles[group.label] = RowStyle(
            family_colour(group.family), LINESTYLES[i % len(LINESTYLES)], MARKERS[i % len(MARKERS)]
        )
    return styles


def style_of(name: str, styles: Styles | None) -> RowStyle:
    """The style of the runs named ``name``; a name ``styles`` does not know is a family of its own
    (its colour, solid line, round markers: how every plot drew a family before rows had styles)."""
    found = (styles or {}).get(name)
    return found if found is not None else RowStyle(family_colour(name))


def _figure(fig: Figure | None, size: tuple[float, float]) -> tuple[Figure, bool]:
    """``fig`` resized to ``size`` (a caller's figure, to inspect it after saving), or a new one;
    and whether it is ours to close."""
    if fig is None:
        return plt.figure(figsize=size), True
    fig.set_size_inches(*size)
    return fig, False


def _save(fig: Figure, path: Path, owned: bool) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    if owned:
        plt.close(fig)
    return path


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
    runs: list[RunResult],
    path: Path,
    x_key: str = "train_seconds",
    x_label: str = "training seconds",
    styles: Styles | None = None,
    fig: Figure | None = None,
) -> Path | None:
    """Each metric against training time (or images seen), one line per run, styled by its row
    (``runs`` named by their leaderboard row, ``styles`` from :func:`row_styles`; one legend entry
    per row). ``fig``: draw into this figure and leave it open (else a new one, closed once saved)."""
    runs = [r for r in runs if r.status == "ok" and any(x_key in h for h in r.history)]
    metrics = [m for m in METRICS if any(h.get(m[0]) is not None for r in runs for h in r.history if x_key in h)]
    if not runs or not metrics:
        return None
    ncols = min(3, len(metrics))  # at most three panels a row: readable at the report's width
    nrows = -(-len(metrics) // ncols)
    fig, owned = _figure(fig, (4.4 * ncols, 3.4 * nrows))
    grid = fig.subplots(nrows, ncols, squeeze=False)
    for ax in grid.flat[len(metrics) :]:
        ax.remove()
    axes = list(grid.flat[: len(metrics)])
    seen = set()
    values: dict[str, list[float]] = {key: [] for key, _, _ in metrics}
    for run in runs:
        points = sorted(((h[x_key], h) for h in run.history if x_key in h), key=lambda p: p[0])
        style = style_of(run.family, styles)
        for ax, (key, title, low) in zip(axes, metrics, strict=True):
            xs = [x for x, h in points if h.get(key) is not None]
            ys = [h[key] for _, h in points if h.get(key) is not None]
            values[key] += ys
            label = run.family if run.family not in seen else None
            ax.plot(xs, ys, marker=style.marker, linestyle=style.linestyle, color=style.colour, label=label, alpha=0.85)
            ax.set_title(f"{title} ({'lower' if low else 'higher'} is better)")
            ax.set_xlabel(x_label)
        seen.add(run.family)
    for ax, (key, _, _) in zip(axes, metrics, strict=True):
        tidy_axis(ax, values[key])
        if x_key == "images_seen":
            ax.xaxis.set_major_formatter(FuncFormatter(compact_count))
    axes[0].legend()
    return _save(fig, path, owned)


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


def _save_log_x(fig: Figure, ax, path: Path, x_label: str, metric: str, title: str, owned: bool) -> Path:
    ax.set_xscale("log")
    ys = [float(y) for line in ax.get_lines() for y in line.get_ydata()]
    ys += [float(xy[1]) for c in ax.collections for xy in c.get_offsets()]  # scatter points
    tidy_axis(ax, ys)
    ax.set_xlabel(x_label)
    ax.set_ylabel(metric.removeprefix("eval/").upper())
    ax.set_title(title)
    ax.legend()
    return _save(fig, path, owned)


def quality_vs_steps(
    runs: list[RunResult],
    path: Path,
    metric: str = "eval/fid",
    styles: Styles | None = None,
    fig: Figure | None = None,
) -> Path | None:
    """Quality of the families that have several samplers (diffusion, flow) against network
    evaluations per sample (NFE: what sampling costs, comparable between a 1-evaluation and a
    2-evaluation step), one curve per row (family and configuration, ``runs`` named by their
    leaderboard row and drawn in ``styles``) and sampler kind; a star marks each row's
    recommended sampler (the fastest within the sampling noise of its best, ``sampling.json``).
    ``fig`` as in :func:`metrics_during_training`."""
    points = [p for p in _sampler_points(runs) if metric in p[4]]
    families = {p[0] for p in points if sum(q[0] == p[0] for q in points) > 1}
    if not families:
        return None
    fig, owned = _figure(fig, (5.5, 3.8))
    ax = fig.add_subplot()
    for family in sorted(families):
        style = style_of(family, styles)
        by_kind: dict[str, list[tuple[int, float]]] = {}
        for fam, sampler, steps, _, m in points:
            if fam == family:
                by_kind.setdefault(sampler.split("-")[0], []).append((steps, m[metric]))
        for kind, pts in by_kind.items():
            pts.sort()
            ax.plot(
                [p[0] for p in pts],
                [p[1] for p in pts],
                marker=style.marker,
                color=style.colour,
                linestyle=style.linestyle if len(pts) > 1 else "none",
                label=f"{family} {kind}",
            )
    for run in runs:
        for s in run.sampling if run.status == "ok" and run.family in families else ():
            if s.get("recommended") and metric in (s.get("metrics") or {}):
                nfe = int(s.get("nfe") or s.get("steps") or 1)
                ax.plot([nfe], [s["metrics"][metric]], marker="*", markersize=14,
                        color=style_of(run.family, styles).colour, linestyle="none")  # fmt: skip
    return _save_log_x(
        fig, ax, path, "network evaluations per sample (NFE)", metric, "Quality against sampling cost (NFE)", owned
    )


def quality_vs_cost(
    runs: list[RunResult],
    path: Path,
    metric: str = "eval/fid",
    styles: Styles | None = None,
    fig: Figure | None = None,
) -> Path | None:
    """Quality against sampling throughput for every row (family and configuration: ``runs`` named
    by their leaderboard row, each drawn in its colour and marker from ``styles``) and sampler
    (up-right is better for IS, down-right for FID). ``fig`` as in :func:`metrics_during_training`."""
    points = [p for p in _sampler_points(runs) if metric in p[4]]
    if not points:
        return None
    fig, owned = _figure(fig, (5.5, 3.8))
    ax = fig.add_subplot()
    seen = set()
    for family, sampler, _, ips, m in points:
        style = style_of(family, styles)
        label = family if family not in seen else None
        ax.scatter(ips, m[metric], color=style.colour, marker=style.marker, label=label, s=40)
        ax.annotate(sampler, (ips, m[metric]), fontsize=7, xytext=(3, 3), textcoords="offset points")
        seen.add(family)
    return _save_log_x(fig, ax, path, "sampling images / s (log)", metric, "Quality against sampling cost", owned)


def guidance_curves(
    runs: list[RunResult], path: Path, styles: Styles | None = None, fig: Figure | None = None
) -> Path | None:
    """A guided family's final guidance sweep: FID (and intra-class FID, dashed), class accuracy, and
    precision (solid) / recall (dashed) against the guidance scale w, one colour per family and one
    marker per configuration (``runs`` named by their leaderboard row, ``styles`` from
    :func:`row_styles`; the line style keeps its meaning above), mean over seeds. None when no run
    swept guidance. ``fig`` as in :func:`metrics_during_training`."""
    from genbench.report.verdict import guidance_means

    sweeps = guidance_means(runs)
    if not sweeps:
        return None
    panels = (
        ("FID against w (dashed: intra-class FID; lower is better)", (("fid", "-"), ("intra_fid", "--"))),
        ("class accuracy against w (higher is better)", (("cond_accuracy", "-"),)),
        ("precision (solid) and recall (dashed) against w", (("precision", "-"), ("recall", "--"))),
    )
    fig, owned = _figure(fig, (13.2, 3.6))
    axes = fig.subplots(1, 3)
    for ax, (title, keys) in zip(axes, panels, strict=True):
        values = []
        for family, by_w in sweeps.items():
            row = style_of(family, styles)
            for key, style in keys:
                pts = [(w, m[key]) for w, m in by_w.items() if key in m]
                if pts:
                    label = family if style == "-" or len(keys) == 1 else None
                    ax.plot(*zip(*pts, strict=True), marker=row.marker, linestyle=style, color=row.colour, label=label)
                    values += [v for _, v in pts]
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("guidance scale w")
        tidy_axis(ax, values)
    axes[0].legend()
    return _save(fig, path, owned)
