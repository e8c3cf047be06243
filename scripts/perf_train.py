#!/usr/bin/env python
"""Training-speed measurements for docs/performance.md: framework overhead, speed options, MFU.

    python scripts/perf_train.py overhead   # genbench-train vs a hand-written PyTorch loop, per family
    python scripts/perf_train.py options    # eager vs model.channels_last (vs model.compile), per family
    python scripts/perf_train.py mfu        # FLOPs per image x images/s / measured fp32 matmul peak

Every measurement is a *window* of training steps inside one process: ``--warmup`` steps are run
first (allocator, oneDNN primitive caches, lazy initialisation), then the time from the start of
step ``warmup`` to the start of step ``warmup + steps`` is read, so it covers everything one
iteration costs: fetching the batch, the step, the callbacks' and the logger's per-step hooks.
What happens once per run (building the model, loading Fashion-MNIST, the final checkpoint, the
end-of-epoch sample grid) is outside the window: it does not scale with training length.

The two sides of a comparison alternate (A/B/A/B... for ``--rounds`` rounds) so that a change of
load on a shared machine hits both; the tables give the median ratio and its spread (min-max over
rounds) and ``os.getloadavg()`` before and after. Torch runs with ``--threads`` intra-op threads
(default 1: on a loaded 2-core machine two threads wait on each other whenever another process
holds a core). Results go to ``--out`` (JSON + markdown) and the markdown is printed.

``--device cuda`` runs the same windows on a GPU (genbench with ``trainer=gpu`` at
``--precision``, default fp32 on both sides): the clock is read after ``torch.cuda.synchronize()``
and the losses stay on the GPU until the window ends, so neither side pays a per-step sync that a
real training loop would not (on a GPU only the wall-clock ratio means anything; per CPU-second is
reported but measures the host thread).

The genbench side is ``genbench.train.train`` on the composed ``train`` config exactly as
``genbench-train model=<family>`` would build it (default callbacks and CSV logger; the evaluation
callback is not in the default callbacks, so it is not measured: it is evaluation, not training
throughput), with one extra callback that reads the clock. The hand-written side uses the same
``nets/`` modules built from the same config, the same optimiser factory, batch size, data (the
datamodule's in-memory uint8 tensor, shuffled) and the same losses, written out in plain PyTorch.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import math
import os
import platform
import pstats
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F

FAMILIES = ("gan", "vae", "ddpm")
#: batch sizes of the measurements: the presets' 128, except the DDPM (~12 s per step of 128 on
#: one core: 32 keeps a window short; per-step overhead is a larger share at a smaller batch)
DEFAULT_BATCH = {"gan": 128, "vae": 128, "ddpm": 32}
DEFAULT_STEPS = {"gan": 12, "vae": 40, "ddpm": 4}


# --- the clock inside genbench-train ----------------------------------------------------------
class StepTimer(pl.Callback):
    """Built by Hydra from ``callbacks.perf_timer``: reads the clock at the start of step ``start``
    and of step ``stop``, keeps every step's loss and, with ``profile``, runs cProfile over the
    window. ``StepTimer.last`` is the latest instance (train() builds it, the script reads it)."""

    last: StepTimer | None = None

    def __init__(self, start: int, stop: int, profile: bool = False) -> None:
        self.start, self.stop = start, stop
        self.t0: float | None = None
        self.t1: float | None = None
        self.c0 = self.c1 = 0.0
        self.losses: list[Any] = []  # tensors: reading them each step would sync a GPU
        self.profiler = cProfile.Profile() if profile else None
        StepTimer.last = self

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: Any, batch: Any, batch_idx: int) -> None:
        if batch_idx in (self.start, self.stop):
            sync(pl_module.device)
        if batch_idx == self.start:
            self.t0, self.c0 = time.perf_counter(), time.process_time()
            if self.profiler:
                self.profiler.enable()
        elif batch_idx == self.stop:
            if self.profiler:
                self.profiler.disable()
            self.t1, self.c1 = time.perf_counter(), time.process_time()
            trainer.should_stop = True

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if isinstance(outputs, dict) and "loss" in outputs:
            self.losses.append(outputs["loss"].detach())


def sync(device: torch.device | str) -> None:
    """Wait for the GPU's queued work, so the clock measures it (no-op on a CPU)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def compose(family: str, overrides: list[str], out_dir: Path):  # noqa: ANN201 - a DictConfig
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from omegaconf import open_dict

    import genbench.config  # noqa: F401 - registers the resolvers
    from genbench import CONFIG_DIR

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = hydra_compose(config_name="train", overrides=[f"model={family}", *overrides])
    with open_dict(cfg):
        cfg.paths.output_dir = str(out_dir)
    return cfg


def base_overrides(args: argparse.Namespace, family: str) -> list[str]:
    batch, steps = args.batch[family], args.steps[family]
    total = args.warmup + steps + 1
    return [
        f"data={args.data}",
        f"data.batch_size={batch}",
        # one epoch longer than the window, so no epoch end (validation, sample grid) falls inside it
        f"data.limit_train={(total + 2) * batch}",
        "trainer.max_steps=-1",  # the timer stops the run (the GAN makes two optimiser steps per batch)
        "trainer.max_epochs=1",
        "trainer.limit_val_batches=2",
        "print_config=false",
        f"seed={args.seed}",
        # layout for layout: the hand-written loop is contiguous, and `auto` would turn channels_last
        # on (CPU runs; the DDPM on a GPU); `options` sets it per side after this
        "model.channels_last=false",
        *(["trainer=gpu", f"trainer.precision={args.precision}"] if args.device == "cuda" else []),
        *args.override,
    ]


def run_genbench(args: argparse.Namespace, family: str, extra: list[str] = (), profile: bool = False) -> dict:
    """One genbench-train window: images/s and the window's losses."""
    from omegaconf import open_dict

    from genbench.train import train

    steps = args.steps[family]
    with tempfile.TemporaryDirectory(prefix="perf_") as tmp:
        cfg = compose(family, [*base_overrides(args, family), *extra], Path(tmp))
        with open_dict(cfg):
            cfg.callbacks.perf_timer = {
                "_target_": f"{StepTimer.__module__}.StepTimer",
                "start": args.warmup,
                "stop": args.warmup + steps,
                "profile": profile,
            }
        train(cfg)
    timer = StepTimer.last
    if timer is None or timer.t0 is None or timer.t1 is None:
        raise RuntimeError(f"{family}: the timing window did not complete")
    out = {
        "images_per_s": steps * args.batch[family] / (timer.t1 - timer.t0),
        "images_per_cpu_s": steps * args.batch[family] / (timer.c1 - timer.c0),
        "seconds": timer.t1 - timer.t0,
        "losses": [float(v) for v in timer.losses[args.warmup : args.warmup + steps]],
    }
    if timer.profiler is not None:
        out["profile"] = timer.profiler
    return out


# --- the hand-written loop ---------------------------------------------------------------------
def plain_step_fn(
    family: str, cfg: Any, device: str = "cpu", amp: torch.dtype | None = None
) -> tuple[Callable[[torch.Tensor], torch.Tensor], list[torch.nn.Module]]:
    """The same networks and optimiser settings as genbench's module, with the loss written out in
    plain PyTorch, on ``device``. Returns (step(x) -> loss, networks). ``amp`` (the DDPM only, as
    scripts/perf_gpu.py measures it): the forward pass and loss under ``torch.autocast`` in that
    dtype, the backward and optimiser step outside it, as Lightning's ``bf16-mixed`` does."""
    from hydra.utils import instantiate

    if amp is not None and family != "ddpm":
        raise SystemExit(f"the hand-written {family} loop runs in full precision only (amp is for the DDPM)")
    m = cfg.model
    if family == "vae":
        from genbench.models.vae import bernoulli_nll, discretized_nll, gaussian_nll  # the formulas only

        enc, dec = instantiate(m.encoder).to(device), instantiate(m.decoder).to(device)
        learn = m.likelihood != "bernoulli" and m.sigma is None
        log_sigma = torch.nn.Parameter(
            torch.tensor(0.0 if m.sigma is None else math.log(m.sigma), device=device), requires_grad=learn
        )
        opt = instantiate(m.optimizer)(params=[*enc.parameters(), *dec.parameters(), *([log_sigma] if learn else [])])

        def nll(out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
            if m.likelihood == "bernoulli":
                return bernoulli_nll(out, x)
            if m.likelihood == "gaussian":
                return gaussian_nll(out, x, log_sigma)
            return discretized_nll(m.likelihood, out, x, log_sigma)

        def step(x: torch.Tensor) -> torch.Tensor:
            mu, logvar = enc(x)
            z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
            kl = 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(1)
            loss = (nll(dec(z), x) + m.beta * kl).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            return loss.detach()

        return step, [enc, dec]
    if family == "gan":
        G, D = instantiate(m.generator).to(device), instantiate(m.discriminator).to(device)
        opt_g = instantiate(m.optimizer_g)(params=G.parameters())
        opt_d = instantiate(m.optimizer_d)(params=D.parameters())

        def step(x: torch.Tensor) -> torch.Tensor:
            fake = G(torch.randn(x.shape[0], G.z_dim, device=x.device))
            d_loss = F.softplus(-D(x)).mean() + F.softplus(D(fake.detach())).mean()
            opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            opt_d.step()
            D.requires_grad_(False)  # no gradient for D's weights in G's step
            g_loss = F.softplus(-D(fake)).mean()
            opt_g.zero_grad(set_to_none=True)
            g_loss.backward()
            opt_g.step()
            D.requires_grad_(True)
            return d_loss.detach()

        return step, [G, D]
    if family == "ddpm":
        import copy

        net = instantiate(m.net).to(device)
        ema = copy.deepcopy(net).requires_grad_(False).eval()
        opt = instantiate(m.optimizer)(params=net.parameters())
        s = m.schedule
        T = int(s.timesteps)
        if s.kind != "linear":
            raise SystemExit("the hand-written DDPM loop implements the linear schedule only")
        alpha_bar = (
            torch.cumprod(1 - torch.linspace(s.beta_start, s.beta_end, T, dtype=torch.float64), 0).float().to(device)
        )
        n_updates = [0]

        def step(x: torch.Tensor) -> torch.Tensor:
            t = torch.randint(0, T, (x.shape[0],), device=x.device)
            noise = torch.randn_like(x)
            ab = alpha_bar[t].view(-1, 1, 1, 1)
            with torch.autocast(x.device.type, dtype=amp or torch.bfloat16, enabled=amp is not None):
                loss = F.mse_loss(net(ab.sqrt() * x + (1 - ab).sqrt() * noise, t).float(), noise)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            with torch.no_grad():
                n = n_updates[0]
                decay = min(m.ema_decay, (1 + n) / (10 + n))
                torch._foreach_lerp_(list(ema.parameters()), list(net.parameters()), 1.0 - decay)
                n_updates[0] += 1
            return loss.detach()

        return step, [net]
    raise SystemExit(f"unknown family {family}")


def amp_dtype(precision: str) -> torch.dtype | None:
    """The autocast dtype of a Lightning precision setting (None for full precision)."""
    return {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(str(precision))


def run_plain(args: argparse.Namespace, family: str) -> dict:
    """The hand-written loop over the same in-memory uint8 images, the same window."""
    from genbench.config import build
    from genbench.data.base import to_unit_range

    steps, batch = args.steps[family], args.batch[family]
    cfg = compose(family, base_overrides(args, family), Path(tempfile.gettempdir()))
    torch.manual_seed(args.seed)
    images = build(cfg.data, "data").dataset("train").images
    step, _ = plain_step_fn(family, cfg, args.device, amp=amp_dtype(args.precision) if args.device == "cuda" else None)
    perm = torch.randperm(len(images))
    losses, t0, c0 = [], 0.0, 0.0
    for i in range(args.warmup + steps):
        if i == args.warmup:
            sync(args.device)
            t0, c0 = time.perf_counter(), time.process_time()
        # as genbench's loader: uint8 -> [-1, 1] floats on the host, then to the device
        x = to_unit_range(images[perm[i * batch : (i + 1) * batch]]).to(args.device, non_blocking=True)
        losses.append(step(x))
    sync(args.device)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {
        "images_per_s": steps * batch / seconds,
        "images_per_cpu_s": steps * batch / cpu,
        "seconds": seconds,
        "losses": [float(v) for v in losses[args.warmup :]],
    }


# --- summaries ----------------------------------------------------------------------------------
def spread(values: list[float]) -> str:
    return f"{min(values):.3f}-{max(values):.3f}"


def cpu_model() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
    return next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")), platform.machine())


def environment(args: argparse.Namespace) -> dict:
    return {
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "data": args.data,
        "device": torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu",
        "precision": args.precision if args.device == "cuda" else "32-true",
        "command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
    }


def write(args: argparse.Namespace, name: str, result: dict, markdown: str) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(result, indent=2))
    (out / f"{name}.md").write_text(markdown)
    print(markdown)


def header(env: dict, load_before: tuple, load_after: tuple) -> str:
    fmt = lambda la: "/".join(f"{v:.2f}" for v in la)  # noqa: E731
    return (
        f"Machine: {env['cpu_model']} ({os.cpu_count()} cores, shared), torch {env['torch']}, "
        f"{env['threads']} intra-op thread(s), data {env['data']}, device {env['device']} "
        f"({env['precision']}). Load average (1/5/15 min) before "
        f"{fmt(load_before)}, after {fmt(load_after)}.\nCommand: `python {env['command']}`\n"
    )


def interleave(args: argparse.Namespace, family: str, sides: dict[str, Callable[[], dict]]) -> dict[str, list]:
    runs: dict[str, list] = {name: [] for name in sides}
    for r in range(args.rounds):
        for name, fn in sides.items():
            res = fn()
            res.pop("profile", None)
            runs[name].append(res)
            print(f"[{family} round {r + 1}] {name}: {res['images_per_s']:.1f} images/s", flush=True)
    return runs


def summarise(runs: dict[str, list], base: str) -> dict:
    """Medians per side, and per round the ratio to ``base`` twice: from wall-clock throughput and
    from throughput per CPU-second of the process (the robust one on a shared machine: another
    process holding the core stretches the wall clock, not the process's CPU time)."""
    out: dict[str, Any] = {}
    for name, rs in runs.items():
        ips = [r["images_per_s"] for r in rs]
        cps = [r["images_per_cpu_s"] for r in rs]
        out[name] = {"images_per_s": ips, "median": statistics.median(ips), "images_per_cpu_s": cps}
        out[name]["cpu_median"] = statistics.median(cps)
        if name != base:
            for key, field in (("ratio", "images_per_s"), ("cpu_ratio", "images_per_cpu_s")):
                ratios = [r[field] / b[field] for r, b in zip(rs, runs[base], strict=True)]
                out[name][f"{key}_vs_{base}"] = ratios
                out[name][f"{key}_median"] = statistics.median(ratios)
            # the windows start from the same seed: same initial weights and, on each side, the
            # same batches; the loss trajectories say whether an option changes the numerics
            diffs = [
                max(abs(a - b) for a, b in zip(r["losses"], q["losses"], strict=True))
                for r, q in zip(rs, runs[base], strict=True)
            ]
            out[name]["max_abs_loss_diff"] = max(diffs)
    return out


# --- profile of the genbench side: where do its extra seconds go? -------------------------------
def bucket(filename: str) -> str:
    for key, name in (
        ("pytorch_lightning", "Lightning"),
        ("lightning_fabric", "Lightning"),
        ("lightning_utilities", "Lightning"),
        ("torchmetrics", "Lightning"),
        ("/rich/", "rich (progress bar)"),
        ("genbench", "genbench"),
        ("/torch/", "torch (Python)"),
    ):
        if key in filename:
            return name
    return "builtins/C (tensor ops)" if filename.startswith("~") or filename == "" else "other Python"


def profile_summary(profiler: cProfile.Profile, seconds: float, top: int = 15) -> dict:
    stats = pstats.Stats(profiler)
    buckets: dict[str, float] = {}
    rows = []
    for (filename, line, func), (_cc, _nc, tottime, cumtime, _callers) in stats.stats.items():
        buckets[bucket(filename)] = buckets.get(bucket(filename), 0.0) + tottime
        rows.append((tottime, cumtime, f"{Path(filename).name}:{line}({func})", bucket(filename)))
    rows.sort(reverse=True)
    framework = [r for r in rows if r[3] in ("Lightning", "rich (progress bar)", "genbench", "other Python")]
    return {
        "window_seconds": seconds,
        "self_seconds_by_source": dict(sorted(buckets.items(), key=lambda kv: -kv[1])),
        "top_framework_functions": [
            {"self_s": round(t, 4), "cum_s": round(c, 4), "function": f, "source": b} for t, c, f, b in framework[:top]
        ],
    }


# --- subcommands ---------------------------------------------------------------------------------
def cmd_overhead(args: argparse.Namespace) -> None:
    env, load0 = environment(args), os.getloadavg()
    result: dict[str, Any] = {"environment": env, "load_before": load0, "families": {}}
    for family in args.families:
        runs = interleave(
            args,
            family,
            {"plain": lambda f=family: run_plain(args, f), "genbench": lambda f=family: run_genbench(args, f)},
        )
        result["families"][family] = {
            "batch": args.batch[family],
            "steps": args.steps[family],
            **summarise(runs, "plain"),
        }
        if family in args.profile:
            res = run_genbench(args, family, profile=True)
            result["families"][family]["profile"] = profile_summary(res["profile"], res["seconds"])
    result["load_after"] = os.getloadavg()
    lines = [
        "| family | batch | timed steps x rounds | hand-written img/s (wall) | genbench img/s (wall) "
        "| ratio per CPU-second: median (spread) | ratio wall-clock: median (spread) |",
        "|---|---|---|---|---|---|---|",
    ]
    for family, r in result["families"].items():
        g = r["genbench"]
        lines.append(
            f"| {family} | {r['batch']} | {r['steps']} x {args.rounds} | {r['plain']['median']:,.1f} | "
            f"{g['median']:,.1f} | **{g['cpu_ratio_median']:.3f}** ({spread(g['cpu_ratio_vs_plain'])}) | "
            f"{g['ratio_median']:.3f} ({spread(g['ratio_vs_plain'])}) |"
        )
    md = header(env, load0, result["load_after"]) + "\n" + "\n".join(lines) + "\n"
    for family, r in result["families"].items():
        if "profile" in r:
            p = r["profile"]
            md += f"\ncProfile of one genbench window ({family}, {p['window_seconds']:.2f} s), self time by source: "
            md += ", ".join(f"{k} {v:.3f} s" for k, v in p["self_seconds_by_source"].items()) + "\n"
            md += "".join(
                f"- {row['function']} ({row['source']}): self {row['self_s']:.4f} s, cumulative {row['cum_s']:.4f} s\n"
                for row in p["top_framework_functions"][:8]
            )
    write(args, "overhead", result, md)


def cmd_options(args: argparse.Namespace) -> None:
    env, load0 = environment(args), os.getloadavg()
    settings = {"eager": [], "channels_last": ["model.channels_last=true"]}
    if args.compile:
        settings["compile"] = ["model.compile=true"]
        settings["channels_last+compile"] = ["model.channels_last=true", "model.compile=true"]
    result: dict[str, Any] = {"environment": env, "load_before": load0, "families": {}}
    for family in args.families:
        sides = {name: (lambda f=family, o=o: run_genbench(args, f, o)) for name, o in settings.items()}
        result["families"][family] = {
            "batch": args.batch[family],
            **summarise(interleave(args, family, sides), "eager"),
        }
    result["load_after"] = os.getloadavg()
    lines = [
        "| family | setting | img/s (wall, median) | vs eager per CPU-second: median (spread) "
        "| vs eager wall-clock: median (spread) | max abs loss difference vs eager |",
        "|---|---|---|---|---|---|",
    ]
    for family, r in result["families"].items():
        for name in settings:
            s = r[name]
            if name == "eager":
                lines.append(f"| {family} (batch {r['batch']}) | eager | {s['median']:,.1f} | 1.000 | 1.000 | |")
            else:
                lines.append(
                    f"| | {name} | {s['median']:,.1f} | **{s['cpu_ratio_median']:.3f}** "
                    f"({spread(s['cpu_ratio_vs_eager'])}) | {s['ratio_median']:.3f} ({spread(s['ratio_vs_eager'])}) | "
                    f"{s['max_abs_loss_diff']:.2e} |"
                )
    write(args, "options", result, header(env, load0, result["load_after"]) + "\n" + "\n".join(lines) + "\n")


def matmul_peak(n: int = 2048, repeats: int = 5) -> float:
    """fp32 matmul FLOP per CPU-second of this process: the best of ``repeats`` n x n x n sgemms
    (2 n^3 FLOPs each), timed like the training windows (process CPU time, so a shared core does
    not lower it; with one thread that is the core's peak)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        t = time.process_time()
        a @ b
        best = min(best, time.process_time() - t)
    return 2 * n**3 / best


def flops_per_image(family: str, cfg: Any, batch: int, channels_last: bool = False) -> float:
    """FLOPs of one training step (forward + backward; the GAN's D and G steps) per image, counted
    by FlopCounterMode (matmuls, convolutions, attention: the ops MFU counts)."""
    from torch.utils.flop_counter import FlopCounterMode

    step, nets = plain_step_fn(family, cfg)
    x = torch.rand(batch, cfg.data.channels, cfg.data.image_size, cfg.data.image_size) * 2 - 1
    if channels_last:
        for net in nets:
            net.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    with FlopCounterMode(display=False) as counter:
        step(x)
    return counter.get_total_flops() / batch


def op_profile(family: str, cfg: Any, batch: int, channels_last: bool, top: int = 12) -> list[dict]:
    """Top ops by self CPU time over two plain training steps (after one warm-up step)."""
    from torch.profiler import ProfilerActivity, profile

    step, nets = plain_step_fn(family, cfg)
    x = torch.rand(batch, cfg.data.channels, cfg.data.image_size, cfg.data.image_size) * 2 - 1
    if channels_last:
        for net in nets:
            net.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    step(x)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step(x)
        step(x)
    events = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
    total = sum(e.self_cpu_time_total for e in events)
    return [
        {
            "op": e.key,
            "self_cpu_s": e.self_cpu_time_total / 1e6 / 2,
            "share": e.self_cpu_time_total / total,
            "calls": e.count // 2,
        }
        for e in events[:top]
    ]


def cmd_mfu(args: argparse.Namespace) -> None:
    env, load0 = environment(args), os.getloadavg()
    peaks = [matmul_peak() for _ in range(2)]
    result: dict[str, Any] = {"environment": env, "load_before": load0, "families": {}}
    settings = {"fp32 eager": [], "fp32 channels_last": ["model.channels_last=true"]}
    for family in args.families:
        cfg = compose(family, base_overrides(args, family), Path(tempfile.gettempdir()))
        fpi = flops_per_image(family, cfg, args.batch[family])
        sides = {name: (lambda f=family, o=o: run_genbench(args, f, o)) for name, o in settings.items()}
        runs = summarise(interleave(args, family, sides), "fp32 eager")
        result["families"][family] = {"batch": args.batch[family], "flops_per_image": fpi, **runs}
        if family in args.op_profile:
            result["families"][family]["op_profile"] = {
                name: op_profile(family, cfg, args.batch[family], name.endswith("channels_last")) for name in settings
            }
    peaks.append(matmul_peak())
    peak = max(peaks)
    result.update(matmul_peaks=peaks, peak=peak, load_after=os.getloadavg())
    lines = [
        "| family | batch | GFLOP per training image | setting | img per CPU-second (median) | vs eager: median "
        "(spread) | max abs loss diff vs eager | achieved GFLOP/s | MFU (of measured peak) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for family, r in result["families"].items():
        for i, name in enumerate(settings):
            ips = r[name]["cpu_median"]
            achieved = ips * r["flops_per_image"]
            r[name]["mfu"] = achieved / peak
            first = f"| {family} | {r['batch']} | {r['flops_per_image'] / 1e9:.4f} |" if i == 0 else "| | | |"
            vs = (
                f"{r[name]['cpu_ratio_median']:.3f} ({spread(r[name]['cpu_ratio_vs_fp32 eager'])}) | "
                f"{r[name]['max_abs_loss_diff']:.2e}"
                if i
                else "1.000 | "
            )
            lines.append(
                f"{first} {name} | {ips:,.1f} | {vs} | {achieved / 1e9:.1f} | **{100 * achieved / peak:.1f} %** |"
            )
    md = header(env, load0, result["load_after"])
    md += (
        f"Measured fp32 matmul peak per CPU-second ({torch.get_num_threads()} thread(s), 2048^3 sgemm, best of 5, measured "
        f"{len(peaks)} times: {', '.join(f'{p / 1e9:.1f}' for p in peaks)} GFLOP/s): **{peak / 1e9:.1f} GFLOP/s**.\n\n"
    )
    md += "\n".join(lines) + "\n"
    for family, r in result["families"].items():
        for name, ops in r.get("op_profile", {}).items():
            md += (
                f"\nTop ops by self CPU time, {family} {name} (one training step of {r['batch']}, torch.profiler):\n\n"
            )
            md += "| op | self CPU s per step | share | calls per step |\n|---|---|---|---|\n"
            md += "".join(
                f"| `{o['op']}` | {o['self_cpu_s']:.3f} | {100 * o['share']:.1f} % | {o['calls']} |\n" for o in ops
            )
    write(args, "mfu", result, md)


def per_family(value: str | None, default: dict[str, int]) -> dict[str, int]:
    """``128`` (every family) or ``gan=128,ddpm=32`` on top of the defaults."""
    out = dict(default)
    if value:
        for part in value.split(","):
            if "=" in part:
                k, v = part.split("=", 1)
                out[k] = int(v)
            else:
                out = {k: int(part) for k in out}
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=("overhead", "options", "mfu"))
    parser.add_argument("--families", default=",".join(FAMILIES))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", default=None, help="timed steps per window: N or gan=12,vae=40,ddpm=4")
    parser.add_argument("--batch", default=None, help="batch size: N or gan=128,vae=128,ddpm=32")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="where both sides train")
    parser.add_argument("--precision", default="32-true", help="--device cuda: genbench's trainer.precision")
    parser.add_argument("--data", default="fashion_mnist", help="fashion_mnist (the real data) or synthetic")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--profile", default="", help="overhead: families whose genbench window is also cProfiled")
    parser.add_argument("--compile", action="store_true", help="options: also model.compile (minutes on a CPU)")
    parser.add_argument("--op-profile", default="ddpm", help="mfu: families whose top ops are profiled")
    parser.add_argument("--out", default="outputs/perf")
    parser.add_argument("override", nargs="*", help="extra Hydra overrides for every genbench run")
    args = parser.parse_intermixed_args(argv)  # overrides may come after the options
    args.families = [f for f in args.families.split(",") if f]
    args.op_profile = [f for f in args.op_profile.split(",") if f]
    args.profile = [f for f in args.profile.split(",") if f]
    args.steps = per_family(args.steps, DEFAULT_STEPS)
    args.batch = per_family(args.batch, DEFAULT_BATCH)
    torch.set_num_threads(args.threads)
    os.environ.setdefault("WANDB_MODE", "offline")
    {"overhead": cmd_overhead, "options": cmd_options, "mfu": cmd_mfu}[args.command](args)


if __name__ == "__main__":
    main()
