#!/usr/bin/env python
"""Training speed and model FLOP utilisation (MFU) of the large UNet on one GPU.

    python scripts/perf_gpu.py                       # on a GPU: experiment=cifar10_ddpm (35.7M parameters)
    python scripts/perf_gpu.py --tiny                # on a CPU: the same code, a tiny UNet, 2 steps

Why a separate script: the GPU check (scripts/gpu_check.py) measures genbench's Fashion-MNIST-sized
networks, which are launch-bound on an H100 (0.5-7M parameters; bf16 was slower than fp32 there).
Whether bf16, channels_last and torch.compile pay for a network that is big enough to be
compute-bound, and how close it gets to the GPU's peak, needs the CIFAR-10 UNet of Ho et al.
(``experiment=cifar10_ddpm``). Measured, in this order (the expensive compile last, so a short
time limit drops it first):

1. FLOPs per training image: ``torch.utils.flop_counter.FlopCounterMode`` over one hand-written
   training step (forward, backward; convolutions, matmuls and attention, the ops MFU counts),
   divided by the batch. The count does not depend on the precision or the memory layout.
2. images/s of the hand-written step (scripts/perf_train.py's DDPM loop: the same UNet, schedule,
   Adam and EMA as genbench's module) for each setting: fp32, bf16-mixed (autocast around forward
   and loss), bf16-mixed + channels_last, and bf16-mixed + channels_last + torch.compile.
   MFU = FLOPs per image x images/s / the GPU's dense bf16 peak (``PEAK_BF16_FLOPS``, by device
   name; the same peak for every setting, so fp32's MFU says how far it is from what bf16 could
   reach). Batches are generated on the device, so the step, not a data loader, is timed.
3. genbench's overhead: ``genbench-train`` (Lightning, default callbacks, CSV logger) against the
   hand-written loop at bf16-mixed (fp32 on a CPU), interleaved windows (scripts/perf_train.py),
   without the experiment's gradient clipping, which the hand-written loop does not do.

``--tiny`` runs all of it on the CPU in seconds (tiny UNet, 2 timed steps, torch.compile with the
``aot_eager`` backend) against the CPU's measured fp32 matmul peak: it proves the code path for the
tests and says nothing about speed. Every setting runs under its own time limit within
``--time-limit``; one that fails or runs out of time is recorded with its error and the next runs.
Results: ``--out``/perf_gpu.json and perf_gpu.md (printed).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import traceback
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # perf_train, gpu_check: scripts beside this one

import torch  # noqa: E402

#: dense (no sparsity) bf16 tensor-core peaks in FLOP/s, from the vendors' data sheets, by a
#: substring of ``torch.cuda.get_device_name()``; the first match wins, so the more specific
#: names come first. The H100 PCIe and NVL have lower clocks than the SXM part.
PEAK_BF16_FLOPS: tuple[tuple[str, float], ...] = (
    ("H100 PCIe", 756e12),
    ("H100 NVL", 835e12),
    ("H100", 989e12),  # SXM (the "H100 80GB HBM3")
    ("H200", 989e12),
    ("GH200", 989e12),
    ("B200", 2250e12),
    ("A100", 312e12),
    ("L40S", 362e12),
    ("L40", 181e12),  # before "L4", a substring of both
    ("L4", 121e12),
    ("A10G", 70e12),
    ("A10", 125e12),
    ("RTX 4090", 165e12),
    ("RTX 3090", 71e12),
)

#: the settings, in the order they run: (name, precision, channels_last, compile)
SETTINGS: tuple[tuple[str, str, bool, bool], ...] = (
    ("fp32", "32-true", False, False),
    ("bf16", "bf16-mixed", False, False),
    ("bf16+channels_last", "bf16-mixed", True, False),
    ("bf16+channels_last+compile", "bf16-mixed", True, True),
)


def peak_bf16_flops(device_name: str) -> float | None:
    """The dense bf16 peak of a GPU from its name, or None for a GPU not in the table."""
    return next((peak for key, peak in PEAK_BF16_FLOPS if key.lower() in device_name.lower()), None)


def count_flops(step: Any, *inputs: Any) -> int:
    """FLOPs that FlopCounterMode counts over one call of ``step(*inputs)`` (forward and backward:
    2 per multiply-accumulate of convolutions, matmuls and attention; element-wise ops count 0)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        step(*inputs)
    return int(counter.get_total_flops())


def mfu(flops_per_image: float, images_per_second: float, peak_flops_per_second: float) -> float:
    """Model FLOP utilisation: the FLOP/s the model's own arithmetic achieves over the peak."""
    return flops_per_image * images_per_second / peak_flops_per_second


def compose_cfg(args: argparse.Namespace) -> Any:
    """conf/train.yaml with the experiment, on synthetic images of the experiment's shape (a step
    costs the same whatever the pixels; CIFAR-10 need not be on the machine)."""
    from perf_train import compose

    return compose("ddpm", [f"experiment={args.experiment}", *data_overrides(args), *args.model_overrides], Path("."))


def data_overrides(args: argparse.Namespace) -> list[str]:
    n = (args.warmup + args.steps + 4) * args.batch
    return ["data=synthetic", "data.channels=3", "data.image_size=32", f"data.num_train={n}", "data.num_test=64"]


def measure(args: argparse.Namespace, cfg: Any, precision: str, channels_last: bool, compile_: bool) -> dict:
    """images/s of the hand-written training step under one setting (fresh networks, same seed)."""
    from perf_train import amp_dtype, plain_step_fn, sync

    device = args.device
    torch.manual_seed(args.seed)
    step, nets = plain_step_fn("ddpm", cfg, device, amp=amp_dtype(precision))
    if channels_last:
        for net in nets:
            net.to(memory_format=torch.channels_last)
    if compile_:
        for net in nets:
            net.compile(backend=args.compile_backend)
    shape = (args.batch, cfg.data.channels, cfg.data.image_size, cfg.data.image_size)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    batches = [(torch.rand(shape, device=device) * 2 - 1).contiguous(memory_format=fmt) for _ in range(2)]
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t_start = time.perf_counter()
    losses = []
    for i in range(args.warmup):
        losses.append(step(batches[i % 2]))
    sync(device)
    t_warm = time.perf_counter()
    for i in range(args.steps):
        losses.append(step(batches[i % 2]))
    sync(device)
    seconds = time.perf_counter() - t_warm
    return {
        "images_per_second": args.steps * args.batch / seconds,
        "ms_per_step": 1000 * seconds / args.steps,
        "warmup_seconds": t_warm - t_start,
        "loss_first": float(losses[0]),
        "peak_memory_mib": torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else None,
    }


def overhead(args: argparse.Namespace, precision: str) -> dict:
    """genbench-train against the hand-written loop, interleaved windows (scripts/perf_train.py)."""
    from perf_train import run_genbench, run_plain

    ns = argparse.Namespace(
        batch={"ddpm": args.batch},
        steps={"ddpm": args.steps},
        warmup=args.warmup,
        seed=args.seed,
        device=args.device,
        precision=precision,
        data="synthetic",
        override=[
            f"experiment={args.experiment}",
            *data_overrides(args)[1:],
            *args.model_overrides,
            "callbacks.progress_bar=null",
            "callbacks.model_summary=null",
            # the hand-written loop does not clip gradients: the same work on both sides
            "trainer.gradient_clip_val=null",
        ],
    )
    plain, genbench = [], []
    for _ in range(args.rounds):
        plain.append(run_plain(ns, "ddpm")["images_per_s"])
        genbench.append(run_genbench(ns, "ddpm")["images_per_s"])
    ratios = [g / p for g, p in zip(genbench, plain, strict=True)]
    return {
        "precision": precision,
        "plain_images_per_second": plain,
        "genbench_images_per_second": genbench,
        "ratio_per_round": ratios,
        "ratio_median": sorted(ratios)[len(ratios) // 2],
    }


def run_limited(limit: float, fn: Any, *fn_args: Any) -> dict:
    """fn(*fn_args) under a time limit (SIGALRM, this thread): its result, or its error."""
    from gpu_check import time_limit

    start = time.perf_counter()
    try:
        if limit < 3:
            raise TimeoutError(f"no time left for it ({limit:.0f} s)")
        with time_limit(limit):
            out = {"ok": True, **fn(*fn_args)}
    except Exception as e:  # a failed setting is a result; the next one runs
        out = {"ok": False, "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-2000:]}
    out["wall_seconds"] = round(time.perf_counter() - start, 2)
    return out


def markdown(res: dict) -> str:
    env = res["environment"]
    peak = res["peak"]
    peak_text = f"{peak['flops_per_second'] / 1e12:.3f} TFLOP/s" if peak["flops_per_second"] else "unknown"
    lines = [
        f"# perf_gpu: `experiment={res['experiment']}` UNet ({res['num_parameters'] / 1e6:.1f}M parameters)",
        "",
        f"{env['device_name']}, torch {env['torch']}, batch {res['batch']}, {res['warmup']} warm-up + "
        f"{res['steps']} timed steps. FLOPs per training image (FlopCounterMode, forward + backward): "
        f"**{res['flops_per_image'] / 1e9:.2f} GFLOP**. Peak: {peak_text} "
        f"({peak['source']}).",
        "",
        "| setting | images/s | ms/step | vs fp32 | achieved TFLOP/s | MFU | peak memory MiB | warm-up s | status |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    base = (res["settings"].get("fp32") or {}).get("images_per_second")
    for name, r in res["settings"].items():
        if not r.get("ok"):
            lines.append(f"| {name} | | | | | | | | {str(r.get('error', 'failed'))[:120]} |")
            continue
        vs = f"{r['images_per_second'] / base:.2f}" if base else ""
        achieved = f"{r['achieved_flops_per_second'] / 1e12:.3f}" if "mfu" in r else ""
        util = f"**{100 * r['mfu']:.1f} %**" if "mfu" in r else "no peak known"
        mem = f"{r['peak_memory_mib']:,.0f}" if r.get("peak_memory_mib") is not None else ""
        lines.append(
            f"| {name} | {r['images_per_second']:,.1f} | {r['ms_per_step']:.2f} | {vs} | "
            f"{achieved} | {util} | {mem} | "
            f"{r['warmup_seconds']:.1f} | ok |"
        )
    ov = res.get("overhead") or {}
    lines += ["", f"## genbench-train against the hand-written loop ({ov.get('precision', '')})", ""]
    if ov.get("ok"):
        lines.append(
            f"hand-written {', '.join(f'{v:,.1f}' for v in ov['plain_images_per_second'])} images/s; genbench "
            f"{', '.join(f'{v:,.1f}' for v in ov['genbench_images_per_second'])}; genbench / hand-written: "
            f"**{ov['ratio_median']:.3f}** (per round {', '.join(f'{v:.3f}' for v in ov['ratio_per_round'])})."
        )
    else:
        lines.append(f"Not measured: {str(ov.get('error', 'not run'))[:300]}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="CPU smoke run: tiny UNet, 2 steps, aot_eager compile")
    ap.add_argument("--experiment", default="cifar10_ddpm")
    ap.add_argument("--batch", type=int, default=None, help="default 128 (tiny 4)")
    ap.add_argument("--warmup", type=int, default=None, help="default 5 (tiny 1)")
    ap.add_argument("--steps", type=int, default=None, help="timed steps, default 20 (tiny 2)")
    ap.add_argument("--rounds", type=int, default=None, help="overhead rounds, default 2 (tiny 1)")
    ap.add_argument("--time-limit", type=float, default=300, help="seconds for everything")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="outputs/perf/gpu")
    args = ap.parse_args(argv)
    t0 = time.time()
    deadline = t0 + args.time_limit
    tiny = args.tiny
    args.device = "cpu" if tiny else "cuda"
    if not tiny and not torch.cuda.is_available():
        raise SystemExit("perf_gpu.py needs a CUDA GPU; --tiny runs it on the CPU")
    args.batch = args.batch or (4 if tiny else 128)
    args.warmup = args.warmup if args.warmup is not None else (1 if tiny else 5)
    args.steps = args.steps or (2 if tiny else 20)
    args.rounds = args.rounds or (1 if tiny else 2)
    args.compile_backend = "aot_eager" if tiny else "inductor"
    from genbench.tiny import TINY_OVERRIDES

    # tiny: the UNet's tiny sizes, and the CPU trainer in fp32 (the experiment asks for a GPU)
    tiny_net = [*TINY_OVERRIDES["ddpm"], "model.net.num_res_blocks=1"]
    args.model_overrides = [*tiny_net, "trainer=cpu", "trainer.precision=32-true"] if tiny else []
    os.environ.setdefault("WANDB_MODE", "offline")

    from perf_train import matmul_peak, plain_step_fn

    cfg = compose_cfg(args)
    device_name = torch.cuda.get_device_name(0) if args.device == "cuda" else platform.processor() or "cpu"
    if args.device == "cuda":
        peak = peak_bf16_flops(device_name)
        source = "dense bf16 data-sheet peak" if peak else "unknown GPU: not in PEAK_BF16_FLOPS"
    else:  # the CPU's own fp32 sgemm peak (a small one: the tiny run proves the arithmetic, not speed)
        peak, source = matmul_peak(n=512, repeats=3), "measured fp32 512^3 sgemm, per CPU-second"
    # FLOPs per image: one step of the hand-written loop at a small batch (FLOPs are linear in it)
    torch.manual_seed(args.seed)
    step, nets = plain_step_fn("ddpm", cfg, args.device)
    n_count = min(args.batch, 8)
    x = torch.rand(n_count, cfg.data.channels, cfg.data.image_size, cfg.data.image_size, device=args.device) * 2 - 1
    flops_per_image = count_flops(step, x) / n_count
    res: dict[str, Any] = {
        "mode": "tiny" if tiny else "gpu",
        "experiment": args.experiment,
        "num_parameters": sum(p.numel() for p in nets[0].parameters()),
        "batch": args.batch,
        "warmup": args.warmup,
        "steps": args.steps,
        "flops_per_image": flops_per_image,
        "peak": {"flops_per_second": peak, "source": source},
        "environment": {
            "device_name": device_name,
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "python": platform.python_version(),
        },
        "settings": {},
    }
    del step, nets
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    def save() -> None:
        res["elapsed_s"] = round(time.time() - t0, 1)
        (out / "perf_gpu.json").write_text(json.dumps(res, indent=2) + "\n")

    save()
    precision_overhead = "32-true" if tiny else "bf16-mixed"
    plan = [(name, (precision, cl, comp)) for name, precision, cl, comp in SETTINGS]
    # the overhead windows before the compiled setting: its compilation is the most likely to run out of time
    plan.insert(3, ("overhead", None))
    for name, setting in plan:
        print(f"[perf_gpu] {name} ...", flush=True)
        limit = deadline - time.time()
        if setting is None:
            res["overhead"] = run_limited(min(limit, 180), overhead, args, precision_overhead)
        else:
            r = run_limited(min(limit, 240), measure, args, cfg, *setting)
            r.update(precision=setting[0], channels_last=setting[1], compile=setting[2])
            if r["ok"] and peak:
                r["achieved_flops_per_second"] = flops_per_image * r["images_per_second"]
                r["mfu"] = mfu(flops_per_image, r["images_per_second"], peak)
            res["settings"][name] = r
        save()
        if args.device == "cuda":
            torch.cuda.empty_cache()
            torch._dynamo.reset()
    md = markdown(res)
    (out / "perf_gpu.md").write_text(md)
    print(md)
    ok = all(r.get("ok") for r in res["settings"].values()) and bool((res.get("overhead") or {}).get("ok"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
