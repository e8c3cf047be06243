"""``genbench-compare``: the benchmark's leaderboard and plots from any finished runs.

genbench-compare outputs/train/multiruns/2026-11-26_10-00-00
genbench-compare outputs/train/runs/a outputs/train/runs/b --out outputs/compare/mine --floor
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from genbench.errors import user_errors
from genbench.report.build import write_report
from genbench.report.collect import find_runs
from genbench.report.floor import real_floor


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="genbench-compare", description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="run directories and/or multirun directories")
    parser.add_argument("--out", type=Path, default=None, help="report directory (default outputs/compare/<time>)")
    parser.add_argument("--title", default="genbench comparison")
    parser.add_argument("--floor", action="store_true", help="also compute the real-vs-real reference row")
    args = parser.parse_args(argv)
    with user_errors():
        runs = find_runs(args.runs)
        # like paths.log_dir of the Hydra entry points: under $GENBENCH_ROOT, else the current directory
        root = Path(os.environ.get("GENBENCH_ROOT") or os.getcwd())
        out = args.out or root / "outputs" / "compare" / time.strftime("%Y-%m-%d_%H-%M-%S")
        floor, real_grid = real_floor(runs, out) if args.floor else (None, None)
        report = write_report(
            runs,
            out,
            title=args.title,
            floor=floor,
            real_grid=real_grid,
            context={"config": {"runs": [str(r.run_dir) for r in runs]}},
        )
        print(report["paths"]["md"].read_text())
        print(f"Report: {report['paths']['html']}")


if __name__ == "__main__":
    main()
