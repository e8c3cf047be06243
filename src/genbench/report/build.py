"""Everything a report holds, written from run records: leaderboard (md/csv/json), plots, sample
grids side by side with real images, report.html, and optionally the same in W&B.

The report states its protocol before any number (extractor and its accuracy, sample count, real
split, seeds, samplers, budget, machine), because a FID means nothing without them; every number
the runs lack is shown as "–" with the command that computes it, and every figure that cannot be
drawn says what it needs.
"""

from __future__ import annotations

import json
import logging
import platform
import re
import subprocess
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch

from genbench import __version__, rundir
from genbench.metrics import NOISE_METRIC
from genbench.metrics.catalogue import INTRA_FID
from genbench.metrics.conditional import GUIDANCE
from genbench.report.collect import RunResult
from genbench.report.figures import readable_factor, side_by_side, upscale
from genbench.report.html import data_uri, headline_keys, leaderboard_tables, write_html
from genbench.report.leaderboard import (
    METRIC_INFO,
    build_leaderboard,
    format_value,
    group_runs,
    named_runs,
    write_leaderboard,
)
from genbench.report.plots import (
    Styles,
    guidance_curves,
    metrics_during_training,
    quality_vs_cost,
    quality_vs_steps,
    row_styles,
)
from genbench.report.presets import menu_text, preset_text
from genbench.report.stability import per_seed_curves
from genbench.report.verdict import verdict

log = logging.getLogger("genbench.report")

LEGEND = (
    "Mean ± standard deviation over seeds (with several seeds, the 95% interval below); "
    "↓ lower is better, ↑ higher is better. Every metric uses the protocol above."
)


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


# --- what is missing, and the command that computes it -------------------------------------------


def eval_command(run: RunResult) -> str:
    """The ``genbench-eval`` command that evaluates the run's final model (its last.ckpt, else its
    newest checkpoint)."""
    ckpt = run.last_ckpt
    if not ckpt.is_file():
        found = sorted(rundir.RunLayout(run.run_dir).checkpoints.glob("*.ckpt"), key=lambda p: p.stat().st_mtime)
        ckpt = found[-1] if found else ckpt
    return f"genbench-eval ckpt_path={ckpt}"


def missing_metric_hints(
    runs: list[RunResult], keys: list[str], rows: list[dict[str, Any]] | None = None
) -> list[dict[str, str]]:
    """One hint per finished run whose final result lacks any of ``keys`` (the table's metric
    columns): which numbers, and the command that computes them. A bits/dim the model states it
    cannot have (an implicit model's ``likelihood`` "none ...", in its result or its leaderboard row) is
    not missing."""
    stated = {r.get("family"): str(r.get("likelihood") or "") for r in rows or []}
    hints = []
    for run in runs:
        if run.status != "ok":
            continue
        none = f"{run.final.get('likelihood') or ''}{stated.get(run.family, '')}".startswith("none")
        missing = [k for k in keys if run.final.get(k) is None and not (none and k.startswith("bpd"))]
        if not missing:
            continue
        names = ", ".join(METRIC_INFO[k].title if k in METRIC_INFO else k for k in missing)
        what = "never evaluated" if not run.final else f"no {names}"
        hints.append(
            {
                "text": f"{run.family} (seed {run.seed}, {run.run_dir}): {what}; compute with",
                "command": eval_command(run),
            }
        )
    return hints


def _why_no_training_curve(runs: list[RunResult], x_key: str) -> str:
    ok = [r for r in runs if r.status == "ok"]
    if not any(r.history for r in ok):
        return (
            "no run was evaluated during training (no eval/metrics.jsonl). Train with the evaluation callback, "
            "e.g. genbench-train model=<family> callbacks=[default,eval], or run genbench-benchmark."
        )
    return (
        f"the evaluations carry no '{x_key}': it comes from the TrainingBudget callback, which the benchmark's "
        "runs have. Run genbench-benchmark, or train with experiment=benchmark/cpu model=<family> section=cpu."
    )


def _why_no_sampler_plot(runs: list[RunResult], several: bool) -> str:
    ok = [r for r in runs if r.status == "ok"]
    if not any(r.sampling for r in ok):
        need = "no run has sampling.json"
    elif several:
        need = "no family has quality measured for several samplers in sampling.json"
    else:
        need = "sampling.json holds timings only (no quality per sampler)"
    return (
        f"{need}. The SamplingBenchmark callback of genbench-benchmark's runs writes it: run genbench-benchmark "
        "(a family with samplers is timed and scored with several), or train with experiment=benchmark/cpu "
        "model=<family> section=cpu."
    )


# --- the protocol and the model summaries --------------------------------------------------------


def _join(values: list[Any]) -> str:
    return ", ".join(str(v) for v in dict.fromkeys(values) if v not in (None, "")) or "–"


def _per_family(runs: list[RunResult], text) -> str:
    """'<family>: ...; <family>: ...' of ``text(run)`` over the finished runs (one entry where all agree)."""
    by_family: dict[str, list[str]] = defaultdict(list)
    for run in runs:
        if run.status == "ok":
            by_family[run.family].append(text(run))
    parts = {f: _join(v) for f, v in by_family.items()}
    if len(set(parts.values())) == 1 and len(parts) > 1:
        return next(iter(parts.values())) + " (all families)"
    return "; ".join(f"{f}: {v}" for f, v in parts.items()) or "–"


def _sampler_text(run: RunResult) -> str:
    """The sampler the run's metrics describe, and, where SamplingBenchmark measured the sampling
    noise (``noise_seeds``), the fastest sampler within it of the best."""
    text = _used_sampler_text(run)
    noise = next((s["noise"] for s in run.sampling if s.get("noise")), None)
    chosen = next((s for s in run.sampling if s.get("recommended")), None)
    if noise and chosen:
        std = (noise.get("std") or {}).get(NOISE_METRIC)
        text += (
            f"; fastest within the FID's sampling noise of the best: {chosen['sampler']} "
            f"(FID std over {len(noise['seeds'])} sampling seeds {format_value('fid', std)})"
        )
    return text


def _sampler_name(target: str) -> str:
    """The short name a sampler class gives itself (``name``: ddim, dpmpp_2m, euler...), or, for a
    class that cannot be imported here, its class name without the Sampler/Solver suffix."""
    import importlib

    module, _, attr = target.rpartition(".")
    try:
        name = getattr(getattr(importlib.import_module(module), attr), "name", None)
    except (ImportError, AttributeError, ValueError):  # a plug-in's class not installed where the report is built
        name = None
    return str(name) if name else target.rsplit(".", 1)[-1].removesuffix("Sampler").removesuffix("Solver").lower()


def _used_sampler_text(run: RunResult) -> str:
    used = run.final.get("sampler")
    if isinstance(used, dict):
        extra = ", ".join(f"{k} {v}" for k, v in used.items() if k not in ("name", "steps"))
        return f"{used.get('name')} {used.get('steps')} steps" + (f" ({extra})" if extra else "")
    if isinstance(used, str) and used:
        return used
    ev_sampler = ((run.config.get("callbacks") or {}).get("evaluation") or {}).get("sampler")
    model_sampler = (run.config.get("model") or {}).get("sampler")
    # the evaluation's sampler applies only to a family that has samplers (the others ignore it)
    for cfg in (ev_sampler, model_sampler) if model_sampler else ():
        if isinstance(cfg, dict) and cfg.get("_target_"):
            name = _sampler_name(str(cfg["_target_"]))
            return f"{name} {cfg['steps']} steps" if cfg.get("steps") else name
    if run.sampling and run.sampling[0].get("sampler") not in (None, "default"):
        return str(run.sampling[0]["sampler"])
    return "one network pass (no sampler)"


def _budget_text(run: RunResult) -> str:
    b = run.budget
    if b.get("max_train_seconds"):
        size = f"time: {format_value('train_seconds', b['max_train_seconds'])} s of pure training"
    elif b.get("max_images"):
        size = f"images: {format_value('images_seen', b['max_images'])} training images"
    else:
        trainer = run.config.get("trainer") or {}
        steps = trainer.get("max_steps")
        size = (
            f"trainer: max_steps={steps}" if steps and steps > 0 else f"trainer: max_epochs={trainer.get('max_epochs')}"
        )
    return size


def _load_text(run: RunResult) -> str:
    b = run.budget
    parts = [f"{format_value('images_seen', b['images_seen'])} images seen"] if b.get("images_seen") is not None else []
    if b.get("cpu_seconds") is not None:
        parts.append(f"{format_value('cpu_seconds', b['cpu_seconds'])} CPU s")
    if b.get("load_avg") is not None:
        cores = f" on {b['cpu_count']} cores" if b.get("cpu_count") else ""
        parts.append(f"load {format_value('load_avg', b['load_avg'])}{cores}")
    return ", ".join(parts) or "–"


def protocol(
    runs: list[RunResult], rows: list[dict[str, Any]], context: dict[str, Any], floor: dict[str, Any] | None
) -> list[tuple[str, str]]:
    """The report's protocol as (label, text) lines: what every number below was measured with."""
    finals = [r.final for r in runs if r.status == "ok" and r.final]
    extractors = []
    for f in finals:
        acc = f.get("extractor_test_accuracy")
        acc_text = f" (test accuracy {format_value('precision', acc)})" if isinstance(acc, int | float) else ""
        extractors.append(f"{f.get('extractor')}{acc_text}" if f.get("extractor") else None)
    real = [
        f"{f['real']} ({format_value('num_samples', f['num_real'])} images)" if f.get("num_real") else f.get("real")
        for f in finals
    ]
    lines = [
        ("Extractor", _join(extractors)),
        (
            "Samples per evaluation",
            _join([format_value("num_samples", f.get("num_samples")) for f in finals if f.get("num_samples")]),
        ),
        ("Real split", _join(real)),
        ("Seeds", _per_family(runs, lambda r: r.seed)),
        ("Sampler", _per_family(runs, _sampler_text)),
        ("Results from", _per_family(runs, lambda r: r.describe_source() or "no evaluation")),
    ]
    budget = context.get("budget") or {}
    if budget.get("description"):
        lines.append(
            ("Budget", f"{budget.get('name', '')}: {' '.join(str(budget['description']).split())}".strip(": "))
        )
    lines.append(("Training budget", _per_family(runs, _budget_text)))
    lines.append(("Preset chosen", _per_family(runs, lambda r: preset_text(r.config))))
    lines.append(("Menu options", _per_family(runs, lambda r: menu_text(r.family, r.config))))
    lines.append(("Training spent", _per_family(runs, _load_text)))
    if floor:
        lines.append(
            (
                "Floor",
                f"real training images vs the real split, {format_value('num_samples', floor.get('num_samples'))} images, same extractor",
            )
        )
    env = context.get("environment") or {}
    commit = env.get("git_commit")
    lines.append(
        (
            "Machine",
            f"{env.get('device')}; python {env.get('python')}, torch {env.get('torch')}"
            + (f", CUDA {env['cuda']}" if env.get("cuda") else "")
            + f"; genbench {env.get('genbench')}"
            + (f" @ {commit[:10]}{' (modified)' if env.get('git_dirty') else ''}" if commit else ""),
        )
    )
    if len({f.get("num_samples") for f in finals}) > 1:
        lines.append(
            ("Caution", "the runs were evaluated with different sample counts: FID is comparable only at equal n")
        )
    return lines


def architecture_summary(model_cfg: dict[str, Any]) -> list[str]:
    """The model config in a few lines: each network as ``Name(arg=value, ...)`` and the family's
    scalar settings, without Hydra's plumbing (``_target_``, optimisers' partials)."""
    lines, scalars = [], []
    for key, value in model_cfg.items():
        if key.startswith("_"):
            continue
        if isinstance(value, dict):
            if "optim" in key or "sched" in key or value.get("_partial_"):
                continue
            name = str(value.get("_target_", key)).rsplit(".", 1)[-1]
            args = ", ".join(f"{k}={v}" for k, v in value.items() if not k.startswith("_") and not isinstance(v, dict))
            lines.append(f"{key}: {name}({args})")
        elif value is not None:
            scalars.append(f"{key}={value}")
    if scalars:
        lines.append(", ".join(scalars))
    return lines


def model_summaries(runs: list[RunResult], rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    by_row = {r["family"]: r for r in rows if r.get("kind", "family") == "family"}
    out, seen = [], set()
    for run in runs:
        if run.family in seen or not run.config.get("model"):
            continue
        seen.add(run.family)
        row = by_row.get(run.family, {})
        out.append(
            {
                "family": run.family,
                "parameters": format_value(
                    "num_parameters", row.get("num_parameters") or run.train.get("num_parameters")
                ),
                "likelihood": row.get("likelihood") or run.final.get("likelihood") or "–",
                "architecture": architecture_summary(run.config["model"]),
            }
        )
    return out


# --- grids ---------------------------------------------------------------------------------------


def _cell_px(runs: list[RunResult]) -> int:
    sizes = [(r.config.get("data") or {}).get("image_size") for r in runs]
    return next((int(s) for s in sizes if isinstance(s, int | float) and s), 32)


def readable_grids(runs: list[RunResult], real_grid: Path | None, out_dir: Path) -> list[dict[str, Any]]:
    """Real images, and each family's final samples (first seed), the reconstructions of families with an encoder, the
    interpolations and the closest generated/training pairs where the runs have them: enlarged to
    a readable cell size into ``out_dir/grids/<group>_<kind>.png``. Each entry: group (the family,
    or "real images"), kind, title, path, factor."""
    factor = readable_factor(_cell_px(runs))
    found: list[tuple[str, str, str, Path]] = []  # (group, kind, title, source)
    if real_grid is not None:
        found.append(("real images", "real", "real test images", Path(real_grid)))
    done = set()
    for run in runs:
        if run.status != "ok" or run.family in done:
            continue
        done.add(run.family)
        per_class = run.final.get(INTRA_FID) is not None or bool((run.config.get("model") or {}).get("conditional"))
        candidates = [
            ("samples", "samples (a row per class, class 0 at the top)" if per_class else "samples", run.grid),
            ("recon", "reconstructions (top: real, below: reconstructed)", run.run_dir / rundir.FINAL_RECON),
            ("interp", "interpolations (each row: one path between two latents)", run.run_dir / rundir.FINAL_INTERP),
        ]
        pairs = run.final.get("closest_pairs")
        if pairs:
            path = Path(pairs) if Path(pairs).is_absolute() else run.run_dir / pairs
            candidates.append(("pairs", "closest pairs (top: generated, below: nearest training image)", path))
        found += [(run.family, kind, title, p) for kind, title, p in candidates if p is not None and Path(p).is_file()]
    out = []
    for group, kind, title, path in found:
        # a sweep point's name ("<family> (model.optimizer.lr=0.001)") as a file name without spaces or slashes
        name = "real" if kind == "real" else re.sub(r"[^\w.=-]+", "_", group).strip("_") + f"_{kind}"
        enlarged = upscale(path, out_dir / "grids" / f"{name}.png", factor)
        out.append({"group": group, "kind": kind, "title": title, "path": enlarged, "factor": factor})
    return out


# --- the report ----------------------------------------------------------------------------------


def _figures(runs: list[RunResult], out_dir: Path, styles: Styles | None = None) -> list[dict[str, Any]]:
    """The report's figures of ``runs`` named by their leaderboard row (a sweep's points apart:
    :func:`~genbench.report.leaderboard.named_runs`), each row drawn in its ``styles`` entry
    (:func:`~genbench.report.plots.row_styles`; without it every name is drawn as a family)."""
    figures = [
        (
            "Metrics against training time",
            metrics_during_training(runs, out_dir / "metrics_vs_time.png", styles=styles),
            lambda: _why_no_training_curve(runs, "train_seconds"),
        ),
        (
            "Metrics against images seen",
            metrics_during_training(
                runs, out_dir / "metrics_vs_images.png", "images_seen", "training images seen", styles=styles
            ),
            lambda: _why_no_training_curve(runs, "images_seen"),
        ),
        (
            "Quality against network evaluations (NFE)",
            quality_vs_steps(runs, out_dir / "quality_vs_steps.png", styles=styles),
            lambda: _why_no_sampler_plot(runs, several=True),
        ),
        (
            "Quality against sampling cost",
            quality_vs_cost(runs, out_dir / "quality_vs_cost.png", styles=styles),
            lambda: _why_no_sampler_plot(runs, several=False),
        ),
    ]
    if any(r.final.get(GUIDANCE) or r.final.get(INTRA_FID) is not None for r in runs if r.status == "ok"):
        figures.append(
            (
                "Guidance sweep: quality and class accuracy against the guidance scale",
                guidance_curves(runs, out_dir / "guidance_curves.png", styles),
                lambda: (
                    "no conditional run swept guidance: the sweep needs a family with classifier-free guidance "
                    "(model.conditional=true) and metrics.conditional.guidance_scales."
                ),
            )
        )
    figures.append(
        (
            "Training curves per seed",
            per_seed_curves(runs, out_dir / "per_seed_curves.png"),
            lambda: (
                "no finished run has a training loss curve (csv/metrics.csv, the csv logger) or evaluations "
                "during training."
            ),
        )
    )
    return [{"title": t, "path": p, "why": None if p else why()} for t, p, why in figures]


def write_report(
    runs: list[RunResult],
    out_dir: Path,
    title: str = "genbench report",
    floor: dict[str, Any] | None = None,
    real_grid: Path | None = None,
    context: dict[str, Any] | None = None,
    wandb_run: Any = None,
    group_by: str = "config",
) -> dict[str, Any]:
    """Write the leaderboard files, the plots, the enlarged grids and report.html into ``out_dir``.
    Returns rows, paths, figures (title -> path or None) and hints (missing numbers + commands).

    ``group_by``: "config" gives each family's configurations a row of their own (a sweep's
    points), "family" one row per family (see :func:`~genbench.report.leaderboard.group_runs`).
    The verdict, the protocol, the grids, the model summaries and the plots' legends name the same
    rows."""
    out_dir.mkdir(parents=True, exist_ok=True)
    context = {"environment": environment(), **(context or {})}
    rows = build_leaderboard(runs, floor, group_by=group_by)
    named = named_runs(runs, group_by)
    paths = write_leaderboard(rows, out_dir)
    tables = leaderboard_tables(rows)
    hints = missing_metric_hints(named, headline_keys(rows), rows)
    figures = _figures(named, out_dir, row_styles(group_runs(runs, group_by)))
    grids = readable_grids(named, real_grid, out_dir)
    samples = {
        "real" if g["kind"] == "real" else g["group"]: g["path"] for g in grids if g["kind"] in ("real", "samples")
    }
    side = side_by_side(samples, out_dir / "samples_side_by_side.png") if samples else None
    warnings = [f"{r['family']}: {r['load_warning']}" for r in rows if r.get("load_warning")]
    if floor and floor.get("warning"):
        warnings.append(f"floor: {floor['warning']}")
    page = {
        "title": title,
        "generated": time.strftime("%Y-%m-%d %H:%M:%S"),
        "genbench_version": __version__,
        "verdict": verdict(rows, named),
        "warnings": warnings,
        "protocol": protocol(named, rows, context, floor),
        "tables": tables,
        "legend": LEGEND,
        "hints": hints,
        "models": model_summaries(named, rows),
        "grids": [
            {
                "name": group,
                "items": [{"title": g["title"], "uri": data_uri(g["path"])} for g in grids if g["group"] == group],
            }
            for group in dict.fromkeys(g["group"] for g in grids)
        ],
        "grids_note": f"Each image pixel drawn as {grids[0]['factor']}×{grids[0]['factor']} screen pixels "
        "(nearest neighbour: nothing smoothed)."
        if grids
        else "",
        "figures": [{"title": f["title"], "uri": data_uri(f["path"]), "why": f["why"]} for f in figures],
        "environment_json": json.dumps(context.get("environment", {}), indent=2),
        "config_json": json.dumps(context.get("config", {}), indent=2, default=str),
    }
    html_path = write_html(out_dir / "report.html", page)
    figure_paths = {f["title"]: f["path"] for f in figures}
    figure_paths["Samples side by side"] = side
    if wandb_run is not None:
        log_to_wandb(wandb_run, rows, figure_paths)
    log.info("Report written to %s", html_path)
    return {"rows": rows, "paths": {**paths, "html": html_path}, "figures": figure_paths, "hints": hints}


def hints_text(hints: list[dict[str, str]]) -> str:
    """The hints for a terminal, below the markdown table (empty when nothing is missing)."""
    if not hints:
        return ""
    return "Missing numbers (–):\n" + "\n".join(f"  {h['text']}\n    {h['command']}" for h in hints) + "\n"


def log_to_wandb(run: Any, rows: list[dict[str, Any]], figures: dict[str, Path | None]) -> None:
    import wandb

    columns = sorted({k for r in rows for k, v in r.items() if not isinstance(v, dict | list)})
    table = wandb.Table(columns=columns, data=[[r.get(c) for c in columns] for r in rows])
    run.log({"leaderboard": table, **{name: wandb.Image(str(p)) for name, p in figures.items() if p}})
