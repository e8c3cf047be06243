"""One row per family and configuration: every metric as mean ± std with a 95% interval over seeds,
cost and load figures, the real-vs-real floor, and (with several seeds) a spread row.

Runs of one family that were started with different settings (a sweep's points: another learning
rate, another latent size) are different models, not seeds of one: they get a row each, named by
the overrides that differ (``<family> (model.optimizer.lr=0.001)``), and only runs that differ in seed
alone are averaged (:func:`group_runs`; ``group_by="family"`` pools every run of a family, as a
benchmark of one configuration per family does anyway).

Rows are plain dicts so that every renderer (markdown here, the HTML report, W&B, the CSV) shows
the same numbers; :func:`format_value` / :func:`format_cell` are the one place where a number
becomes text, so IS never prints as "1" in one place and "1.02" in another.

Row layout (``kind`` says which row it is):

- ``kind="family"``: ``family`` (the row's name: the family, and in parentheses the overrides
  that set this row's runs apart from the family's other runs; just the family when all its runs
  share one configuration), ``model_family`` (the family alone), ``config`` (those overrides as
  text, "" when none) and ``overrides`` ({key: value}), ``status``, ``seeds``, ``errors``; for every key in
  :data:`METRIC_INFO` present in the runs: ``<key>`` (mean over seeds), ``<key>_std`` (sample std,
  None with one seed), ``<key>_ci`` ([low, high] 95% Student-t interval, None with one seed),
  ``<key>_n`` (seeds that have it), ``<key>_range`` (max - min) and ``<key>_cv`` (std / |mean|);
  ``stability_note`` (e.g. "1 seed: no std or interval"); ``likelihood`` (what the bpd is, or
  "none (implicit model: no likelihood)" for an implicit model); cost: ``num_parameters``,
  ``train_images_per_second``, ``train_seconds``, ``images_seen``, ``cpu_seconds``, ``load_avg``,
  ``cpu_count``, ``budget_kind`` ("time" or "images"), ``load_warning`` (text or None);
  sampling: ``sampling_images_per_second`` (sampler -> img/s), ``sampler`` (the evaluated one) and
  ``sample_images_per_second`` (its img/s).
- ``kind="floor"``: the real-vs-real reference (``family="real vs real (floor)"``).
- ``kind="spread"`` (``family="spread"``): only when a family has >= 2 seeds; each metric cell is
  a text "<family> 12.3 · <family> 4.1" of max - min over seeds, ``by_family`` holds the numbers
  ({family: {key: {"range", "cv", "n"}}}).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import statistics
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from genbench.errors import GenbenchError
from genbench.io import atomic_write_bytes
from genbench.metrics.catalogue import (
    CATALOGUE,
    CONDITIONAL_COLUMNS,
    EXTRA_COLUMNS,
    HEADLINE,
    Metric,
    aggregated,
    metric,
)
from genbench.registry import family_sort_key, find_family
from genbench.report.collect import RunResult

#: how a result key is shown and compared: the metric catalogue's entry (genbench.metrics.catalogue)
MetricInfo = Metric


class _AggregatedMetrics(Mapping[str, Metric]):
    """The per-evaluation metrics the leaderboard aggregates over seeds, read from the catalogue:
    iteration gives the catalogue's, lookup also derives a family's ``bpd_<bound>`` entries."""

    def __getitem__(self, key: str) -> Metric:
        m = metric(key)
        if m is None or not m.aggregate:
            raise KeyError(key)
        return m

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and (m := metric(key)) is not None and m.aggregate

    def __iter__(self) -> Iterator[str]:
        return iter(aggregated())

    def __len__(self) -> int:
        return len(aggregated())


#: Every per-evaluation key the leaderboard aggregates over seeds (the catalogue's, and bounds).
METRIC_INFO: Mapping[str, Metric] = _AggregatedMetrics()

#: The headline metrics: (key, column title, lower is better). Plots and the short table use these.
METRICS = [(k, CATALOGUE[k].title, bool(CATALOGUE[k].lower_is_better)) for k in HEADLINE]
FLOOR_NAME = "real vs real (floor)"
NO_LIKELIHOOD = "no likelihood"
CONFIDENCE = 0.95


# --- statistics -------------------------------------------------------------------------------


def _finite(values: list[Any]) -> list[float]:
    out = []
    for v in values:
        if isinstance(v, bool) or v is None:
            continue
        try:
            f = float(v)
        except (TypeError, ValueError):
            continue
        if math.isfinite(f):
            out.append(f)
    return out


def mean_std(values: list[Any]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (n - 1; None with fewer than two values): the spread a
    new seed would show, which is what the t interval uses too."""
    values = _finite(values)
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def t_quantile(n: int, confidence: float = CONFIDENCE) -> float:
    """Two-sided Student-t quantile with n - 1 degrees of freedom: with 3 seeds the normal 1.96
    would understate the interval by more than half (t = 4.30)."""
    from scipy.stats import t

    return float(t.ppf(0.5 + confidence / 2, n - 1))


def summarize(
    values: list[Any],
    confidence: float = CONFIDENCE,
    bounds: tuple[float | None, float | None] = (None, None),
) -> dict[str, Any]:
    """Mean, std, a Student-t confidence interval of the mean (clipped to ``bounds``, the values
    the measure can take), range and coefficient of variation over seeds. One value: mean only
    (std, interval, cv None: one seed says nothing of spread)."""
    xs = _finite(values)
    n = len(xs)
    out: dict[str, Any] = {"mean": None, "std": None, "ci": None, "n": n, "range": None, "cv": None}
    if not n:
        return out
    mean, std = mean_std(xs)
    out["mean"] = mean
    if n > 1 and std is not None:
        half = t_quantile(n, confidence) * std / math.sqrt(n)
        low, high = mean - half, mean + half
        if bounds[0] is not None:
            low = max(low, bounds[0])
        if bounds[1] is not None:
            high = min(high, bounds[1])
        out.update(std=std, ci=[low, high], range=max(xs) - min(xs))
        out["cv"] = std / abs(mean) if mean else None
    return out


# --- rows -------------------------------------------------------------------------------------


def _eval_value(run: RunResult, key: str) -> Any:
    return run.final.get(key, run.final.get(f"eval/{key}"))


def _first(values: Any) -> Any:
    return next((v for v in values if v not in (None, "")), None)


#: a time budget's run is flagged when the mean load exceeded this many times the cores
LOAD_TOLERANCE = 1.25


def _load_warning(row: dict[str, Any]) -> str | None:
    """A time budget measures the machine as much as the model: on a machine loaded above its cores
    each family got only part of a core, and not the same part (issue #12.6). The load average
    counts the run's own threads too (a run using every core alone makes load ~= cores), so only
    a load beyond :data:`LOAD_TOLERANCE` x cores, i.e. others taking a real share, is flagged."""
    load, cores = row.get("load_avg"), row.get("cpu_count")
    if row.get("budget_kind") != "time" or load is None or not cores or load <= LOAD_TOLERANCE * cores:
        return None
    return (
        f"time budget ran with mean load {load:.1f} on {int(cores)} cores: this family had about "
        f"{min(1.0, cores / load):.0%} of the machine, so its images seen (and quality) are not comparable with a "
        "run on an idle machine; an image-count budget (budget=cpu_images) is reproducible"
    )


# --- which runs are seeds of one configuration ----------------------------------------------------

#: the values of genbench-compare's ``--group-by``: "config" (a row per family and configuration)
#: or "family" (every run of a family in one row)
GROUP_BY = ("config", "family")

#: override keys that say where a run wrote its files, how it reported, or which seed it drew,
#: never what was trained: runs differing only in these are seeds of one configuration
NOT_CONFIGURATION = (
    "seed",
    "ckpt_path",
    "print_config",
    "fail_soft",
    "tags",
    "paths",
    "hydra",
    "logger",
    "callbacks.progress_bar",
    "callbacks.model_summary",
)


def is_configuration_key(key: str) -> bool:
    """Whether an override of ``key`` changes what is trained (not the seed, a path, a run
    directory, Hydra's own settings or the logging)."""
    if any(key == p or key.startswith((f"{p}.", f"{p}/")) for p in NOT_CONFIGURATION):
        return False
    return not key.rsplit(".", 1)[-1].endswith(("dir", "dirpath"))


def _text(value: Any) -> str:
    """A config value as it would be written on the command line (true, null, 0.001, [1,2])."""
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, list | dict):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def parse_overrides(overrides: Iterable[str]) -> dict[str, str]:
    """{key: value} of the overrides that configure the model or its training (``+``/``++``
    prefixes dropped, a ``~key`` deletion as value "~")."""
    out: dict[str, str] = {}
    for item in overrides:
        key, sep, value = str(item).partition("=")
        key = key.strip().lstrip("+")
        if key.startswith("~"):
            key, value, sep = key[1:], "~", "="
        if sep and key and is_configuration_key(key):
            out[key] = value.strip()
    return out


def _lookup(config: Mapping[str, Any], key: str) -> Any:
    """The value at dotted ``key`` in a run's config, or a sentinel when it is not a plain value
    there (a config group such as ``model=<family>`` names a whole section)."""
    node: Any = config
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return _MISSING
        node = node[part]
    return _MISSING if isinstance(node, Mapping) else node


_MISSING = object()


def _flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in config.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            out.update(_flatten(v, f"{key}."))
        else:
            out[key] = v
    return out


def _settings(runs: list[RunResult]) -> list[dict[str, str]]:
    """Each run's settings that differ between ``runs`` (one family), as {key: value text}.

    From the overrides every run recorded: the keys any run set differently, each run's value
    read from its resolved config where it is a plain value there (so ``lr=1e-3`` on one command
    line and the default 0.001 of another run are one configuration), else as typed (a config
    group: ``experiment=...``), else "default". A run with no record of its overrides (written
    by other tools) falls back to its resolved config: the leaves that differ, paths and values
    naming the run's own directory excluded.
    """
    if all(r.overrides is not None for r in runs):
        given = [parse_overrides(r.overrides or []) for r in runs]
        keys = [k for k in dict.fromkeys(k for g in given for k in g) if len({g.get(k) for g in given}) > 1]
        settings = []
        for run, typed in zip(runs, given, strict=True):
            values = {}
            for key in keys:
                found = _lookup(run.config, key)
                values[key] = _text(found) if found is not _MISSING else typed.get(key, "default")
            settings.append(values)
    else:
        flat = [
            {
                k: _text(v)
                for k, v in _flatten(r.config).items()
                if is_configuration_key(k) and str(r.run_dir) not in _text(v)
            }
            for r in runs
        ]
        keys = [k for k in dict.fromkeys(k for f in flat for k in f) if len({f.get(k) for f in flat}) > 1]
        settings = [{k: f.get(k, "default") for k in keys} for f in flat]
    # keys whose values agree once read from the configs (1e-3 typed, 0.001 by default) set nothing apart
    varying = [k for k in keys if len({s[k] for s in settings}) > 1]
    return [{k: s[k] for k in varying} for s in settings]


def _order(value: str) -> tuple[int, float, str]:
    """Sort key of a setting's value: numbers by size (0.001 before 0.01), then text."""
    try:
        return (0, float(value), "")
    except ValueError:
        return (1, 0.0, value)


@dataclass
class RunGroup:
    """The runs of one leaderboard row: one family, one configuration, its seeds."""

    family: str
    overrides: dict[str, str]
    runs: list[RunResult]

    @property
    def config(self) -> str:
        """The overrides that set this group apart, as on a command line ("" when none)."""
        return ", ".join(f"{k}={v}" for k, v in self.overrides.items())

    @property
    def label(self) -> str:
        """The row's name: ``<family> (model.optimizer.lr=0.001)``, or just ``<family>``."""
        return f"{self.family} ({self.config})" if self.overrides else self.family


def group_runs(runs: list[RunResult], group_by: str = "config") -> list[RunGroup]:
    """The leaderboard's rows as groups of runs, families in the registry's display order.

    ``group_by="config"``: within a family, runs with the same settings (the overrides that differ
    between the family's runs, seed, paths and logging excluded; :func:`_settings`) are one row,
    their seeds averaged; ``"family"``: a row per family, whatever its runs' settings."""
    if group_by not in GROUP_BY:
        raise GenbenchError(f"group_by={group_by!r}: choose one of {', '.join(GROUP_BY)}.")
    by_family: dict[str, list[RunResult]] = defaultdict(list)
    for run in runs:
        by_family[run.family].append(run)
    groups: list[RunGroup] = []
    for family in sorted(by_family, key=family_sort_key):
        members = by_family[family]
        if group_by == "family":
            groups.append(RunGroup(family, {}, members))
            continue
        by_setting: dict[tuple[tuple[str, str], ...], list[RunResult]] = defaultdict(list)
        for run, setting in zip(members, _settings(members), strict=True):
            by_setting[tuple(setting.items())].append(run)
        for setting in sorted(by_setting, key=lambda s: [_order(v) for _, v in s]):
            groups.append(RunGroup(family, dict(setting), by_setting[setting]))
    return groups


def named_runs(runs: list[RunResult], group_by: str = "config") -> list[RunResult]:
    """The runs with ``family`` set to their row's name (:attr:`RunGroup.label`), for the parts of
    a report that group runs by family themselves (the verdict's per-run sentences, the sample
    grids, the protocol): so they tell a sweep's points apart as the leaderboard does. Runs whose
    family has one configuration come back unchanged."""
    return [
        run if group.label == run.family else dataclasses.replace(run, family=group.label)
        for group in group_runs(runs, group_by)
        for run in group.runs
    ]


def _family_row(group: RunGroup) -> dict[str, Any]:
    family, runs = group.family, group.runs
    ok = [r for r in runs if r.status == "ok"]
    row: dict[str, Any] = {
        "family": group.label,
        "model_family": family,
        "config": group.config,
        "overrides": dict(group.overrides),
        "kind": "family",
        "status": "ok" if len(ok) == len(runs) else ("failed" if not ok else "partial"),
        "seeds": sorted(r.seed for r in ok if r.seed is not None),
        "errors": [f"seed {r.seed}: {r.error}" for r in runs if r.status != "ok"],
    }
    for key in aggregated(k for r in ok for k in r.final):
        values = [_eval_value(r, key) for r in ok]
        if key not in {m[0] for m in METRICS} and not _finite(values):
            continue  # a key no run of this family has: left out, not a column of dashes
        s = summarize(values, bounds=METRIC_INFO[key].bounds)
        row[key], row[f"{key}_std"], row[f"{key}_ci"], row[f"{key}_n"] = s["mean"], s["std"], s["ci"], s["n"]
        row[f"{key}_range"], row[f"{key}_cv"] = s["range"], s["cv"]
    row["stability_note"] = (
        f"{len(ok)} seeds: mean ± sample std, {CONFIDENCE:.0%} Student-t interval"
        if len(ok) > 1
        else ("1 seed: no std or interval (run seeds=[0,1,2] for them)" if ok else "no successful run")
    )
    row["likelihood"] = _first(_eval_value(r, "likelihood") for r in ok)
    spec = find_family(family)
    if row.get("bpd") is None and row["likelihood"] is None and spec is not None and spec.likelihood is None:
        row["likelihood"] = spec.likelihood_note
    row["num_samples"] = _first(r.final.get("num_samples") for r in ok)
    row["num_classes"] = _first(_eval_value(r, "num_classes") for r in ok)
    row["extractor"] = _first(r.final.get("extractor") for r in ok)
    row["num_parameters"] = _first(r.train.get("num_parameters") for r in ok)
    for key in ("train_images_per_second", "train_seconds", "images_seen", "cpu_seconds", "load_avg"):
        row[key] = mean_std([r.budget.get(key) for r in ok])[0]
    row["cpu_count"] = _first(r.budget.get("cpu_count") for r in ok)
    max_seconds = _first(r.budget.get("max_train_seconds") for r in ok)
    max_images = _first(r.budget.get("max_images") for r in ok)
    row["budget_kind"] = "time" if max_seconds else ("images" if max_images else None)
    row["load_warning"] = _load_warning(row)
    sampling: dict[str, list[float]] = defaultdict(list)
    for r in ok:
        for s in r.sampling:
            sampling[s["sampler"]].append(s["images_per_second"])
    row["sampling_images_per_second"] = {k: mean_std(v)[0] for k, v in sampling.items()}
    # the first entry of sampling.json is the model's own sampler: the one the metrics describe
    row["sampler"] = _first(r.sampling[0]["sampler"] for r in ok if r.sampling)
    own = summarize([r.sampling[0]["images_per_second"] for r in ok if r.sampling], bounds=(0.0, None))
    row["sample_images_per_second"], row["sample_images_per_second_std"] = own["mean"], own["std"]
    row["sample_images_per_second_ci"], row["sample_images_per_second_n"] = own["ci"], own["n"]
    return row


def _spread_row(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    multi = [r for r in rows if len(r["seeds"]) > 1]
    if not multi:
        return None
    row: dict[str, Any] = {"family": "spread", "kind": "spread", "status": "spread", "seeds": [], "errors": []}
    row["by_family"] = {
        r["family"]: {
            k: {"range": r.get(f"{k}_range"), "cv": r.get(f"{k}_cv"), "n": r.get(f"{k}_n")}
            for k in aggregated(r)
            if r.get(f"{k}_range") is not None
        }
        for r in multi
    }
    for key in aggregated(k for r in multi for k in r):
        parts = [f"{f} {format_value(key, v[key]['range'])}" for f, v in row["by_family"].items() if key in v]
        if parts:
            row[key] = " · ".join(parts)
    row["stability_note"] = "max - min over seeds, per family"
    return row


def build_leaderboard(
    runs: list[RunResult], floor: dict[str, Any] | None = None, group_by: str = "config"
) -> list[dict[str, Any]]:
    """The leaderboard rows: one per family and configuration (``group_by="family"``: one per
    family; see :func:`group_runs`), families in the registry's display order (unknown ones last),
    the floor row when ``floor`` is given, and a spread row when any row has several seeds (see the
    module doc)."""
    rows = [_family_row(g) for g in group_runs(runs, group_by)]
    spread = _spread_row(rows)
    if floor:
        row = {"family": FLOOR_NAME, "kind": "floor", "status": "reference", "seeds": [], "errors": []}
        for key, _, _ in METRICS:
            row[key], row[f"{key}_std"] = floor.get(key), None
        for key in CONDITIONAL_COLUMNS:  # real images at the conditional runs' per-class count
            if floor.get(key) is not None:
                row[key], row[f"{key}_std"] = floor[key], None
        row["num_samples"], row["extractor"] = floor.get("num_samples"), floor.get("extractor")
        rows.append(row)
    if spread is not None:
        rows.append(spread)
    return rows


# --- formatting -------------------------------------------------------------------------------


def _style(key: str) -> str:
    m = metric(key)
    return m.style if m is not None else "sig3"


def _number(style: str, v: float) -> str:
    if style == "fid":
        return f"{v:,.1f}"
    if style == "sci":
        return f"{v:.2e}"
    if style == "is":
        return f"{v:.2f}"
    if style == "pct":
        return f"{100 * v:.1f}%"
    if style in ("bpd", "nats"):
        return f"{v:.3f}"
    if style == "int":
        return f"{v:,.0f}" if float(v).is_integer() or abs(v) >= 100 else f"{v:.1f}"
    if style == "seconds":
        return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.1f}"
    if style == "load":
        return f"{v:.1f}"
    # rate / sig3: 3 significant digits, thousands separated
    if v == 0:
        return "0"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    digits = max(0, 2 - int(math.floor(math.log10(abs(v)))))
    return f"{v:.{digits}f}" if abs(v) >= 1e-3 else f"{v:.2e}"


def format_value(key: str, value: Any, std: Any = None) -> str:
    """``value`` of result key ``key`` as text, with " ± std" when a std is given: FID 1 decimal,
    KID in scientific notation (its scale depends on the extractor: 4.85e+06 or 1.20e-03), IS
    2 decimals, precision/recall/memorised as %, bits/dim and nats 3 decimals, counts as integers.
    None or a non-finite number: "–"; text passes through."""
    if value is None:
        return "–"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    if not math.isfinite(value):
        return "–"
    style = _style(key)
    text = _number(style, float(value)) if not (style == "int" and isinstance(value, int)) else f"{value:,}"
    if std is not None and not isinstance(std, bool) and isinstance(std, int | float) and math.isfinite(std):
        text += f" ± {_number(style, float(std))}"
    return text


def format_interval(key: str, ci: Any) -> str:
    """A 95% interval as "[low, high]" in the key's format; "–" without one (a single seed)."""
    if not ci:
        return "–"
    return f"[{format_value(key, ci[0])}, {format_value(key, ci[1])}]"


def format_cell(row: dict[str, Any], key: str) -> str:
    """The table cell of ``key`` in ``row``: mean ± std, or the reason there is no number (an implicit
    model's bits/dim: "no likelihood" rather than a blank)."""
    if key == "bpd" and row.get("bpd") is None and str(row.get("likelihood") or "").startswith("none"):
        return NO_LIKELIHOOD
    return format_value(key, row.get(key), row.get(f"{key}_std"))


def column_title(key: str) -> str:
    """A column header with its direction (↓ lower is better, ↑ higher) and unit."""
    info = metric(key)
    if info is None:
        return key
    arrow = {True: " ↓", False: " ↑", None: ""}[info.lower_is_better]
    return info.title + arrow + (f" ({info.unit})" if info.unit else "")


def markdown_table(rows: list[dict[str, Any]]) -> str:
    samplers = sorted({k for r in rows for k in (r.get("sampling_images_per_second") or {})})
    extra = [
        k
        for k in (*EXTRA_COLUMNS, *CONDITIONAL_COLUMNS)
        if any(r.get(k) is not None for r in rows if r.get("kind") == "family")
    ]
    head = [
        "family",
        *[column_title(k) for k, _, _ in METRICS],
        *[column_title(k) for k in extra],
        "params",
        "train img/s",
        "train s",
        "images seen",
        "CPU s",
        "load / cores",
        *[f"sample img/s ({s})" for s in samplers],
        "status",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        load = "–"
        if r.get("load_avg") is not None:
            load = format_value("load_avg", r["load_avg"]) + (f" / {r['cpu_count']}" if r.get("cpu_count") else "")
        status = r["status"] + (f" ({'; '.join(r['errors'])})" if r.get("errors") else "")
        if r.get("load_warning"):
            status += " ⚠ loaded machine"
        cells = [
            r["family"],
            *[format_cell(r, k) for k, _, _ in METRICS],
            *[format_cell(r, k) for k in extra],
            format_value("num_parameters", r.get("num_parameters")),
            format_value("train_images_per_second", r.get("train_images_per_second")),
            format_value("train_seconds", r.get("train_seconds")),
            format_value("images_seen", r.get("images_seen")),
            format_value("cpu_seconds", r.get("cpu_seconds")),
            load,
            *[
                format_value("sample_images_per_second", (r.get("sampling_images_per_second") or {}).get(s))
                for s in samplers
            ],
            status,
        ]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    notes = [f"- {r['family']}: {r['load_warning']}" for r in rows if r.get("load_warning")]
    return "\n".join(lines) + "\n" + ("\n" + "\n".join(notes) + "\n" if notes else "")


def write_leaderboard(rows: list[dict[str, Any]], out_dir: Path) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / "leaderboard.json", "csv": out_dir / "leaderboard.csv", "md": out_dir / "leaderboard.md"}
    # atomically: a full disk or a kill leaves the previous leaderboard, never half of a new one
    atomic_write_bytes(paths["json"], json.dumps(rows, indent=2, default=str).encode())
    atomic_write_bytes(paths["md"], markdown_table(rows).encode())
    flat = []
    for r in rows:
        flat_row = {k: v for k, v in r.items() if not isinstance(v, dict | list)}
        for sampler, ips in (r.get("sampling_images_per_second") or {}).items():
            flat_row[f"sampling_images_per_second[{sampler}]"] = ips
        for key in aggregated(r):
            if r.get(f"{key}_ci"):
                flat_row[f"{key}_ci_low"], flat_row[f"{key}_ci_high"] = r[f"{key}_ci"]
        flat_row["seeds"] = " ".join(map(str, r.get("seeds", [])))
        flat_row["errors"] = " | ".join(r.get("errors", []))
        flat.append(flat_row)
    fields = list(dict.fromkeys(k for row in flat for k in row))
    buffer = io.StringIO(newline="")
    writer = csv.DictWriter(buffer, fieldnames=fields)
    writer.writeheader()
    writer.writerows(flat)
    atomic_write_bytes(paths["csv"], buffer.getvalue().encode())
    return paths
