"""One row per family: metrics as mean ± std over seeds, cost figures, and the real-vs-real floor."""

from __future__ import annotations

import csv
import json
import math
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from genbench.report.collect import RunResult

#: (key in eval results, column title, lower is better)
METRICS = [
    ("fid", "FID", True),
    ("kid_mean", "KID", True),
    ("is_mean", "IS", False),
    ("precision", "precision", False),
    ("recall", "recall", False),
]
FAMILY_ORDER = {"gan": 0, "vae": 1, "ddpm": 2}


def mean_std(values: list[float]) -> tuple[float | None, float | None]:
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.pstdev(values) if len(values) > 1 else 0.0)


def _eval_value(run: RunResult, key: str) -> float | None:
    value = run.final.get(key, run.final.get(f"eval/{key}"))
    return float(value) if value is not None else None


def build_leaderboard(runs: list[RunResult], floor: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    by_family: dict[str, list[RunResult]] = defaultdict(list)
    for run in runs:
        by_family[run.family].append(run)
    rows = []
    for family in sorted(by_family, key=lambda f: (FAMILY_ORDER.get(f, 9), f)):
        group = by_family[family]
        ok = [r for r in group if r.status == "ok"]
        row: dict[str, Any] = {
            "family": family,
            "status": "ok" if len(ok) == len(group) else ("failed" if not ok else "partial"),
            "seeds": sorted(r.seed for r in ok if r.seed is not None),
            "errors": [f"seed {r.seed}: {r.error}" for r in group if r.status != "ok"],
        }
        for key, _, _ in METRICS:
            row[key], row[f"{key}_std"] = mean_std([_eval_value(r, key) for r in ok])
        row["num_samples"] = next((r.final.get("num_samples") for r in ok if r.final.get("num_samples")), None)
        row["extractor"] = next((r.final.get("extractor") for r in ok if r.final.get("extractor")), None)
        row["num_parameters"] = next((r.train.get("num_parameters") for r in ok if r.train.get("num_parameters")), None)
        row["train_images_per_second"], _ = mean_std([r.budget.get("train_images_per_second") for r in ok])
        row["train_seconds"], _ = mean_std([r.budget.get("train_seconds") for r in ok])
        row["images_seen"], _ = mean_std([r.budget.get("images_seen") for r in ok])
        sampling: dict[str, list[float]] = defaultdict(list)
        for r in ok:
            for s in r.sampling:
                sampling[s["sampler"]].append(s["images_per_second"])
        row["sampling_images_per_second"] = {k: mean_std(v)[0] for k, v in sampling.items()}
        rows.append(row)
    if floor:
        row = {"family": "real vs real (floor)", "status": "reference", "seeds": [], "errors": []}
        for key, _, _ in METRICS:
            row[key], row[f"{key}_std"] = floor.get(key), None
        row["num_samples"], row["extractor"] = floor.get("num_samples"), floor.get("extractor")
        rows.append(row)
    return rows


def _fmt(value: Any, std: Any = None, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        text = f"{value:.{digits}g}" if abs(value) < 1000 else f"{value:,.0f}"
        if std:
            text += f" ± {std:.2g}"
        return text
    return f"{value:,}" if isinstance(value, int) else str(value)


def markdown_table(rows: list[dict[str, Any]]) -> str:
    samplers = sorted({k for r in rows for k in (r.get("sampling_images_per_second") or {})})
    head = [
        "family",
        *[title + (" ↓" if low else " ↑") for _, title, low in METRICS],
        "params",
        "train img/s",
        "train s",
        "images seen",
        *[f"sample img/s ({s})" for s in samplers],
        "status",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [
            r["family"],
            *[_fmt(r.get(k), r.get(f"{k}_std")) for k, _, _ in METRICS],
            _fmt(r.get("num_parameters")),
            _fmt(r.get("train_images_per_second")),
            _fmt(r.get("train_seconds")),
            _fmt(r.get("images_seen")),
            *[_fmt((r.get("sampling_images_per_second") or {}).get(s)) for s in samplers],
            r["status"] + (f" ({'; '.join(r['errors'])})" if r.get("errors") else ""),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_leaderboard(rows: list[dict[str, Any]], out_dir: Path) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / "leaderboard.json", "csv": out_dir / "leaderboard.csv", "md": out_dir / "leaderboard.md"}
    paths["json"].write_text(json.dumps(rows, indent=2, default=str))
    paths["md"].write_text(markdown_table(rows))
    flat = []
    for r in rows:
        flat_row = {k: v for k, v in r.items() if not isinstance(v, dict | list)}
        for sampler, ips in (r.get("sampling_images_per_second") or {}).items():
            flat_row[f"sampling_images_per_second[{sampler}]"] = ips
        flat_row["seeds"] = " ".join(map(str, r.get("seeds", [])))
        flat_row["errors"] = " | ".join(r.get("errors", []))
        flat.append(flat_row)
    fields = list(dict.fromkeys(k for row in flat for k in row))
    with open(paths["csv"], "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(flat)
    return paths
