"""The verdict: which family wins on which axis, in sentences generated from the numbers.

Axes: quality (FID), conditional quality (intra-class FID, class accuracy and the guidance sweep,
for class-conditional runs), diversity/coverage (recall, classes covered, class KL), likelihood (bits/dim),
sampling cost (images/s of the evaluated sampler), training cost to reach a given FID, stability
(spread of FID over seeds). A family wins an axis *clearly* only when its 95% interval over seeds
does not overlap the runner-up's; otherwise the sentence says "no clear winner" and names the
families whose intervals overlap the leader's. With a single seed there is no interval: the
sentence gives the order and says it comes from one seed and is uncertain. A family without the
measure is named with the reason (an implicit model has no likelihood; a metric not computed says so).

Nothing here is hard-coded prose about the families: change the numbers and the verdict changes.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from genbench.metrics.catalogue import COND_ACCURACY, FID, INTRA_FID
from genbench.metrics.conditional import GUIDANCE
from genbench.report.collect import RunResult
from genbench.report.leaderboard import CONFIDENCE, METRIC_INFO, format_value, summarize

ONE_SEED = "from one seed, so uncertain (run seeds=[0,1,2] for 95% intervals)"


@dataclass
class Entry:
    """One family's value on an axis: the mean over seeds, its 95% interval (None: one seed)."""

    family: str
    value: float
    ci: list[float] | None
    n: int


def _overlap(a: list[float], b: list[float]) -> bool:
    return a[0] <= b[1] and b[0] <= a[1]


def _family_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in rows if r.get("kind", "family") == "family" and r.get("status") != "failed"]


def _entries(rows: list[dict[str, Any]], key: str) -> tuple[list[Entry], list[dict[str, Any]]]:
    have, missing = [], []
    for r in _family_rows(rows):
        v = r.get(key)
        if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v):
            have.append(Entry(r["family"], float(v), r.get(f"{key}_ci"), int(r.get(f"{key}_n") or 1)))
        else:
            missing.append(r)
    return have, missing


def _missing_reason(row: dict[str, Any], key: str) -> str:
    if key.startswith("bpd") and str(row.get("likelihood") or "").startswith("none"):
        return f"{row['family']} has no likelihood ({row['likelihood'].removeprefix('none').strip(' ()')})"
    return f"{row['family']} has no `{key}` in its evaluation results (not computed for it)"


def rank(entries: list[Entry], lower_is_better: bool, fmt: Callable[[float], str], unit: str = "") -> str:
    """The ranking sentence body for ``entries`` (at least one): the order with values, and whether
    the leader is a clear winner (its interval clear of every other), tied (overlapping intervals:
    "no clear winner") or uncertain (a single seed, no interval)."""
    ordered = sorted(entries, key=lambda e: e.value if lower_is_better else -e.value)

    def show(e: Entry) -> str:
        # a zero-width interval (every seed gave the same value) is shown as the value alone
        ci = f" [{fmt(e.ci[0])}, {fmt(e.ci[1])}]" if e.ci and e.ci[0] != e.ci[1] else ""
        return f"{e.family} {fmt(e.value)}{ci}{unit}"

    listing = ", ".join(show(e) for e in ordered)
    if len(ordered) == 1:
        return f"only {show(ordered[0])} has it"
    level = [e for e in ordered if e.value == ordered[0].value]
    if len(level) > 1:  # equal values (e.g. classes covered): nobody leads
        return f"no clear winner: {' and '.join(e.family for e in level)} are level ({listing})"
    if any(e.ci is None for e in ordered[:2]):
        return f"{ordered[0].family} leads ({listing}), {ONE_SEED}"
    best = ordered[0]
    tied = [e for e in ordered[1:] if e.ci is not None and _overlap(best.ci, e.ci)]  # type: ignore[arg-type]
    if tied:
        names = ", ".join([best.family, *(e.family for e in tied)])
        return f"no clear winner between {names}: their {CONFIDENCE:.0%} intervals overlap ({listing})"
    return f"{best.family} wins clearly: its {CONFIDENCE:.0%} interval is clear of the others' ({listing})"


def _metric_sentence(rows: list[dict[str, Any]], key: str, label: str) -> str:
    info = METRIC_INFO[key]
    direction = "lower" if info.lower_is_better else "higher"
    have, missing = _entries(rows, key)
    reasons = "; ".join(_missing_reason(r, key) for r in missing)
    if not have:
        return f"{label}: no ranking: no family has {info.title} ({reasons or 'no families'})."
    body = rank(have, bool(info.lower_is_better), lambda v: format_value(key, v))
    return f"{label} ({info.title}, {direction} is better): {body}" + (f"; {reasons}" if reasons else "") + "."


def _diversity_sentence(rows: list[dict[str, Any]]) -> str:
    parts, absent = [], []
    for key in ("recall", "classes_covered", "class_kl"):
        have, missing = _entries(rows, key)
        if not have:
            absent.append(METRIC_INFO[key].title)
            continue
        info = METRIC_INFO[key]
        body = rank(have, bool(info.lower_is_better), lambda v, k=key: format_value(k, v))
        extra = f" ({'; '.join(_missing_reason(r, key) for r in missing)})" if missing else ""
        parts.append(f"by {info.title} ({'lower' if info.lower_is_better else 'higher'} is better) {body}{extra}")
    if not parts:
        return "Diversity/coverage: no ranking: no family has recall, classes covered or class KL in its evaluation."
    tail = f"; {', '.join(absent)} not computed" if absent else ""
    return "Diversity/coverage: " + "; ".join(parts) + tail + "."


def _sampling_sentence(rows: list[dict[str, Any]]) -> str:
    have, missing = _entries(rows, "sample_images_per_second")
    reasons = "; ".join(f"{r['family']} has no sampling.json (no SamplingBenchmark callback)" for r in missing)
    if not have:
        return f"Sampling cost: no ranking: no family's sampling speed was measured ({reasons or 'no families'})."
    samplers = {r["family"]: r.get("sampler") for r in _family_rows(rows)}
    body = rank(have, False, lambda v: format_value("sample_images_per_second", v), " img/s")
    used = ", ".join(f"{f}: {s}" for f, s in samplers.items() if s and f in {e.family for e in have})
    return (
        f"Sampling cost (images/s of the evaluated sampler, higher is better; {used}): {body}"
        + (f"; {reasons}" if reasons else "")
        + "."
    )


def sampler_quality(runs: list[RunResult], metric: str = "eval/fid") -> dict[str, dict[str, tuple[int, float]]]:
    """{family: {sampler label: (NFE, mean ``metric`` over the family's finished runs)}} from each
    run's ``sampling.json``: every sampler scored, the family's own included."""
    values: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    nfes: dict[tuple[str, str], int] = {}
    for run in runs:
        for s in run.sampling if run.status == "ok" else ():
            value = (s.get("metrics") or {}).get(metric)
            if isinstance(value, int | float) and math.isfinite(value):
                values[run.family][s["sampler"]].append(float(value))
                nfes[run.family, s["sampler"]] = int(s.get("nfe") or s.get("steps") or 1)
    return {
        family: {label: (nfes[family, label], float(np.mean(v))) for label, v in by_label.items()}
        for family, by_label in values.items()
    }


def _nfe_sentence(runs: list[RunResult]) -> str | None:
    """Quality at equal sampling cost: at every NFE that two or more families were scored at, each
    one's best FID there; then each family at its best sampler whatever the cost. None when no two
    families share an NFE (nothing to compare at equal cost)."""
    quality = sampler_quality(runs)
    at: dict[int, list[tuple[float, str, str]]] = defaultdict(list)
    for family, by_label in quality.items():
        best_at: dict[int, tuple[float, str]] = {}
        for label, (nfe, fid) in by_label.items():
            if nfe not in best_at or fid < best_at[nfe][0]:
                best_at[nfe] = (fid, label)
        for nfe, (fid, label) in best_at.items():
            at[nfe].append((fid, family, label))
    shared = {nfe: sorted(v) for nfe, v in sorted(at.items()) if len(v) > 1}
    if not shared:
        return None
    seeds = {run.seed for run in runs if run.status == "ok"}

    def show(fid: float, family: str, label: str, nfe: int | None = None) -> str:
        cost = f", {nfe} NFE" if nfe is not None else ""
        return f"{family} {format_value('fid', fid)} ({label}{cost})"

    parts = [f"at {nfe} NFE " + ", ".join(show(*e) for e in entries) for nfe, entries in shared.items()]
    best = sorted(
        (fid, family, label, nfe)
        for family, by_label in quality.items()
        for label, (nfe, fid) in [min(by_label.items(), key=lambda kv: kv[1][1])]
    )
    uncertain = f"; {ONE_SEED}" if len(seeds) < 2 else ""
    return (
        "Quality at equal sampling cost (FID of the best sampler at each number of network evaluations per "
        f"image, lower is better): {'; '.join(parts)}. At each family's best sampler: "
        f"{', '.join(show(fid, family, label, nfe) for fid, family, label, nfe in best)}{uncertain}."
    )


def training_cost_to_fid(
    runs: list[RunResult], threshold: float | None = None
) -> tuple[float | None, dict[str, list[dict[str, Any]]]]:
    """Images seen, training and CPU seconds at each run's first evaluation with FID at or below
    ``threshold``; by default the worst final FID of any successful run, so that every run reaches
    it and the question is only how soon. Returns (threshold, {family: [one dict per run]}); a run
    that never reaches it has ``images_seen`` None."""

    ok = [r for r in runs if r.status == "ok" and r.fid_history("images_seen")]
    if not ok:
        return None, {}
    if threshold is None:
        threshold = max(float(r.fid_history("images_seen")[-1]["fid"]) for r in ok)
    out: dict[str, list[dict[str, Any]]] = {}
    for r in ok:
        points = r.fid_history("images_seen")
        hit = next((h for h in points if float(h["fid"]) <= threshold + 1e-9), None)
        out.setdefault(r.family, []).append(
            {
                "seed": r.seed,
                "images_seen": hit.get("images_seen") if hit else None,
                "train_seconds": hit.get("train_seconds") if hit else None,
                "cpu_seconds": hit.get("cpu_seconds") if hit else None,
            }
        )
    return threshold, out


def _training_cost_sentence(runs: list[RunResult]) -> str:
    threshold, per_family = training_cost_to_fid(runs)
    if threshold is None:
        return "Training cost to reach a given FID: no ranking: no run has an evaluation history with FID."
    entries, notes = [], []
    for family, results in per_family.items():
        reached = [x for x in results if x["images_seen"] is not None]
        if len(reached) < len(results):
            notes.append(f"{family}: {len(results) - len(reached)} of {len(results)} seeds never reached it")
        if reached:
            s = summarize([x["images_seen"] for x in reached], bounds=(0.0, None))
            entries.append(Entry(family, s["mean"], s["ci"], s["n"]))
    if not entries:
        return f"Training cost to reach FID {threshold:.1f}: no run reached it."
    seconds = {
        f: summarize([x["train_seconds"] for x in res if x["images_seen"] is not None])["mean"]
        for f, res in per_family.items()
    }
    secs = ", ".join(f"{f} {format_value('train_seconds', s)} s" for f, s in seconds.items() if s is not None)
    body = rank(entries, True, lambda v: format_value("images_seen", v), " images")
    return (
        f"Training cost to reach FID {threshold:.1f} (the worst final FID of any run, so every run gets there; "
        f"training images seen at the first evaluation at or below it, fewer is better): {body}"
        + (f"; training seconds: {secs}" if secs else "")
        + (f"; {'; '.join(notes)}" if notes else "")
        + "."
    )


def fid_curves(runs: list[RunResult], x_key: str = "train_seconds") -> dict[str, list[tuple[float, float]]]:
    """Per family, its mean FID over seeds at each evaluation during training, against the mean
    ``x_key`` there: [(x, fid), ...] sorted by x. Evaluations are matched across seeds by their budget
    fraction (the TrainingBudget's eval_at), else by their order."""
    points: dict[str, dict[Any, list[tuple[float, float]]]] = defaultdict(lambda: defaultdict(list))
    for r in runs:
        if r.status != "ok":
            continue
        for i, h in enumerate(r.fid_history(x_key)):
            points[r.family][h.get("budget_fraction", i)].append((float(h[x_key]), float(h["fid"])))
    return {
        family: sorted((sum(x for x, _ in v) / len(v), sum(f for _, f in v) / len(v)) for v in by_point.values())
        for family, by_point in points.items()
    }


def curve_crossings(a: list[tuple[float, float]], b: list[tuple[float, float]]) -> list[tuple[float, int]]:
    """Where two piecewise-linear curves cross on the x-range both cover: [(x, sign)], sign +1 when
    ``b`` passes below ``a`` there (b better after x), -1 when ``a`` passes below ``b``."""
    lo, hi = max(a[0][0], b[0][0]), min(a[-1][0], b[-1][0])
    xs = sorted({x for x, _ in a + b if lo <= x <= hi} | {lo, hi})

    out: list[tuple[float, int]] = []
    prev: tuple[float, float] | None = None  # the last x where the curves differ, and by how much
    for x in xs:
        d = _interp(a, x) - _interp(b, x)  # > 0: b is better (lower FID)
        if d == 0:
            continue
        if prev is not None and (prev[1] > 0) != (d > 0):
            x0, d0 = prev
            out.append((x0 + (x - x0) * d0 / (d0 - d), 1 if d > 0 else -1))
        prev = (x, d)
    return out


def _curves_sentence(runs: list[RunResult]) -> str:
    """Who leads on FID early and late in training, where the curves cross, and whether the last
    family closes its gap to the leader: does more compute change the order?"""
    curves = {f: c for f, c in fid_curves(runs).items() if len(c) >= 2}
    if len(curves) < 2:
        return (
            "FID against training time: no comparison: it needs two or more families evaluated at two or more "
            "points during training (callbacks.budget.eval_at)."
        )
    lo = max(c[0][0] for c in curves.values())
    hi = min(c[-1][0] for c in curves.values())
    if lo >= hi:
        return "FID against training time: no comparison: the families' evaluations cover no common training time."

    def order_at(x: float) -> list[tuple[str, float]]:
        return sorted(((f, _interp(c, x)) for f, c in curves.items()), key=lambda t: t[1])

    def show(order: list[tuple[str, float]]) -> str:
        return ", ".join(f"{f} {format_value('fid', v)}" for f, v in order)

    first, last = order_at(lo), order_at(hi)
    sec = lambda x: format_value("train_seconds", x)  # noqa: E731
    parts = [f"at {sec(lo)} s {show(first)}; at {sec(hi)} s {show(last)}"]
    events = []
    families = sorted(curves)
    for i, fa in enumerate(families):
        for fb in families[i + 1 :]:
            for x, sign in curve_crossings(curves[fa], curves[fb]):
                winner, loser = (fb, fa) if sign > 0 else (fa, fb)
                events.append((x, f"{winner} passes {loser} at about {sec(x)} s"))
    parts.append("; ".join(e for _, e in sorted(events)) if events else "no curves cross")
    # how much each family gained over that time: who improves fastest with more compute
    gains = sorted(((f, _interp(c, lo) / max(_interp(c, hi), 1e-12)) for f, c in curves.items()), key=lambda t: -t[1])
    parts.append(
        "FID divided by " + ", ".join(f"{g:.2f} ({f})" for f, g in gains) + f" from {sec(lo)} s to {sec(hi)} s"
    )
    leader, trailer = last[0][0], last[-1][0]
    gap0 = _interp(curves[trailer], lo) / max(_interp(curves[leader], lo), 1e-12)
    gap1 = last[-1][1] / max(last[0][1], 1e-12)
    if gap0 > 1:  # the last family was behind from the start: does more compute close the gap?
        trend = "narrows" if gap1 < gap0 else "widens"
        parts.append(f"{trailer}'s FID ratio to {leader} {trend} from {gap0:.2f}x to {gap1:.2f}x")
    return (
        "FID against training time (mean over seeds, linear between evaluations, on the time every family "
        "covers): " + "; ".join(parts) + "."
    )


def _interp(curve: list[tuple[float, float]], x: float) -> float:
    """The piecewise-linear curve's value at x (its end values outside its range)."""
    return float(np.interp(x, [p[0] for p in curve], [p[1] for p in curve]))


def _cv_interval(std: float, mean: float, n: int) -> list[float]:
    """A 95% interval of the coefficient of variation std/|mean| from the chi-square interval of
    the standard deviation (the mean's own uncertainty is ignored: a first-order interval)."""
    from scipy.stats import chi2

    lo = std * math.sqrt((n - 1) / chi2.ppf(0.5 + CONFIDENCE / 2, n - 1))
    hi = std * math.sqrt((n - 1) / chi2.ppf(0.5 - CONFIDENCE / 2, n - 1))
    return [lo / abs(mean), hi / abs(mean)]


def _stability_sentence(rows: list[dict[str, Any]]) -> str:
    entries, few = [], []
    for r in _family_rows(rows):
        std, mean, n = r.get("fid_std"), r.get("fid"), int(r.get("fid_n") or 0)
        if std is None or not mean or n < 2:
            few.append(r["family"])
            continue
        entries.append(Entry(r["family"], std / abs(mean), _cv_interval(std, mean, n), n))
    if not entries:
        return (
            "Stability: no ranking: the spread over seeds needs at least two seeds per family "
            f"({', '.join(few) or 'no family'} had fewer; run seeds=[0,1,2])."
        )
    body = rank(entries, True, lambda v: f"{100 * v:.1f}%")
    tail = f"; {', '.join(few)}: fewer than two seeds, no spread" if few else ""
    return f"Stability (coefficient of variation of FID over seeds, lower is better): {body}{tail}."


def guidance_means(runs: list[RunResult]) -> dict[str, dict[float, dict[str, float]]]:
    """{family: {w: {metric: mean over the family's finished runs}}} from each run's final guidance
    sweep (``guidance`` in its evaluation record), scales in increasing order."""
    values: dict[str, dict[float, dict[str, list[float]]]] = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for run in runs:
        for point in run.final.get(GUIDANCE) or [] if run.status == "ok" else ():
            for key, v in point.items():
                if key != GUIDANCE and isinstance(v, int | float) and math.isfinite(v):
                    values[run.family][float(point[GUIDANCE])][key].append(float(v))
    return {
        family: {w: {k: float(np.mean(v)) for k, v in metrics.items()} for w, metrics in sorted(by_w.items())}
        for family, by_w in values.items()
    }


def _conditional_sentence(rows: list[dict[str, Any]], runs: list[RunResult]) -> str | None:
    """Conditional quality: the families ranked by intra-class FID, their class accuracy, the
    floor's two numbers, and for a guided family the scale with the best intra-class FID and how the
    accuracy moves across the sweep. None when no family is conditional (an unconditional report)."""
    have, _ = _entries(rows, INTRA_FID)
    acc, _ = _entries(rows, COND_ACCURACY)
    sweeps = guidance_means(runs)
    if not have and not acc and not sweeps:
        return None
    parts = []
    if have:
        parts.append("by intra-class FID (lower is better) " + rank(have, True, lambda v: format_value(INTRA_FID, v)))
    if acc:
        parts.append(
            "by class accuracy (higher is better) " + rank(acc, False, lambda v: format_value(COND_ACCURACY, v))
        )
    floor = next((r for r in rows if r.get("kind") == "floor"), None)
    if floor and floor.get(INTRA_FID) is not None:
        parts.append(
            f"real images at the same count per class reach intra-class FID {format_value(INTRA_FID, floor[INTRA_FID])}"
            + (
                f" and class accuracy {format_value(COND_ACCURACY, floor[COND_ACCURACY])}"
                if floor.get(COND_ACCURACY) is not None
                else ""
            )
        )
    for family, by_w in sweeps.items():
        scored = {w: m for w, m in by_w.items() if INTRA_FID in m or FID in m}
        if not scored:
            continue
        key = INTRA_FID if all(INTRA_FID in m for m in scored.values()) else FID
        best = min(scored, key=lambda w: scored[w][key])
        text = (
            f"{family}'s guidance sweep is best at w={best:g} ({METRIC_INFO[key].title} "
            f"{format_value(key, scored[best][key])})"
        )
        ws = [w for w in by_w if COND_ACCURACY in by_w[w]]
        if len(ws) > 1:
            lo, hi = ws[0], ws[-1]
            text += (
                f", class accuracy {format_value(COND_ACCURACY, by_w[lo][COND_ACCURACY])} at w={lo:g} and "
                f"{format_value(COND_ACCURACY, by_w[hi][COND_ACCURACY])} at w={hi:g}"
            )
        parts.append(text)
    return "Conditional quality (samples asked for each class in turn): " + "; ".join(parts) + "."


def verdict(rows: list[dict[str, Any]], runs: list[RunResult] | None) -> list[str]:
    """One sentence per axis (quality, diversity/coverage, likelihood, sampling cost, quality at
    equal sampling cost where families share an NFE, training cost to reach a given FID, stability), and a last one when a time budget ran on a loaded machine.
    ``rows`` from :func:`~genbench.report.leaderboard.build_leaderboard`; ``runs`` for the
    evaluation histories (training cost, the FID curves, samplers, guidance sweeps).

    ``runs=None`` gives the verdict of a leaderboard alone (a committed ``leaderboard.json``, which
    scripts/doc_numbers.py renders into the docs): the sentences that need the runs' histories are
    left out rather than stated as "no ranking", since the runs did have them."""
    if not _family_rows(rows):
        return ["No verdict: no family finished a run."]
    with_runs = runs is not None
    runs = runs or []
    sentences = [
        _metric_sentence(rows, "fid", "Quality"),
        _conditional_sentence(rows, runs),
        _diversity_sentence(rows),
        _metric_sentence(rows, "bpd", "Likelihood"),
        _sampling_sentence(rows),
        _nfe_sentence(runs) if with_runs else None,
        _training_cost_sentence(runs) if with_runs else None,
        _curves_sentence(runs) if with_runs else None,
        _stability_sentence(rows),
    ]
    sentences = [s for s in sentences if s]
    failed = [r["family"] for r in rows if r.get("kind", "family") == "family" and r.get("status") == "failed"]
    if failed:
        sentences.append(f"Not ranked: {', '.join(failed)} (no run finished; see the status column).")
    loaded = [r for r in _family_rows(rows) if r.get("load_warning")]
    if loaded:
        sentences.append(
            "Caution: "
            + "; ".join(
                f"{r['family']} trained under a time budget with load {format_value('load_avg', r['load_avg'])} "
                f"on {r['cpu_count']} cores"
                for r in loaded
            )
            + ": its images seen and quality reflect the machine's load, not only the model "
            "(an image-count budget, budget=cpu_images, is reproducible)."
        )
    return sentences
