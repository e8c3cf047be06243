"""FID against network evaluations for every sampler a checkpoint accepts, over several sampling seeds.

    python scripts/sampler_study.py outputs/.../checkpoints/last.ckpt --num-samples 1000 --seeds 0 1 2
    python scripts/sampler_study.py CKPT --samplers ddim:steps=10 dpmpp_2m:steps=10,spacing=trailing

Each sampler draws ``--num-samples`` images per seed through ``genbench.api.evaluate`` (the same
Evaluator, extractor and test split as genbench-eval); the table gives FID mean ± std over the seeds
(the spread is the sampling noise that decides whether two samplers differ), NFE and images/s.
A sampler of the wrong kind for the model (a flow solver for a diffusion model) is skipped.
Writes ``--out`` (JSON, default ``outputs/study/samplers-<checkpoint dir>.json``) and prints a
markdown table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

from genbench import GenbenchError, api

#: name:options of every built-in sampler at the step counts worth comparing (NFE 5 to 50)
DEFAULT_SAMPLERS = (
    "ddim:steps=5",
    "ddim:steps=10",
    "ddim:steps=20",
    "ddim:steps=50",
    "dpmpp_2m:steps=5",
    "dpmpp_2m:steps=10",
    "dpmpp_2m:steps=10,spacing=linspace",
    "dpmpp_2m:steps=10,spacing=trailing",
    "dpmpp_2m:steps=10,clip_x0=false",
    "dpmpp_2m:steps=20",
    "edm_heun:steps=3",
    "edm_heun:steps=5",
    "edm_heun:steps=6",
    "edm_heun:steps=10",
    "edm_heun:steps=5,clip_x0=false",
    "euler:steps=5",
    "euler:steps=10",
    "euler:steps=20",
    "heun:steps=5",
    "heun:steps=10",
)


def _value(text: str) -> Any:
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


def parse(spec: str) -> tuple[str, dict[str, Any]]:
    """'dpmpp_2m:steps=10,spacing=trailing' -> ('dpmpp_2m', {'steps': 10, 'spacing': 'trailing'})."""
    name, _, options = spec.partition(":")
    kwargs = dict(item.split("=", 1) for item in options.split(",") if item)
    return name, {k: _value(v) for k, v in kwargs.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint")
    p.add_argument("--samplers", nargs="*", default=list(DEFAULT_SAMPLERS))
    p.add_argument("--num-samples", type=int, default=1000)
    p.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2])
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    model = api.load(args.checkpoint)
    rows = []
    for spec in args.samplers:
        name, kwargs = parse(spec)
        sampler = api.build_sampler(name, **kwargs)
        fids, seconds = [], 0.0
        try:
            for seed in args.seeds:
                start = time.perf_counter()
                result = api.evaluate(model, num_samples=args.num_samples, seed=seed, sampler=sampler)
                seconds += time.perf_counter() - start
                fids.append(float(result["fid"]))
        except GenbenchError as e:
            print(f"skip {spec}: {e}")
            continue
        row = {
            "sampler": spec,
            "label": sampler.label,
            "nfe": sampler.nfe,
            "fid_mean": statistics.fmean(fids),
            "fid_std": statistics.stdev(fids) if len(fids) > 1 else 0.0,
            "fids": fids,
            "seconds_per_evaluation": seconds / len(args.seeds),
        }
        rows.append(row)
        print(f"{spec:40s} NFE {row['nfe']:3d}  FID {row['fid_mean']:.1f} ± {row['fid_std']:.1f}", flush=True)
    out = args.out or Path("outputs/study") / f"samplers-{Path(args.checkpoint).resolve().parent.parent.name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"checkpoint": str(args.checkpoint), "num_samples": args.num_samples, "seeds": args.seeds}
    out.write_text(json.dumps({**meta, "rows": rows}, indent=2))
    print(f"\n| sampler | NFE | FID (mean ± std over {len(args.seeds)} seeds, n = {args.num_samples}) |")
    print("|---|---|---|")
    for r in sorted(rows, key=lambda r: (r["nfe"], r["fid_mean"])):
        print(f"| {r['sampler']} | {r['nfe']} | {r['fid_mean']:.1f} ± {r['fid_std']:.1f} |")
    print(f"\nwritten {out}")


if __name__ == "__main__":
    main()
