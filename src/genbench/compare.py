"""``genbench-compare``: the benchmark's leaderboard and plots from any finished runs.

genbench-compare outputs/train/multiruns/2026-11-26_10-00-00
genbench-compare outputs/train/runs/a outputs/train/runs/b --out outputs/compare/mine --floor
genbench-compare outputs/train/multiruns/lr_sweep --group-by family

Runs of a family that were started with different settings (a sweep over the learning rate, say)
get a row each, named by the overrides that differ (``<family> (model.optimizer.lr=0.001)``); only
runs that differ in their seed alone are averaged into one row's mean and interval.
``--group-by family`` pools every run of a family into one row instead.

A run's results are read from both evaluation paths (the training callback's ``eval/`` and
``genbench-eval``'s ``checkpoints/metrics.json``), the newest of its final model winning; a run
lacking a metric is listed below the table with the ``genbench-eval`` command that computes it.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from genbench.errors import user_errors
from genbench.report.build import hints_text, write_report
from genbench.report.collect import failed_runs_line, find_runs
from genbench.report.floor import floor_protocol, real_floor
from genbench.report.leaderboard import GROUP_BY
from genbench.summary import print_summary


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="genbench-compare", description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="run directories and/or multirun directories")
    parser.add_argument("--out", type=Path, default=None, help="report directory (default outputs/compare/<time>)")
    parser.add_argument("--title", default="genbench comparison")
    parser.add_argument("--floor", action="store_true", help="also compute the real-vs-real reference row")
    parser.add_argument(
        "--group-by",
        choices=GROUP_BY,
        default="config",
        help="config (default): a row per family and configuration, the overrides that differ between "
        "a family's runs (seed excluded) naming it, its seeds averaged; family: one row per family",
    )
    args = parser.parse_args(argv)
    with user_errors():
        runs = find_runs(args.runs)
        # like paths.log_dir of the Hydra entry points: under $GENBENCH_ROOT, else the current directory
        root = Path(os.environ.get("GENBENCH_ROOT") or os.getcwd())
        out = args.out or root / "outputs" / "compare" / time.strftime("%Y-%m-%d_%H-%M-%S")
        floor, real_grid = real_floor(runs, out) if args.floor else (None, None)
        no_floor = floor_protocol(runs)[1] if args.floor and floor is None else None
        report = write_report(
            runs,
            out,
            title=args.title,
            floor=floor,
            real_grid=real_grid,
            context={"config": {"runs": [str(r.run_dir) for r in runs], "group_by": args.group_by}},
            group_by=args.group_by,
        )
        print(report["paths"]["md"].read_text())
        print(hints_text(report["hints"]), end="")
        if no_floor:
            print(f"No real-vs-real floor: {no_floor}.")
        print_summary(
            "genbench-compare: done",
            {
                "runs": len(runs),
                "report (html)": report["paths"]["html"],
                "report (markdown)": report["paths"]["md"],
            },
        )
    if failed := failed_runs_line(runs):  # the report is written; the exit status says some runs failed
        print(f"genbench-compare: {failed}", file=sys.stderr, flush=True)
        raise SystemExit(1)


if __name__ == "__main__":
    main()
