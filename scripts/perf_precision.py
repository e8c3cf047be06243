#!/usr/bin/env python
"""CPU training speed in fp32 vs bf16-mixed, per family: the numbers behind ``trainer.precision:
auto`` on a CPU (each family's ``FamilySpec.cpu_bf16_speedup``) and docs/performance.md.

    python scripts/perf_precision.py                       # every family, 1 thread and all threads
    python scripts/perf_precision.py --families ddpm --threads 1 --profile

Each measurement is a *window* of training steps of genbench's own LightningModule (built from the
composed ``experiment=benchmark/cpu model=<family> section=cpu`` config, so the networks and batch
sizes of the cpu benchmark) driven by a real ``pytorch_lightning.Trainer`` at ``precision=32-true``
or ``bf16-mixed``: Lightning's precision plugin, the module's ``training_step``, backward, optimiser
step and everything the module hooks into it (the EMA update, channels_last) are inside. Loggers,
checkpoints and progress bars are off: they do not depend on the precision. The images are
synthetic (uniform on the 256 levels of [-1, 1]): a step's cost does not depend on their content.

The two precisions alternate (fp32, bf16, fp32, bf16... for ``--rounds`` rounds, each round on a
freshly built model from the same seed) so that a change of load on a shared machine hits both
sides; the table gives the median per-round ratio bf16 / fp32 of images/s and its spread.
With one thread the ratio is of images per CPU-second of the process (another process holding the
core stretches the wall clock, not the process's CPU time); with several threads it is of wall-clock
images/s (CPU time then sums over threads, including their spin-waits).

``--profile`` runs torch.profiler over one window per precision and prints the top operators by
self CPU time: where a bf16 step spends what fp32 does not.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch

FAMILIES = ("gan", "vae", "ddpm", "flow_matching")
PRECISIONS = ("32-true", "bf16-mixed")
#: timed steps per window: a few seconds each at the cpu benchmark's sizes on one core
DEFAULT_STEPS = {"gan": 6, "vae": 16, "ddpm": 6, "flow_matching": 6}


class Window(pl.Callback):
    """Reads the clocks at the start of step ``start`` and of step ``stop``, then stops the run
    (a GAN batch makes two optimiser steps, so ``max_steps`` would not count batches)."""

    def __init__(self, start: int, stop: int, profiler: Any = None) -> None:
        self.start, self.stop, self.profiler = start, stop, profiler
        self.wall = self.cpu = 0.0

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: Any, batch: Any, batch_idx: int) -> None:
        if batch_idx == self.start:
            self.wall, self.cpu = time.perf_counter(), time.process_time()
            if self.profiler is not None:
                self.profiler.start()
        elif batch_idx == self.stop:
            if self.profiler is not None:
                self.profiler.stop()
            self.wall, self.cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu
            trainer.should_stop = True


def compose(family: str, overrides: list[str]) -> Any:
    """The cpu benchmark's config of ``family`` (its model at the benchmark's sizes)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    import genbench.config  # noqa: F401 - registers the resolvers
    from genbench import CONFIG_DIR

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return hydra_compose(
            config_name="train",
            overrides=["experiment=benchmark/cpu", f"model={family}", "section=cpu", *overrides],
        )


def synthetic_loader(cfg: Any, batches: int, seed: int) -> torch.utils.data.DataLoader:
    """``batches`` batches of images on the 256 levels of [-1, 1] (as genbench's loaders give)."""
    g = torch.Generator().manual_seed(seed)
    n, shape = batches * int(cfg.data.batch_size), (int(cfg.data.channels), int(cfg.data.image_size))
    images = torch.randint(0, 256, (n, shape[0], shape[1], shape[1]), generator=g).float() / 127.5 - 1.0
    dataset = torch.utils.data.TensorDataset(images, torch.zeros(n, dtype=torch.long))
    return torch.utils.data.DataLoader(dataset, batch_size=int(cfg.data.batch_size), shuffle=False)


def window(cfg: Any, precision: str, warmup: int, steps: int, seed: int, profiler: Any = None) -> dict[str, float]:
    """One window of ``steps`` training steps (after ``warmup``) of a freshly built module."""
    from hydra.utils import instantiate

    pl.seed_everything(seed, verbose=False)
    model = instantiate(cfg.model)
    timer = Window(warmup, warmup + steps, profiler)
    with tempfile.TemporaryDirectory(prefix="perf_precision_") as tmp:
        trainer = pl.Trainer(
            accelerator="cpu",
            devices=1,
            precision=precision,
            max_epochs=1,
            logger=False,
            callbacks=[timer],
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            limit_val_batches=0,
            num_sanity_val_steps=0,
            default_root_dir=tmp,
        )
        trainer.fit(model, train_dataloaders=synthetic_loader(cfg, warmup + steps + 2, seed))
    images = steps * int(cfg.data.batch_size)
    return {"images_per_s": images / timer.wall, "images_per_cpu_s": images / timer.cpu, "seconds": timer.wall}


def cpu_description() -> dict[str, Any]:
    from genbench.devices import cpu_bf16_support

    info = Path("/proc/cpuinfo")
    lines = info.read_text().splitlines() if info.exists() else []
    model = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")), platform.processor())
    flags = next((ln.split(":", 1)[1].split() for ln in lines if ln.startswith(("flags", "Features"))), [])
    relevant = sorted(f for f in flags if "bf16" in f or f.startswith(("avx512", "amx", "avx_vnni")))
    return {
        "model": model or platform.machine(),
        "cores": os.cpu_count(),
        "flags": relevant,
        "bf16": str(cpu_bf16_support()),
        "torch": torch.__version__,
        "capability": torch.backends.cpu.get_cpu_capability(),
    }


def measure(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {"cpu": cpu_description(), "load_before": os.getloadavg(), "rows": []}
    for threads in args.threads:
        torch.set_num_threads(threads)
        for family in args.families:
            cfg = compose(family, args.override)
            steps = args.steps or DEFAULT_STEPS[family]
            runs: dict[str, list[dict[str, float]]] = {p: [] for p in PRECISIONS}
            for r in range(args.rounds):
                order = PRECISIONS if r % 2 == 0 else PRECISIONS[::-1]
                for precision in order:
                    runs[precision].append(window(cfg, precision, args.warmup, steps, args.seed))
            key = "images_per_cpu_s" if threads == 1 else "images_per_s"
            ratios = [b[key] / f[key] for f, b in zip(runs["32-true"], runs["bf16-mixed"], strict=True)]
            row = {
                "family": family,
                "threads": threads,
                "batch": int(cfg.data.batch_size),
                "steps": steps,
                "rounds": args.rounds,
                "ratio_of": key,
                "fp32_images_per_s": statistics.median(x["images_per_s"] for x in runs["32-true"]),
                "bf16_images_per_s": statistics.median(x["images_per_s"] for x in runs["bf16-mixed"]),
                "fp32_images": statistics.median(x[key] for x in runs["32-true"]),
                "bf16_images": statistics.median(x[key] for x in runs["bf16-mixed"]),
                "ratio_median": statistics.median(ratios),
                "ratio_min": min(ratios),
                "ratio_max": max(ratios),
            }
            results["rows"].append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    results["load_after"] = os.getloadavg()
    return results


def markdown(results: dict[str, Any]) -> str:
    cpu = results["cpu"]
    load = lambda la: "/".join(f"{v:.1f}" for v in la)  # noqa: E731
    out = [
        f"CPU: {cpu['model']} ({cpu['cores']} cores), flags: {' '.join(cpu['flags']) or '(none)'}; "
        f"genbench's detection: {cpu['bf16']}; torch {cpu['torch']} (capability {cpu['capability']}). "
        f"Load average before {load(results['load_before'])}, after {load(results['load_after'])}.",
        "",
        "| family | threads | batch | steps x rounds | clock | fp32 img/s | bf16-mixed img/s "
        "| bf16 / fp32: median (spread) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results["rows"]:
        clock = "CPU" if r["ratio_of"] == "images_per_cpu_s" else "wall"
        out.append(
            f"| {r['family']} | {r['threads']} | {r['batch']} | {r['steps']} x {r['rounds']} | {clock} "
            f"| {r['fp32_images']:.1f} | {r['bf16_images']:.1f} "
            f"| **{r['ratio_median']:.2f}** ({r['ratio_min']:.2f}-{r['ratio_max']:.2f}) |"
        )
    return "\n".join(out) + "\n"


def profile(args: argparse.Namespace) -> None:
    """torch.profiler over one window per precision: the top operators by self CPU time."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    torch.set_num_threads(args.threads[0])
    for family in args.families:
        cfg = compose(family, args.override)
        steps = args.steps or DEFAULT_STEPS[family]
        for precision in PRECISIONS:
            window(cfg, precision, args.warmup, steps, args.seed)  # warm caches outside the profile
            prof = torch_profile(activities=[ProfilerActivity.CPU])
            result = window(cfg, precision, args.warmup, steps, args.seed, profiler=prof)
            print(f"\n## {family} {precision}: {result['images_per_s']:.1f} img/s ({steps} steps)")
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--families", type=lambda s: s.split(","), default=list(FAMILIES))
    p.add_argument("--threads", type=lambda s: [int(t) for t in s.split(",")], default=None,
                   help="intra-op thread counts, comma-separated (default: 1 and all cores)")  # fmt: skip
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--steps", type=int, default=None, help="timed steps per window (default: per family)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--override", action="append", default=[], help="a Hydra override of the composed config")
    p.add_argument("--profile", action="store_true", help="torch.profiler tables instead of the timing table")
    p.add_argument("--rows", type=int, default=25)
    p.add_argument("--out", default="outputs/perf/precision", help="folder for precision.json / precision.md")
    args = p.parse_args(argv)
    if args.threads is None:
        args.threads = sorted({1, os.cpu_count() or 1})
    import logging
    import warnings

    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    warnings.filterwarnings("ignore", ".*precision.*")
    if args.profile:
        profile(args)
        return
    results = measure(args)
    text = markdown(results)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "precision.json").write_text(json.dumps(results, indent=2))
    (out / "precision.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
