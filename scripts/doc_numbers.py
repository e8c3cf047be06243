#!/usr/bin/env python
"""Render the numbers in README.md and docs/*.md from the committed result files they come from.

    python scripts/doc_numbers.py            # rewrite every generated block from its source files
    python scripts/doc_numbers.py --check    # exit 1 and name each block that differs (the tests run this)

A generated block sits between two marker comments, which name what renders it and from which
files (paths relative to the repository root, usually docs/results/<date>-<device>/):

    <!-- doc-numbers: leaderboard source=docs/results/2026-12-05-cpu/leaderboard.json -->
    | family | FID ↓ | ... |
    <!-- /doc-numbers -->

Why: a table typed by hand drifts from the run it reports (a rerun, a renamed column, a rounding
slip), and nothing notices. With the source committed beside the docs and this check in the tests,
a documented number that differs from its source fails the suite, and a new run is documented by
copying its results folder into docs/results and running this script.

Renderers (the word after ``doc-numbers:``):

- ``leaderboard source=<leaderboard.json>``: the benchmark's main table (quality, likelihood, classes,
  memorisation, size and speed per family, and the real-vs-real floor), the best value of a column
  in bold where one family alone has it;
- ``conditional source=<leaderboard.json>``: a class-conditional benchmark's table (class accuracy,
  intra-class FID, FID, precision, recall, bits/dim), with its floor;
- ``guidance source=<eval/final.json> ...``: guided runs' guidance sweeps, a row per family and scale;
- ``tuning source=<docs/results/tuning/<family>.json> ...``: each family's preset search (trials,
  budget, objective, the hand-set preset's and the tuned preset's value, the chosen menu settings);
- ``precision source=<fp32 leaderboard.json> source=<bf16 leaderboard.json>``: two runs of one budget
  side by side (training speed, images seen, FID, recall, bits/dim), e.g. fp32 against bf16-mixed;
  ``labels=hand-set,tuned`` names the two runs in the headings (default ``fp32,bf16``);
- ``samplers source=<sampling_<family>.json> ...``: each family's samplers on the same checkpoint
  (a run's sampling.json), grouped by network evaluations per sample: the family's own sampler in
  bold, the report's recommended one (the fastest within the sampling noise of the best) marked;
- ``results-index``: one row per folder in docs/results that has an environment.json (a GPU run of
  ``scripts/gpu_check.sh --showdown``): date, device, torch, CUDA and its files;
- ``verdict source=<leaderboard.json>``: the benchmark report's verdict for that leaderboard, one
  bullet per sentence, written by the report's own ``genbench.report.verdict.verdict`` (the
  sentences a leaderboard decides: those that need the runs' evaluation histories are left out);
- ``perf-precision source=<precision.json>``: ``scripts/perf_precision.py``'s fp32 vs bf16-mixed
  table, written by that script's own ``markdown()``;
- ``value source=<file.json> key=<path> [format=<template>] [scale=<factor>]``: one number inside a
  sentence, the inline form (no line break after the opening marker)::

      the VAE trained <!-- doc-numbers: value source=docs/results/r/leaderboard.json
      key=[family=vae].train_images_per_second format={:,.0f} -->2,136<!-- /doc-numbers --> images/s

  ``key`` is a dotted path into the JSON: a name picks a field, a number an item of a list, and
  ``[field=value,...]`` the one item of a list whose fields have those values (a leaderboard row
  by family or kind, a perf row by family and threads). ``format`` is a ``str.format`` template (default ``{}``) and ``scale`` multiplies first
  (``scale=100`` for a percentage). Every inline number of the docs is this one renderer.

A block whose opening marker ends its line is a table or list (its body whole lines); one that
continues on the same line is inline (its body is the text up to the closing marker).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
#: the files that may hold generated blocks: the README and every page under docs/
DOCS = ("README.md", *sorted(p.relative_to(REPO).as_posix() for p in (REPO / "docs").glob("*.md")))
#: a generated block, table (a line break after the opening marker) or inline (none)
BLOCK = re.compile(
    r"(?P<open><!-- doc-numbers: (?P<spec>[^>]*?) -->(?P<newline>\n?))(?P<body>.*?)(?P<close><!-- /doc-numbers -->)",
    re.S,
)
#: how a sampler's short name (its label in sampling.json, "<kind>-<NFE>") reads in a table
SAMPLER_NAMES = {
    "ddim": "DDIM",
    "dpmpp_2m": "DPM-Solver++",
    "edm_heun": "EDM Heun",
    "ancestral": "ancestral",
    "euler": "Euler",
    "heun": "Heun",
    "dopri5": "dopri5",
}


class DocNumbersError(Exception):
    """A block that cannot be rendered: unknown renderer, missing source file."""


# ------------------------------------------------------------------------------------------------
# formatting
# ------------------------------------------------------------------------------------------------
def number(v: float | None, digits: int) -> str:
    """Fixed decimals, thousands separators, a real minus sign; '–' for a missing value."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return f"{v:,.{digits}f}".replace("-", "−")


def percent(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.1f} %"


def small(v: float | None) -> str:
    """Two decimals, or three below 0.01 in size (the floor's KID is about −0.003)."""
    return number(v, 2 if v is None or abs(v) >= 0.01 else 3)


def family_label(row: dict[str, Any]) -> str:
    """The family's title from genbench's registry, with its sampler where it has several."""
    from genbench.registry import families

    spec = families().get(row.get("model_family") or row["family"])
    title = spec.title if spec else row["family"]
    sampler = row.get("sampler")
    if sampler and sampler != "default":
        kind, _, nfe = sampler.rpartition("-")
        title += f" ({SAMPLER_NAMES.get(kind, kind)}, {nfe} NFE)" if nfe.isdigit() and kind else f" ({sampler})"
    return title


# ------------------------------------------------------------------------------------------------
# renderers: (spec arguments) -> markdown lines
# ------------------------------------------------------------------------------------------------
def load_json(path: str) -> Any:
    file = REPO / path
    if not file.is_file():
        raise DocNumbersError(f"source file {path} does not exist: commit it, or fix the marker's source=")
    return json.loads(file.read_text())


#: the leaderboard table's columns: (heading, row key, format, better: "min" / "max" / None = no bold)
LEADERBOARD_COLUMNS: tuple[tuple[str, str, Callable[[Any], str] | None, str | None], ...] = (
    ("FID ↓", "fid", lambda v: number(v, 1), "min"),
    ("KID ↓", "kid_mean", small, "min"),
    ("IS ↑", "is_mean", lambda v: number(v, 2), "max"),
    ("precision ↑", "precision", percent, "max"),
    ("recall ↑", "recall", percent, "max"),
    ("bits/dim ↓", "bpd", None, "min"),  # no formatter: with its standard error (bits_per_dim)
    ("classes covered ↑", "classes_covered", lambda v: number(v, 0), "max"),
    ("class KL ↓", "class_kl", lambda v: number(v, 3), "min"),
    ("memorised", "memorised_frac", percent, None),
    ("params", "num_parameters", lambda v: number(v, 0), None),
    ("train img/s", "train_images_per_second", lambda v: number(v, 0), None),
    ("images seen", "images_seen", lambda v: number(v, 0), None),
    ("sample img/s", "sample_images_per_second", lambda v: number(v, 0), None),
)


def bits_per_dim(row: dict[str, Any]) -> str:
    if row.get("bpd") is None:
        return "no likelihood" if row.get("kind") == "family" else ""
    se = row.get("bpd_se")
    return number(row["bpd"], 2) + (f" ± {number(se, 2)}" if se is not None else "")


def unique_best(rows: list[dict[str, Any]], key: str, better: str | None) -> int | None:
    """Index of the one family row with the best value of ``key``; None when tied or not ranked."""
    if better is None:
        return None
    values = [(i, r[key]) for i, r in enumerate(rows) if isinstance(r.get(key), int | float)]
    if len(values) < 2:
        return None
    best = (min if better == "min" else max)(v for _, v in values)
    winners = [i for i, v in values if v == best]
    return winners[0] if len(winners) == 1 else None


def family_table(
    source: str, columns: tuple[tuple[str, str, Callable[[Any], str] | None, str | None], ...]
) -> list[str]:
    """A leaderboard.json as a table: a row per family (the one best value of a ranked column in
    bold), then the real-vs-real floor rows. A column without a formatter is bits/dim with its
    standard error (families only)."""
    board = load_json(source)
    rows = [r for r in board if r.get("kind") == "family"]
    floors = [r for r in board if r.get("kind") == "floor"]
    lines = ["| family | " + " | ".join(c[0] for c in columns) + " |", "|---" * (len(columns) + 1) + "|"]
    bold = {key: unique_best(rows, key, better) for _, key, _, better in columns}
    for i, row in enumerate(rows):
        cells = []
        for _, key, fmt, _ in columns:
            text = bits_per_dim(row) if fmt is None else fmt(row.get(key))
            cells.append(f"**{text}**" if bold[key] == i else text)
        lines.append(f"| {family_label(row)} | " + " | ".join(cells) + " |")
    for floor in floors:
        cells = ["" if fmt is None or key not in floor else fmt(floor[key]) for _, key, fmt, _ in columns]
        lines.append(f"| real vs real (floor, n = {number(floor['num_samples'], 0)}) | " + " | ".join(cells) + " |")
    return lines


def render_leaderboard(sources: list[str]) -> list[str]:
    (source,) = sources
    return family_table(source, LEADERBOARD_COLUMNS)


#: the conditional table's columns (a conditional benchmark's leaderboard.json)
CONDITIONAL_COLUMNS: tuple[tuple[str, str, Callable[[Any], str], str | None], ...] = (
    ("class accuracy ↑", "cond_accuracy", percent, "max"),
    ("intra-class FID ↓", "intra_fid", lambda v: number(v, 1), "min"),
    ("FID ↓", "fid", lambda v: number(v, 1), "min"),
    ("precision ↑", "precision", percent, "max"),
    ("recall ↑", "recall", percent, "max"),
    ("bits/dim ↓", "bpd", lambda v: number(v, 2), "min"),
)


def render_conditional(sources: list[str]) -> list[str]:
    (source,) = sources
    return family_table(source, CONDITIONAL_COLUMNS)


def render_guidance(sources: list[str]) -> list[str]:
    """Each source is a guided run's final evaluation record (eval/final.json): one row per scale."""
    lines = [
        "| family | guidance w | class accuracy ↑ | intra-class FID ↓ | FID ↓ | precision ↑ | recall ↑ |",
        "|---|---|---|---|---|---|---|",
    ]
    for source in sources:
        record = load_json(source)
        for point in record.get("guidance") or []:
            lines.append(
                f"| {family_label(record)} | {point['guidance']:g} | {percent(point.get('cond_accuracy'))} | "
                f"{number(point.get('intra_fid'), 1)} | {number(point.get('fid'), 1)} | "
                f"{percent(point.get('precision'))} | {percent(point.get('recall'))} |"
            )
    return lines


def render_tuning(sources: list[str]) -> list[str]:
    """Each source is a family's search record (docs/results/tuning/<family>.json, written by
    scripts/tune_presets.py): its trials, the hand-set preset's and the best trial's objective, the
    finalists' objective when trained again under the time check's budget, and the chosen preset's
    settings as the report's menu line names them."""
    from genbench.report.presets import menu_text

    check_budget = next((r["time_check"]["budget"] for r in map(load_json, sources) if r.get("time_check")), None)
    check_head = "time check"
    if check_budget:
        seconds = check_budget.get("max_train_seconds")
        check_head = f"under `{check_budget['name']}`{f' ({seconds:g} s)' if seconds else ''}: hand-set / best"
    lines = [
        f"| family | trials | budget | objective | hand-set preset | search's best | {check_head} | preset |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for source in sources:
        record = load_json(source)
        hand = next((t["value"] for t in record["trials"] if t.get("hand_set")), None)
        best = record["best"]
        chosen = record.get("chosen") or best
        objective = record["objective"]
        check = record.get("time_check")
        if check:
            by_trial = {f["search_trial"]: f for f in check["finalists"]}
            hand_check = next((f["value"] for f in check["finalists"] if f["hand_set"]), None)
            best_check = by_trial.get(best["number"], {}).get("value")
            checked = f"{number(hand_check, 1)} / {number(best_check, 1)}"
        else:
            checked = "–"
        settings = "the hand-set preset" if chosen.get("hand_set") else menu_text(record["family"], chosen["settings"])
        lines.append(
            f"| {family_label({'family': record['family']})} | {record['n_trials']} | {record['budget']['name']} "
            f"({record['budget']['max_images']:,} images) | {objective['metric'].removeprefix('eval/').upper()} of "
            f"{objective['num_samples']:,} samples, {objective['split']} split | {number(hand, 1)} | "
            f"{number(best['value'], 1)} | {checked} | {settings} |"
        )
    return lines


def render_precision(sources: list[str], labels: str = "fp32,bf16") -> list[str]:
    """Two runs of one budget side by side, a row per family in both (``labels``: the two runs'
    names in the headings, e.g. ``hand-set,tuned``)."""
    base_path, other_path = sources
    a_name, b_name = labels.split(",")
    base = {r["family"]: r for r in load_json(base_path) if r.get("kind") == "family"}
    other = {r["family"]: r for r in load_json(other_path) if r.get("kind") == "family"}
    arrow = f"{a_name} → {b_name}"
    lines = [
        f"| family | train img/s {arrow} | images seen | FID {arrow} | recall {arrow} | bits/dim {arrow} |",
        "|---|---|---|---|---|---|",
    ]
    for family, a in base.items():
        b = other.get(family)
        if b is None:
            continue
        speed = b["train_images_per_second"] / a["train_images_per_second"]
        bpd = (
            f"{number(a['bpd'], 2)} → {number(b['bpd'], 2)}"
            if a.get("bpd") is not None and b.get("bpd") is not None
            else "–"
        )
        lines.append(
            f"| {family_label({'family': family})} "
            f"| {number(a['train_images_per_second'], 0)} → {number(b['train_images_per_second'], 0)} ({speed:.2f}x) "
            f"| {number(a['images_seen'], 0)} → {number(b['images_seen'], 0)} "
            f"| {number(a['fid'], 1)} → {number(b['fid'], 1)} | {percent(a['recall'])} → {percent(b['recall'])} "
            f"| {bpd} |"
        )
    return lines


def sampler_name(entry: dict[str, Any]) -> str:
    """ "DDIM", or "EDM Heun, 6 steps" where the steps differ from the network evaluations."""
    kind = entry["sampler"].rpartition("-")[0] or entry["sampler"]
    name = SAMPLER_NAMES.get(kind, kind)
    return name + (f", {entry['steps']} steps" if entry.get("steps") and entry["steps"] != entry.get("nfe") else "")


def render_samplers(sources: list[str]) -> list[str]:
    from genbench.registry import families

    lines = ["| family | sampler | NFE | FID |", "|---|---|---|---|"]
    for source in sources:
        family = Path(source).stem.removeprefix("sampling_")
        title = families()[family].title if family in families() else family
        entries = [e for e in load_json(source) if (e.get("metrics") or {}).get("eval/fid") is not None]
        for nfe in sorted({e["nfe"] for e in entries}):
            group = [e for e in entries if e["nfe"] == nfe]
            names, fids = [], []
            for e in group:
                own = bool(e.get("noise"))  # the model's own sampler is the one measured at more seeds
                fid = number(e["metrics"]["eval/fid"], 1)
                names.append(f"**{sampler_name(e)}**" if own else sampler_name(e))
                fids.append((f"**{fid}**" if own else fid) + (" (recommended)" if e.get("recommended") else ""))
            lines.append(f"| {title} | {' / '.join(names)} | {nfe} | {' / '.join(fids)} |")
    return lines


def render_results_index(sources: list[str]) -> list[str]:
    folders = sorted(p.parent for p in (REPO / "docs" / "results").glob("*/environment.json"))
    if not folders:
        return ["No GPU results committed yet: `scripts/gpu_check.sh --showdown` makes the folder."]
    lines = ["| results | device | torch | CUDA | files |", "|---|---|---|---|---|"]
    for folder in folders:
        env = json.loads((folder / "environment.json").read_text())
        files = ", ".join(sorted(p.name for p in folder.iterdir() if p.is_file()))
        rel = folder.relative_to(REPO).as_posix()
        lines.append(
            f"| [{folder.name}]({rel}/) | {env.get('device')} | {env.get('torch')} | {env.get('torch_cuda') or '–'} "
            f"| {files} |"
        )
    return lines


def render_verdict(sources: list[str]) -> list[str]:
    """The report's verdict of a committed leaderboard.json, by the report's own function."""
    from genbench.report.verdict import verdict

    (source,) = sources
    return [f"- {sentence}" for sentence in verdict(load_json(source), None)]


def _script(name: str) -> Any:
    """A module of scripts/ (not a package), loaded by its path: its own formatting is reused."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"_doc_numbers_{name}", REPO / "scripts" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def render_perf_precision(sources: list[str]) -> list[str]:
    """scripts/perf_precision.py's own markdown of its precision.json (machine line and table)."""
    (source,) = sources
    return _script("perf_precision").markdown(load_json(source)).rstrip("\n").splitlines()


def lookup(data: Any, path: str) -> Any:
    """The value at a dotted ``path`` (see the module docstring: names, list indices, ``[field=value]``)."""
    value = data
    for part in path.split("."):
        if part.startswith("[") and part.endswith("]") and "=" in part:
            wanted = [c.partition("=")[::2] for c in part[1:-1].split(",")]
            if not isinstance(value, list):
                raise DocNumbersError(f"key {path}: {part} selects from a list, found {type(value).__name__}")
            found = [
                item
                for item in value
                if isinstance(item, dict) and all(str(item.get(field)) == want for field, want in wanted)
            ]
            if len(found) != 1:
                raise DocNumbersError(f"key {path}: {len(found)} items match {part}, expected exactly one")
            value = found[0]
        elif isinstance(value, list) and part.lstrip("-").isdigit():
            if not -len(value) <= int(part) < len(value):
                raise DocNumbersError(f"key {path}: index {part} is outside a list of {len(value)}")
            value = value[int(part)]
        elif isinstance(value, dict) and part in value:
            value = value[part]
        else:
            raise DocNumbersError(f"key {path}: no '{part}' there; fix the marker's key=")
    return value


def render_value(sources: list[str], key: str | None = None, format: str = "{}", scale: str | None = None) -> list[str]:
    """One number (or string) of a JSON file, formatted: the inline renderer."""
    (source,) = sources
    if key is None:
        raise DocNumbersError(f"value source={source} needs key=<path>")
    value = lookup(load_json(source), key)
    if scale is not None:
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise DocNumbersError(f"key {key}: scale= needs a number, found {value!r}")
        value = value * float(scale)
    text = format.format(value)
    if isinstance(value, int | float) and value < 0:
        text = text.replace("-", "−")  # a real minus sign, as in the tables
    return [text]


RENDERERS: dict[str, Callable[..., list[str]]] = {
    "leaderboard": render_leaderboard,
    "conditional": render_conditional,
    "guidance": render_guidance,
    "precision": render_precision,
    "tuning": render_tuning,
    "samplers": render_samplers,
    "results-index": render_results_index,
    "verdict": render_verdict,
    "perf-precision": render_perf_precision,
    "value": render_value,
}
#: renderers that take ``name=value`` options besides their sources
OPTIONS = {"value": ("key", "format", "scale"), "precision": ("labels",)}


# ------------------------------------------------------------------------------------------------
def render_block(spec: str, inline: bool = False) -> str:
    """The body a marker's spec asks for: ``<renderer> source=<path> ... [option=value ...]``;
    whole lines for a block, the bare text (one line) for an inline marker."""
    name, *args = spec.split()
    if name not in RENDERERS:
        raise DocNumbersError(f"unknown doc-numbers renderer '{name}': use one of {', '.join(RENDERERS)}")
    sources = [a.removeprefix("source=") for a in args if a.startswith("source=")]
    options = dict(a.split("=", 1) for a in args if not a.startswith("source=") and "=" in a)
    unknown = sorted(set(options) - set(OPTIONS.get(name, ()))) + [a for a in args if "=" not in a]
    if unknown:
        allowed = ", ".join(f"{o}=" for o in OPTIONS.get(name, ())) or "none"
        raise DocNumbersError(f"doc-numbers {name}: unknown option(s) {', '.join(unknown)} (options: {allowed})")
    lines = RENDERERS[name](sources, **options)
    if inline:
        if len(lines) != 1:
            raise DocNumbersError(f"doc-numbers {name} renders {len(lines)} lines: put a line break after its marker")
        return lines[0]
    return "\n".join(lines) + "\n"


def process(text: str) -> tuple[str, list[str]]:
    """(the text with every block rendered, the specs of the blocks that changed)."""
    changed: list[str] = []

    def sub(m: re.Match[str]) -> str:
        body = render_block(m["spec"], inline=not m["newline"])
        if body != m["body"]:
            changed.append(m["spec"])
        return m["open"] + body + m["close"]

    return BLOCK.sub(sub, text), changed


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="change nothing; exit 1 when a block differs from its source")
    ap.add_argument("files", nargs="*", help=f"files to process (default: {', '.join(DOCS)})")
    args = ap.parse_args(argv)
    stale = []
    for name in args.files or DOCS:
        path = Path(name) if Path(name).is_absolute() else REPO / name
        text = path.read_text()
        try:
            new, changed = process(text)
        except DocNumbersError as e:
            print(f"{name}: {e}", file=sys.stderr)
            return 2
        for spec in changed:
            stale.append(f"{name}: <!-- doc-numbers: {spec} --> differs from its source")
        if changed and not args.check:
            path.write_text(new)
    if stale:
        print("\n".join(stale), file=sys.stderr if args.check else sys.stdout)
        if args.check:
            print("run `python scripts/doc_numbers.py` to render them from their sources", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
