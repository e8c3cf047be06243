"""Measure what evaluation costs on this machine, and the real-vs-real FID floor.

.venv/bin/python scripts/perf_eval.py                       # Fashion-MNIST, in-domain extractor
.venv/bin/python scripts/perf_eval.py --only-eval           # just cold vs cached evaluation
.venv/bin/python scripts/perf_eval.py --data synthetic --quick

Reports: feature-extraction images/s (the extractor alone, and through torch-fidelity), seconds
per evaluation cold (an empty cache: real and training features, FID statistics, k-NN radii,
class histogram and held-out nearest-neighbour distances computed) and cached (all of it read
back), interleaved over ``--rounds`` rounds with the load average, for the full default metric set
(FID/KID/IS/precision-recall + coverage + memorisation) and for the torch-fidelity metrics alone; sampling images/s per family (GAN, VAE,
DDPM ancestral and DDIM at several step counts; untrained networks of the configured size -- the
cost does not depend on the weights), and FID/KID/precision/recall between two disjoint halves of
the real test split (the floor a perfect model would reach at that sample count).
Writes everything to outputs/perf/perf_eval.json as well.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

from genbench import CONFIG_DIR, PROJECT_ROOT
from genbench.config import build
from genbench.diffusion import AncestralSampler, DDIMSampler
from genbench.metrics import Evaluator, InDomainExtractor, sample_uint8


def compose_train(*overrides: str):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name="train", overrides=list(overrides))


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="fashion_mnist")
    ap.add_argument("--num-generated", type=int, default=2000, help="generated-set size for the eval timings")
    ap.add_argument("--gan-vae-images", type=int, default=1000)
    ap.add_argument("--ddim-images", type=int, default=32)
    ap.add_argument("--ddim-steps", type=int, nargs="+", default=[10, 25, 50])
    ap.add_argument("--ancestral-images", type=int, default=4, help="1000 network calls per batch: keep it tiny")
    ap.add_argument("--skip-ancestral", action="store_true")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved cold/cached evaluation rounds")
    ap.add_argument("--only-eval", action="store_true", help="only the cold vs cached evaluation timings")
    ap.add_argument("--quick", action="store_true", help="smaller numbers everywhere (a smoke run)")
    ap.add_argument("--out", default=str(PROJECT_ROOT / "outputs" / "perf" / "perf_eval.json"))
    args = ap.parse_args()
    if args.quick:
        args.num_generated, args.gan_vae_images, args.ddim_images, args.ddim_steps = 256, 256, 8, [5, 10]
        args.skip_ancestral = True

    cfg = compose_train(f"data={args.data}")
    cache_dir = Path(cfg.paths.cache_dir)
    results: dict = {
        "machine": {
            "cpu_threads": torch.get_num_threads(),
            "platform": platform.platform(),
            "torch": torch.__version__,
        },
        "data": args.data,
    }
    datamodule = build(cfg.data, "data")
    datamodule.setup()
    mcfg = {"extractor": "in-domain", "kid_subsets": 100}
    (evaluator, t_extractor) = timed(lambda: Evaluator.for_datamodule(datamodule, mcfg, cache_dir=cache_dir))
    results["extractor"] = {**evaluator.spec.describe(), "resolve_or_train_seconds": round(t_extractor, 2)}
    real = datamodule.real_images("test")
    print(f"extractor {evaluator.spec.label} (test accuracy {evaluator.spec.test_accuracy})")

    # --- feature extraction -------------------------------------------------------------------
    ext = InDomainExtractor("genbench-in-domain", ["features", "logits"], str(evaluator.spec.weights_path))
    with torch.no_grad():
        ext(real[:256])
        _, t = timed(lambda: [ext(real[i : i + 256]) for i in range(0, len(real), 256)])
    results["feature_extraction_images_per_s"] = round(len(real) / t, 1)
    print(f"feature extraction: {len(real) / t:,.0f} images/s ({len(real)} images, batch 256)")

    # --- evaluation cold and cached, interleaved ---------------------------------------------------
    generated = datamodule.real_images("train")[-args.num_generated :]  # any uint8 set of that size
    train = datamodule.real_images("train")[:10_000]  # memorisation's default training subset
    evaluation: dict = {"num_generated": len(generated), "num_real": len(real), "num_train": len(train)}
    variants = {
        "all_metrics": ({**mcfg}, train),  # FID/KID/IS/PRC + coverage + memorisation (the default)
        "fidelity_only": ({**mcfg, "coverage": {"enabled": False}, "memorisation": {"enabled": False}}, None),
    }
    times: dict[str, dict[str, list[float]]] = {v: {"cold": [], "cached": []} for v in variants}
    loads = []
    for r in range(args.rounds):
        for name, (vcfg, vtrain) in variants.items():
            with tempfile.TemporaryDirectory() as tmp:
                ev = Evaluator(
                    real,
                    evaluator.spec,
                    vcfg,
                    cache_dir=tmp,
                    dataset=datamodule.name,
                    split="test",
                    train_images=vtrain,
                )
                ev.real_key, ev.train_key  # noqa: B018  (hash the real images outside the timings)
                cold, t_cold = timed(lambda ev=ev: ev.evaluate(generated))
                cached, t_cached = timed(lambda ev=ev: ev.evaluate(generated))
            same = {k: v for k, v in cold.items() if k != "eval_seconds"} == {
                k: v for k, v in cached.items() if k != "eval_seconds"
            }
            times[name]["cold"].append(t_cold)
            times[name]["cached"].append(t_cached)
            loads.append(os.getloadavg()[0])
            print(f"round {r + 1} {name}: cold {t_cold:.2f} s, cached {t_cached:.2f} s, identical results: {same}")
    for name, t in times.items():
        cold_s, cached_s = statistics.median(t["cold"]), statistics.median(t["cached"])
        evaluation[name] = {
            "cold_seconds": [round(x, 3) for x in t["cold"]],
            "cached_seconds": [round(x, 3) for x in t["cached"]],
            "median_ratio": round(cold_s / cached_s, 2),
        }
        print(
            f"evaluation {name}, n={len(generated)} vs {len(real)} real: cold {cold_s:.2f} s, cached {cached_s:.2f} s "
            f"(medians of {args.rounds}): {cold_s / cached_s:.1f}x"
        )
    evaluation["load_avg_1min"] = [round(x, 2) for x in loads]
    evaluation["cpu_count"] = os.cpu_count()
    print(f"1-minute load average during the rounds: {min(loads):.1f}-{max(loads):.1f} on {os.cpu_count()} cores")
    results["evaluation"] = evaluation
    if args.only_eval:
        write(results, args.out)
        return

    # --- real-vs-real floor --------------------------------------------------------------------
    half = len(real) // 2
    floor_ev = Evaluator(real[half:], evaluator.spec, mcfg, cache_dir=None, dataset=datamodule.name, split="test")
    floor = floor_ev.evaluate(real[:half])
    keys = ("fid", "kid_mean", "kid_std", "is_mean", "precision", "recall")
    results["real_vs_real_floor"] = {"n": half, **{k: floor[k] for k in keys}}
    print(f"real-vs-real floor ({half} vs {len(real) - half}): " + ", ".join(f"{k}={floor[k]:.4g}" for k in keys))

    # --- sampling speed per family ---------------------------------------------------------------
    sampling = {}
    g = torch.Generator().manual_seed(0)
    for family in ("gan", "vae"):
        model = build(compose_train(f"data={args.data}", f"model={family}").model, family).eval()
        sample_uint8(model, 16, g)
        _, t = timed(lambda m=model: sample_uint8(m, args.gan_vae_images, g))
        sampling[family] = round(args.gan_vae_images / t, 1)
        print(f"sampling {family}: {args.gan_vae_images / t:,.0f} images/s")
    ddpm = build(compose_train(f"data={args.data}", "model=ddpm").model, "ddpm").eval()
    for steps in args.ddim_steps:
        _, t = timed(lambda s=steps: sample_uint8(ddpm, args.ddim_images, g, sampler=DDIMSampler(steps=s)))
        sampling[f"ddpm_ddim{steps}"] = round(args.ddim_images / t, 3)
        print(f"sampling ddpm DDIM {steps} steps: {args.ddim_images / t:.3f} images/s (batch {args.ddim_images})")
    if not args.skip_ancestral:
        n = args.ancestral_images
        _, t = timed(lambda: sample_uint8(ddpm, n, g, sampler=AncestralSampler()))
        sampling[f"ddpm_ancestral{ddpm.schedule.timesteps}"] = round(n / t, 4)
        print(f"sampling ddpm ancestral {ddpm.schedule.timesteps} steps: {n / t:.4f} images/s (batch {n})")
    results["sampling_images_per_s"] = sampling

    write(results, args.out)


def write(results: dict, path: str) -> None:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"-> {out}")


if __name__ == "__main__":
    main()
