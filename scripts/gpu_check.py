"""Prove genbench's GPU path in one short session on a GPU machine, and keep that proof runnable on a CPU.

    bash scripts/gpu_check.sh --prepare                 # before copying the tree (wheels + Fashion-MNIST)
    OUT=/some/dir bash scripts/gpu_check.sh             # on the GPU machine (gets a Python env first)
    OUT=/some/dir bash scripts/gpu_check.sh --showdown  # the GPU showdown: budget=gpu + perf_gpu.py
    .venv/bin/python scripts/gpu_check.py --tiny --out /tmp/gc   # the CPU smoke run (CI, tests)

docs/performance.md says how to run it and what it found on an H100 and an H200.

A GPU machine is lent for minutes, from a bare copy of the tree, with no network: everything that
is worth knowing about the GPU path has to come back from one command that cannot hang. So every
step below runs under its own time limit, in its own process where it touches the GPU (a CUDA
error, a compiler crash or a hang in one cannot take the others down), records its error in the
JSON instead of stopping, and the JSON is rewritten after every step (a kill from outside still
leaves what was measured). Steps, in the order they run:

1. environment: GPU name, memory, driver / CUDA / cuDNN / torch / Lightning versions, bf16
   support, and whether Fashion-MNIST is there (else data=synthetic, said so in the results);
2. throughput: per family (gan, vae, ddpm), training images/s and peak GPU memory for fp32,
   bf16-mixed, and bf16-mixed + channels_last + torch.compile (retried without channels_last when
   it fails), with the real genbench modules (Hydra composition + genbench.config.build) trained by
   a Lightning Trainer on batches that are already on the device (the model's step, not the data
   pipeline, is what is timed);
3. ddp: a 2-job Hydra multirun with trainer=ddp on one GPU (NCCL), both jobs' metrics.json;
4. benchmark: genbench-benchmark budget=full, its training time per family sized to the time left
   (at most --bench-seconds), evaluated on 2,000 samples with the in-domain extractor, the DDPM
   also with DDIM 10 and the 1000-step ancestral sampler; its leaderboard is copied into OUT.

The DDP check runs before the benchmark because it is short and fixed, while the benchmark is the
one step whose size can follow the time that is left.

--showdown runs other steps in 540 s: environment; benchmark = ``genbench-benchmark budget=gpu``
as it is (every family on the same image count, 10,000-sample evaluations; sized for at most 8
minutes on an H100 in conf/budget/gpu.yaml), whose results folder <date>-<gpu>/ (leaderboard,
report, grids, environment.json) goes to --results-dir (default docs/results, to commit) and to
OUT/results.tar.gz; perf_gpu = scripts/perf_gpu.py (the 35.7M-parameter UNet's images/s and MFU)
in the time that is left, its numbers added to the folder. Everything lands in OUT/gpu_check.json and
OUT/gpu_check.md (printed at the end), beside the leaderboard, the benchmark's report.html and
details.tar.gz (logs and the runs' result files): a device tool brings back at most 8 files.
Bulky run directories (checkpoints) stay in --work-dir.

--tiny (or GPU_CHECK_TINY=1) runs the same code on the CPU in about 110 s on 2 cores: tiny
networks on synthetic data, fp32 and bf16 (2 steps: bf16 is slow on a CPU), torch.compile with
the "aot_eager" backend (Dynamo's graph capture and AOTAutograd's forward/backward graphs, all
but Inductor's C++ code generation, which would cost more than the whole check), the DDP multirun
with trainer=ddp_cpu on 2 processes, the showdown's benchmark (budget=gpu's family settings on the
tiny protocol: 320 images, 200 samples) with its results folder, and perf_gpu.py --tiny.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
#: the families this check measures by default (--families): those whose GPU figures
#: docs/performance.md reports; any registered family can be named with --families
FAMILIES = ("gan", "vae", "ddpm")

#: seconds the whole check may take, counted from the wrapper's start (GPU_CHECK_T0, which includes
#: `make setup`): a loan has 15 minutes of device time, machine start included.
GPU_TIME_LIMIT_S = 480
TINY_TIME_LIMIT_S = 480  # a fresh clone (cold caches, first compiles) on 2 cores needs more than a warm one
#: --showdown: genbench-benchmark budget=gpu (sized for at most 8 minutes on an H100, about 6 by
#: its arithmetic in conf/budget/gpu.yaml) and then scripts/perf_gpu.py in what is left; 9 minutes
#: of command time in all, so that a 15-minute slot also covers the machine's start
SHOWDOWN_TIME_LIMIT_S = 540
#: the least time the perf_gpu step is started with (fp32 and bf16 of the 35.7M UNet and their FLOP
#: count, about 30 s on an H100 with the process's start); with less left after the benchmark it is
#: skipped (not a failure: the benchmark has the priority)
PERF_GPU_MIN_S = 45


def tiny_model() -> dict[str, list[str]]:
    """Tiny networks per family for --tiny: the test suite's sizes (genbench.tiny), imported only in
    tiny mode so the GPU path never depends on it."""
    from genbench.tiny import TINY_OVERRIDES

    return {family: list(overrides) for family, overrides in TINY_OVERRIDES.items()}  # JSON-able


#: quiet settings for the subprocess training runs (no progress bar or summary in the logs)
QUIET = ["print_config=false", "callbacks.progress_bar=null", "callbacks.model_summary=null"]

#: environment of every subprocess; --tiny adds OMP_NUM_THREADS=1: on a small shared CPU, torch's
#: intra-op threads wait on each other whenever another process holds a core (a tiny GAN step
#: measured 35 ms with one thread and 0.5-1.2 s with two on a loaded 2-core machine), and one
#: thread per process keeps the smoke run's time predictable
EXTRA_ENV: dict[str, str] = {}

#: what the GPU benchmark costs besides training: the benchmark process, the real-vs-real floor
#: and the report; per family, a training process's start (the GAN's also trains the in-domain
#: extractor), two evaluations of 2,000 samples and the sampling benchmark (the DDPM's 1000-step
#: ancestral sampler on 256 images dominates). Measured on an H200 (2026-11-26, 33 s of training
#: each): 15 s fixed, and 30 / 20 / 65 s for the GAN / VAE / DDPM; rounded up here.
BENCH_FIXED_S = 30
BENCH_PER_FAMILY_S = 35
BENCH_MIN_TRAIN_S = 10


# ------------------------------------------------------------------------------------------------
# small helpers (standard library only: the parent process never imports torch or touches the GPU)
# ------------------------------------------------------------------------------------------------
def now_iso() -> str:
    return datetime.datetime.now().isoformat(timespec="seconds")


def write_json(path: Path, data: Any) -> None:
    """Write atomically, so a check killed mid-write still leaves the previous complete file."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    tmp.replace(path)


def tail(text: str, lines: int = 25) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def error_record(e: BaseException) -> dict[str, str]:
    return {"error": f"{type(e).__name__}: {e}", "traceback": tail(traceback.format_exc(), 30)}


class Clock:
    """The check's time budget, counted from the wrapper's start so that `make setup` counts too."""

    def __init__(self, limit_s: float, t0: float) -> None:
        self.limit_s = limit_s
        self.t0 = t0

    def elapsed(self) -> float:
        return time.time() - self.t0

    def remaining(self) -> float:
        return self.limit_s - self.elapsed()


def run_guarded(cmd: list[str], timeout: float, log_path: Path, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run a command in its own session with a hard time limit, output to log_path.

    Its own session, because the command may start children (a benchmark's training jobs, DDP
    ranks, Inductor's compile workers): on timeout the whole group gets SIGTERM (genbench's jobs
    save and stop on it), then SIGKILL, so nothing keeps the GPU busy for the next step.
    """
    start = time.perf_counter()
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", "WANDB_MODE": "offline", **EXTRA_ENV, **(env or {})}
    timed_out = False
    with open(log_path, "w") as log:
        log.write("$ " + " ".join(cmd) + "\n")
        log.flush()
        proc = subprocess.Popen(
            cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=full_env, start_new_session=True
        )
        try:
            rc = proc.wait(timeout=max(timeout, 1))
        except subprocess.TimeoutExpired:
            timed_out = True
            for sig, grace in ((signal.SIGTERM, 15), (signal.SIGKILL, 10)):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, sig)
                try:
                    proc.wait(timeout=grace)
                    break
                except subprocess.TimeoutExpired:
                    continue
            rc = proc.returncode
    return {
        "returncode": rc,
        "timed_out": timed_out,
        "seconds": round(time.perf_counter() - start, 1),
        "log": str(log_path),
        "log_tail": tail(log_path.read_text(errors="replace"), 25),
    }


# ------------------------------------------------------------------------------------------------
# the plan: what each mode runs
# ------------------------------------------------------------------------------------------------
def make_plan(tiny: bool, args: argparse.Namespace) -> dict[str, Any]:
    """Everything a worker needs to know, as JSON (workers are separate processes)."""
    variant = "showdown" if args.showdown else "check"
    if tiny:
        return {
            "mode": "tiny",
            "variant": variant,
            "accelerator": "cpu",
            "batch_size": 32,
            "unique_batches": 4,
            "compile_backend": "aot_eager",
            "model_overrides": tiny_model(),
            "settings": [
                {"name": "fp32", "precision": "32-true", "warmup": 2, "steps": 6, "limit_s": 60},
                {"name": "bf16", "precision": "bf16-mixed", "warmup": 1, "steps": 2, "limit_s": 60},
                {
                    "name": "bf16+channels_last+compile",
                    "precision": "bf16-mixed",
                    "channels_last": True,
                    "compile": True,
                    "warmup": 1,
                    "steps": 2,
                    "limit_s": 90,
                },
            ],
        }
    return {
        "mode": "gpu",
        "variant": variant,
        "accelerator": "gpu",
        "batch_size": args.batch_size,
        "unique_batches": 8,
        "compile_backend": "inductor",
        "model_overrides": {f: [] for f in FAMILIES},
        # each option alone against fp32 (what a per-family default can be chosen from), then
        # all of them together
        "settings": [
            {"name": "fp32", "precision": "32-true", "warmup": 10, "steps": args.steps, "limit_s": 60},
            {
                "name": "fp32+channels_last",
                "precision": "32-true",
                "channels_last": True,
                "warmup": 10,
                "steps": args.steps,
                "limit_s": 60,
            },
            {"name": "bf16", "precision": "bf16-mixed", "warmup": 10, "steps": args.steps, "limit_s": 60},
            {
                "name": "fp32+compile",
                "precision": "32-true",
                "compile": True,
                "warmup": 10,
                "steps": args.steps,
                "limit_s": 150,
            },
            {
                "name": "bf16+channels_last+compile",
                "precision": "bf16-mixed",
                "channels_last": True,
                "compile": True,
                "warmup": 10,
                "steps": args.steps,
                "limit_s": 150,
            },
        ],
    }


def data_overrides(data: str, tiny: bool, root: str | None = None) -> list[str]:
    """The data overrides every step uses. Synthetic data on a GPU gets Fashion-MNIST's
    proportions: 512 images would make every epoch a handful of steps, and the per-epoch
    validation would dominate the benchmark. Fashion-MNIST carried to the machine (the wrapper's
    GPU_CHECK_DATA_ROOT) is found through data.root."""
    if data == "synthetic" and not tiny:
        return ["data=synthetic", "data.num_train=20000", "data.num_test=10000"]
    if data == "fashion_mnist" and root:
        return ["data=fashion_mnist", f"data.root={root}"]
    return [f"data={data}"]


# ------------------------------------------------------------------------------------------------
# workers (run in their own processes: `gpu_check.py --worker env|throughput ...`)
# ------------------------------------------------------------------------------------------------
def compose_train(overrides: list[str]) -> Any:
    """conf/train.yaml composed exactly as genbench-train composes it."""
    from hydra import compose, initialize_config_dir

    import genbench.config  # noqa: F401  (registers the resolvers the configs use)
    from genbench import CONFIG_DIR

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name="train", overrides=overrides)


def worker_env(data_ovr: list[str]) -> dict[str, Any]:
    """Versions, the device and what it supports, and whether the requested data is there."""
    import platform

    import torch

    info: dict[str, Any] = {
        "python": platform.python_version(),
        "python_executable": sys.executable,
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "cuda_available": torch.cuda.is_available(),
        "cxx_compiler": shutil.which("g++") or shutil.which("c++"),
    }
    for module in ("pytorch_lightning", "genbench", "hydra", "torch_fidelity"):  # none may stop the GPU's report
        try:
            info[module.replace("pytorch_", "")] = __import__(module).__version__
        except Exception as e:
            info[module.replace("pytorch_", "")] = f"missing ({type(e).__name__}: {e})"
    with contextlib.suppress(Exception):
        import triton

        info["triton"] = triton.__version__
    with contextlib.suppress(Exception):
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
        info["git_commit"] = rev.stdout.strip() or None
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(
            device_count=torch.cuda.device_count(),
            gpu_name=props.name,
            gpu_memory_gib=round(props.total_memory / 2**30, 1),
            compute_capability=f"{props.major}.{props.minor}",
            multiprocessors=props.multi_processor_count,
            bf16_supported=torch.cuda.is_bf16_supported(),
            tf32_matmul=torch.backends.cuda.matmul.allow_tf32,
            tf32_cudnn=torch.backends.cudnn.allow_tf32,
        )
        try:
            smi = subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version,memory.total,power.limit", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=30,
            )
            driver, mem, power = (s.strip() for s in smi.stdout.splitlines()[0].split(","))
            info.update(driver=driver, nvidia_smi_memory=mem, power_limit=power)
        except Exception as e:  # no nvidia-smi: the rest still stands
            info["driver"] = f"unknown ({type(e).__name__}: {e})"
    else:
        info["bf16_supported"] = True  # CPU autocast runs bf16 (slowly) on any x86-64 CPU
    # Is the requested dataset there? prepare_data() finds the files or raises one clear error.
    try:
        from genbench.config import build

        build(compose_train(data_ovr).data, "data").prepare_data()
        info["data_available"] = True
    except Exception as e:
        info["data_available"] = False
        info["data_error"] = f"{type(e).__name__}: {e}"
    return info


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise TimeoutError in this (main) thread after `seconds`: a setting that compiles for too
    long becomes an error in the JSON, and the next setting still runs."""

    def on_alarm(signum: int, frame: Any) -> None:
        raise TimeoutError(f"over its time limit of {seconds:.0f} s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 1))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def make_step_timer(warmup: int, total: int, sync: bool) -> Any:
    """A Lightning callback that clocks the batches after the warm-up. CUDA runs asynchronously,
    so it synchronises before reading the clock, but only at the few batches it reads the clock
    at: synchronising every batch would remove the CPU/GPU overlap that training really has."""
    import pytorch_lightning as pl
    import torch

    class StepTimer(pl.Callback):
        def __init__(self) -> None:
            self.t_start = self.t_warm = self.t_end = None
            self.first_batch_s: float | None = None
            self.batches = 0
            self.losses: list[Any] = []  # tensors, read after training (reading one syncs the GPU)

        def _now(self) -> float:
            if sync:
                torch.cuda.synchronize()
            return time.perf_counter()

        def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
            self.t_start = self._now()

        def on_train_batch_end(
            self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
        ) -> None:
            self.batches = batch_idx + 1
            if isinstance(outputs, dict):  # the GAN returns d_loss and g_loss: its D loss stands for it
                loss = outputs.get("loss", outputs.get("d_loss"))
                if isinstance(loss, torch.Tensor):
                    self.losses.append(loss.detach())
            if batch_idx in (0, warmup - 1, total - 1):
                t = self._now()
                if batch_idx == 0:
                    self.first_batch_s = t - self.t_start
                if batch_idx == warmup - 1:
                    self.t_warm = t
                if batch_idx == total - 1:
                    self.t_end = t

    return StepTimer()


#: the compiled setting again without channels_last, run only when the combined one fails
RETRY_NAME = "bf16+compile (retry without channels_last)"


class CycledBatches:
    """`length` batches cycling over a few prepared ones, already on the device: Lightning's
    transfer is then a no-op, and the timing is the model's step alone."""

    def __init__(self, batches: list[Any], length: int) -> None:
        self.batches = batches
        self.length = length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> Any:
        if i >= self.length:
            raise IndexError(i)
        return self.batches[i % len(self.batches)]


def measure_setting(
    family: str, setting: dict[str, Any], plan: dict[str, Any], base: list[str], images_u8: Any
) -> dict[str, Any]:
    """Train `warmup + steps` batches of one family under one setting and time the last `steps`."""
    import gc
    import tempfile
    import warnings

    import pytorch_lightning as pl
    import torch
    from torch.utils.data import DataLoader

    from genbench.config import build
    from genbench.data.base import to_unit_range

    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    warnings.filterwarnings("ignore", ".*Tensor Cores.*")  # Lightning's fp32 matmul-precision hint
    gpu = plan["accelerator"] == "gpu"
    device = torch.device("cuda" if gpu else "cpu")
    want_cl, want_compile = bool(setting.get("channels_last")), bool(setting.get("compile"))
    cfg = compose_train(base)
    has = {"channels_last": "channels_last" in cfg.model, "compile": "compile" in cfg.model}
    # The models' own options where another change added them (not in --tiny for compile: the
    # model's compile would use Inductor, which on a CPU costs more than the whole check).
    extra = []
    if has["channels_last"]:  # explicit either way: the default (auto) turns it on for the DDPM on a GPU
        extra.append(f"model.channels_last={'true' if want_cl else 'false'}")
    if want_compile and has["compile"] and plan["mode"] != "tiny":
        extra.append("model.compile=true")
    if extra:
        cfg = compose_train(base + extra)

    result: dict[str, Any] = {"precision": setting["precision"], "warmup_batches": setting["warmup"]}
    if gpu:
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    pl.seed_everything(0, verbose=False)
    model = build(cfg.model, family).to(device)
    result["num_parameters"] = model.num_parameters()
    if want_cl:
        if has["channels_last"]:
            result["channels_last"] = "model option"
        else:
            model = model.to(memory_format=torch.channels_last)
            result["channels_last"] = "gpu_check"
    if want_compile:
        if "model.compile=true" in extra:
            result["compile"] = "model option"
        else:
            # the networks an optimiser trains (never an EMA copy, only used for sampling)
            targets = list(model.trained_networks())
            for name in targets:
                getattr(model, name).compile(backend=plan["compile_backend"])
            result.update(compile="gpu_check", compiled_modules=targets)
        result["compile_backend"] = plan["compile_backend"] if result["compile"] == "gpu_check" else "model's"

    bs, n_unique = plan["batch_size"], plan["unique_batches"]
    x = to_unit_range(images_u8[: bs * n_unique]).to(device)
    n_unique = max(1, x.shape[0] // bs)
    fmt = torch.channels_last if want_cl else torch.contiguous_format
    batches = [
        (x[i * bs : (i + 1) * bs].contiguous(memory_format=fmt), torch.zeros(bs, dtype=torch.long, device=device))
        for i in range(n_unique)
    ]
    total = setting["warmup"] + setting["steps"]
    loader = DataLoader(CycledBatches(batches, total), batch_size=None, shuffle=False, num_workers=0)
    timer = make_step_timer(setting["warmup"], total, sync=gpu)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = pl.Trainer(
            accelerator=plan["accelerator"],
            devices=1,
            precision=setting["precision"],
            max_epochs=1,
            max_steps=-1,  # a GAN batch is 2 optimizer steps: count batches, not steps
            limit_train_batches=total,
            limit_val_batches=0,
            num_sanity_val_steps=0,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            callbacks=[timer],
            default_root_dir=tmp,
        )
        trainer.fit(model, train_dataloaders=loader)
    if timer.batches != total or timer.t_end is None:
        raise RuntimeError(f"trained {timer.batches} of {total} batches")
    seconds = timer.t_end - timer.t_warm
    # The same seed, initial weights and batches in every setting: the loss at the first batch and
    # its mean over the timed ones say whether a setting changes the numerics (derive() compares).
    losses = [float(v) for v in timer.losses]
    if losses:
        timed = losses[setting["warmup"] :] or losses
        result.update(loss_first_batch=losses[0], loss_mean_timed=sum(timed) / len(timed))
    result.update(
        ok=True,
        batch_size=bs,
        timed_batches=setting["steps"],
        timed_seconds=round(seconds, 4),
        images_per_second=round(setting["steps"] * bs / seconds, 1),
        ms_per_batch=round(1000 * seconds / setting["steps"], 3),
        first_batch_seconds=round(timer.first_batch_s, 3),
        warmup_seconds=round(timer.t_warm - timer.t_start, 3),
        peak_memory_mib=round(torch.cuda.max_memory_allocated(device) / 2**20, 1) if gpu else None,
        peak_reserved_mib=round(torch.cuda.max_memory_reserved(device) / 2**20, 1) if gpu else None,
    )
    del trainer, model, batches, x
    if want_compile:
        torch._dynamo.reset()
    return result


def worker_throughput(
    plan: dict[str, Any], family: str, data_ovr: list[str], result_path: Path, deadline: float
) -> None:
    """Every setting of one family, each under its own time limit and within the family's
    deadline (so a slow compile ends as a recorded TimeoutError before the parent has to kill
    this process); the result file is rewritten after each setting, so even a kill keeps the
    settings already measured."""
    import torch

    from genbench.config import build

    base = [*data_ovr, f"model={family}", *plan["model_overrides"][family]]
    out: dict[str, Any] = {
        "family": family,
        "overrides": base,
        "torch_threads": torch.get_num_threads(),
        "settings": {},
    }
    write_json(result_path, out)
    datamodule = build(compose_train(base).data, "data")
    datamodule.setup()
    images = datamodule.real_images("train")

    def run_setting(setting: dict[str, Any]) -> dict[str, Any]:
        print(f"[gpu_check] {family} {setting['name']} ...", flush=True)
        start = time.perf_counter()
        limit = min(setting["limit_s"], deadline - time.time())
        try:
            if limit < 2:
                raise TimeoutError(f"no time left for it ({limit:.0f} s before the family's deadline)")
            with time_limit(limit):
                r = measure_setting(family, setting, plan, base, images)
        except BaseException as e:  # noqa: BLE001 - a failed setting is a result; the next one runs
            if isinstance(e, KeyboardInterrupt):
                raise
            r = {"ok": False, **error_record(e)}
        r.update(wall_seconds=round(time.perf_counter() - start, 1), limit_s=round(limit, 1))
        r.update(warmup_batches=setting["warmup"], timed_batches=setting["steps"])
        out["settings"][setting["name"]] = r
        print(f"[gpu_check] {family} {setting['name']}: {r.get('images_per_second', r.get('error'))}", flush=True)
        write_json(result_path, out)
        return r

    for setting in plan["settings"]:
        r = run_setting(setting)
        if not r["ok"] and setting.get("channels_last") and setting.get("compile"):
            # Which of the two broke it? (On an H200 with torch 2.11, Inductor's stride check
            # failed in the DCGAN generator's convolution_backward under channels_last.)
            run_setting({**setting, "name": RETRY_NAME, "channels_last": False})


# ------------------------------------------------------------------------------------------------
# the steps (parent process)
# ------------------------------------------------------------------------------------------------
class Check:
    """The whole check: its plan, clock, output folder and the report it fills in step by step."""

    def __init__(self, args: argparse.Namespace, tiny: bool, out: Path, work: Path, clock: Clock) -> None:
        self.args, self.tiny, self.out, self.work, self.clock = args, tiny, out, work, clock
        self.plan = make_plan(tiny, args)
        # OUT stays at a few files (a device tool brings back at most 8): the JSON, the markdown,
        # the leaderboard and report, the wrapper's setup.log, and details.tar.gz of `kept`
        # (every log, the DDP jobs' metrics.json, each benchmark run's result files)
        self.kept = work / "kept"
        # a rerun on the same machine reuses the work dir (OUT has the same name): files an earlier
        # check left there (a failed.json, a log) would otherwise come back as this one's
        shutil.rmtree(self.kept, ignore_errors=True)
        self.logs = self.kept / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.data_root = args.data_root or os.environ.get("GPU_CHECK_DATA_ROOT") or None
        self.data = "synthetic" if tiny else args.data
        self.results_dir = Path(args.results_dir or (work / "results" if tiny else REPO / "docs" / "results")).resolve()
        self.evidence_dir: Path | None = None
        self.report: dict[str, Any] = {
            "schema": 1,
            "mode": self.plan["mode"],
            "started": now_iso(),
            "time_limit_s": clock.limit_s,
            "out": str(out),
            "work_dir": str(work),
            "setup": {
                "status": os.environ.get("GPU_CHECK_SETUP_STATUS", "not run (gpu_check.py started directly)"),
                "seconds": _float_env("GPU_CHECK_SETUP_SECONDS"),
                "data_status": os.environ.get("GPU_CHECK_DATA_STATUS"),
                "data_seconds": _float_env("GPU_CHECK_DATA_SECONDS"),
            },
            "plan": self.plan,
            "data": {"requested": "synthetic" if tiny else args.data, "root": self.data_root},
            "steps": {},
        }
        if self.report["setup"]["status"].startswith("failed"):
            setup_log = out / "setup.log"
            if setup_log.is_file():
                self.report["setup"]["log_tail"] = tail(setup_log.read_text(errors="replace"), 30)

    def save(self) -> None:
        self.report["elapsed_s"] = round(self.clock.elapsed(), 1)
        write_json(self.out / "gpu_check.json", self.report)

    def step(
        self, name: str, limit: float, fn: Callable[[float], dict[str, Any]], minimum: float = 5, optional: bool = False
    ) -> None:
        """Run one step with try/except and record it; skipped when its time is already gone (an
        optional step, one that only uses time others leave, is then not a failure)."""
        entry: dict[str, Any] = {"started": now_iso(), "limit_s": round(limit, 1)}
        self.report["steps"][name] = entry
        print(f"[gpu_check] step {name} (limit {limit:.0f} s, {self.clock.remaining():.0f} s left)", flush=True)
        start = time.perf_counter()
        if limit < minimum:
            why = f"skipped: {limit:.0f} s left for it, needs {minimum:.0f} s"
            entry.update(ok=optional, skipped=True, **({"note": why} if optional else {"error": why}))
        else:
            try:
                entry.update(fn(limit))
                entry.setdefault("ok", True)
            except Exception as e:
                entry.update(ok=False, **error_record(e))
        entry["wall_seconds"] = round(time.perf_counter() - start, 1)
        print(f"[gpu_check] step {name}: {'ok' if entry['ok'] else entry.get('error')}", flush=True)
        self.save()
        self.archive()

    def archive(self) -> None:
        """OUT/details.tar.gz: everything kept so far (rewritten after every step, like the JSON)."""
        tmp = self.out / "details.tar.gz.tmp"
        with tarfile.open(tmp, "w:gz") as tar:
            tar.add(self.kept, arcname="details")
        tmp.replace(self.out / "details.tar.gz")

    # --- 1. environment ------------------------------------------------------------------------
    def environment(self, limit: float) -> dict[str, Any]:
        data = "synthetic" if self.tiny else ("fashion_mnist" if self.args.data == "auto" else self.args.data)
        res_file = self.work / "env.json"
        ovr = [f"--data-override={o}" for o in data_overrides(data, self.tiny, self.data_root)]
        run = run_guarded(self.worker_cmd("env", *ovr, "--result", str(res_file)), limit, self.logs / "env.log")
        if not res_file.is_file():
            raise RuntimeError(f"the environment worker wrote nothing (exit {run['returncode']}): {run['log_tail']}")
        info = json.loads(res_file.read_text())
        # the data every later step uses
        if self.tiny:
            self.data = "synthetic"
        elif info.get("data_available"):
            self.data = data
        else:
            self.data = "synthetic"
            self.report["data"]["fallback_reason"] = (
                f"{data} not available on this machine, so data=synthetic (generated shapes; the FID/KID numbers "
                f"are not comparable with Fashion-MNIST ones): {info.get('data_error')}"
            )
        self.report["data"]["used"] = self.data
        if not self.tiny and not info.get("cuda_available"):
            raise RuntimeError("no CUDA GPU visible: run with --tiny for the CPU smoke check")
        if not self.tiny and not info.get("bf16_supported"):  # pre-Ampere: bf16 is emulated, 16-mixed is the GPU's
            for s in self.plan["settings"]:
                s["precision"] = s["precision"].replace("bf16-mixed", "16-mixed")
        return {"result": info, "process": run}

    # --- 2. throughput -------------------------------------------------------------------------
    def throughput(self, limit: float) -> dict[str, Any]:
        deadline = time.perf_counter() + limit
        families: dict[str, Any] = {}
        plan_file = self.work / "plan.json"
        write_json(plan_file, self.plan)
        chosen = [f for f in FAMILIES if f in self.args.families]
        for i, family in enumerate(chosen):
            share = (deadline - time.perf_counter()) / (len(chosen) - i)  # unused time rolls forward
            budget = min(share, sum(s["limit_s"] for s in self.plan["settings"]) + 60)
            res_file = self.work / f"throughput_{family}.json"
            res_file.unlink(missing_ok=True)
            worker_deadline = time.time() + budget - 5  # the worker stops itself first
            cmd = self.worker_cmd(
                "throughput",
                *("--family", family, "--plan", str(plan_file), "--result", str(res_file)),
                *("--deadline", str(worker_deadline), *self.data_args()),
            )
            run = run_guarded(cmd, budget, self.logs / f"throughput_{family}.log")
            res = json.loads(res_file.read_text()) if res_file.is_file() else {"settings": {}}
            res["process"] = run
            for s in self.plan["settings"]:  # a setting the process never reached: why
                if s["name"] not in res["settings"]:
                    why = "timed out" if run["timed_out"] else f"exited with status {run['returncode']}"
                    res["settings"][s["name"]] = {
                        "ok": False,
                        "error": f"not measured: the worker {why} ({budget:.0f} s)",
                    }
            self.derive(res["settings"])
            families[family] = res
            self.report["steps"]["throughput"]["families"] = families
            self.save()
        failed = [
            f"{fam} {name}" for fam, f in families.items() for name, r in f["settings"].items() if not r.get("ok")
        ]
        return {"families": families, "ok": not failed, **({"error": "failed: " + ", ".join(failed)} if failed else {})}

    @staticmethod
    def derive(settings: dict[str, Any]) -> None:
        """Speed-up against fp32, and compile time = the compiled warm-up minus the same warm-up
        uncompiled (the first batches are where Dynamo/Inductor compile)."""
        fp32 = settings.get("fp32", {})
        base = fp32.get("images_per_second")
        for name, r in settings.items():
            if r.get("ok") and base:
                r["speedup_vs_fp32"] = round(r["images_per_second"] / base, 2)
            # the uncompiled setting of the same precision ("fp32" or "bf16")
            plain = settings.get("bf16" if name.startswith("bf16") else "fp32", {}).get("warmup_seconds")
            if r.get("ok") and "compile" in name and plain is not None:
                r["compile_seconds"] = round(max(0.0, r["warmup_seconds"] - plain), 1)
            if r.get("ok") and fp32.get("loss_mean_timed") and r.get("loss_mean_timed") is not None:
                ref = fp32["loss_mean_timed"]
                r["loss_rel_diff_vs_fp32"] = abs(r["loss_mean_timed"] - ref) / max(abs(ref), 1e-12)

    # --- 2b. the GPU tests ---------------------------------------------------------------------
    def gpu_tests(self, limit: float) -> dict[str, Any]:
        """tests/test_gpu.py, which CI (no GPU) always skips: each family trains and samples on the
        device in fp32 and bf16, DDIM reproducibility, the latent grids on CUDA. On a CPU they skip."""
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(REPO / "tests" / "test_gpu.py")]
        run = run_guarded(cmd, limit, self.logs / "gpu_tests.log")
        text = Path(run["log"]).read_text(errors="replace")
        counts = {k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|skipped|errors?)\b", text)}
        failed = re.findall(r"^(?:FAILED|ERROR) (\S+)", text, flags=re.M)
        return {
            "ok": run["returncode"] == 0,
            "command": " ".join(cmd[1:]),
            "counts": counts,
            "failed_tests": failed,
            "process": run,
            **({} if run["returncode"] == 0 else {"error": run["log_tail"][-1500:]}),
        }

    # --- 3. framework overhead: genbench-train against a hand-written loop ----------------------
    def overhead(self, limit: float) -> dict[str, Any]:
        """scripts/perf_train.py overhead on this device: genbench-train's training windows (default
        callbacks, CSV logger, trainer=gpu at fp32) against a plain PyTorch loop over the same
        networks, optimisers and data, interleaved; on a GPU a step takes milliseconds, so this is
        where Lightning's per-step cost shows, if anywhere."""
        out_dir = self.work / "overhead"
        shutil.rmtree(out_dir, ignore_errors=True)
        data = data_overrides(self.data, self.tiny, self.data_root)
        dataset = data[0].removeprefix("data=")
        if self.tiny:
            sizes = ["--device", "cpu", "--families", "gan,vae", "--rounds", "1", "--warmup", "1"]
            sizes += ["--steps", "2", "--batch", "32"]
        else:
            sizes = ["--device", "cuda", "--families", ",".join(self.args.families), "--rounds", "2"]
            sizes += ["--warmup", "10", "--steps", "gan=60,vae=60,ddpm=30", "--batch", str(self.plan["batch_size"])]
        cmd = [
            sys.executable,
            str(REPO / "scripts" / "perf_train.py"),
            "overhead",
            *sizes,
            "--data",
            dataset,
            "--out",
            str(out_dir),
            *data[1:],
            *(["callbacks.progress_bar=null"] if self.tiny else []),  # tiny: no Rich bar in the CI log
        ]
        run = run_guarded(cmd, limit, self.logs / "overhead.log")
        result_file = out_dir / "overhead.json"
        if not result_file.is_file():
            return {"ok": False, "command": " ".join(cmd[1:]), "process": run, "error": run["log_tail"][-800:]}
        res = json.loads(result_file.read_text())
        families = {
            f: {
                "batch": r["batch"],
                "steps": r["steps"],
                "plain_images_per_second": r["plain"]["median"],
                "genbench_images_per_second": r["genbench"]["median"],
                "ratio_wall_median": r["genbench"]["ratio_median"],
                "ratio_wall_per_round": r["genbench"]["ratio_vs_plain"],
            }
            for f, r in res["families"].items()
        }
        return {
            "ok": run["returncode"] == 0 and bool(families),
            "command": " ".join(cmd[1:]),
            "families": families,
            "markdown": (out_dir / "overhead.md").read_text(),
            "process": run,
        }

    # --- 4. DDP multirun -----------------------------------------------------------------------
    def ddp(self, limit: float) -> dict[str, Any]:
        sweep = self.work / "ddp"
        shutil.rmtree(sweep, ignore_errors=True)
        trainer = ["trainer=ddp_cpu", "trainer.devices=2"] if self.tiny else ["trainer=ddp", "trainer.devices=1"]
        cmd = [
            sys.executable,
            "-m",
            "genbench.train",
            "-m",
            "model=vae",
            "seed=0,1",
            *trainer,
            "debug=fast",
            *data_overrides(self.data, self.tiny, self.data_root),
            *QUIET,
            *(tiny_model()["vae"] if self.tiny else []),
            f"hydra.sweep.dir={sweep}",
        ]
        run = run_guarded(cmd, limit, self.logs / "ddp.log")
        log_text = Path(run["log"]).read_text(errors="replace")
        backends = sorted(set(re.findall(r"distributed_backend=(\w+)", log_text)))
        world_sizes = [int(n) for n in re.findall(r"MEMBER: \d+/(\d+)", log_text)]
        jobs = []
        for job in ("0", "1"):
            d = sweep / job
            entry: dict[str, Any] = {"job": job, "metrics_json": (d / "metrics.json").is_file()}
            if entry["metrics_json"]:
                entry["metrics"] = json.loads((d / "metrics.json").read_text())
            for name in ("metrics.json", "ddp_sync.json"):
                if (d / name).is_file():
                    (self.kept / "ddp" / job).mkdir(parents=True, exist_ok=True)
                    shutil.copy2(d / name, self.kept / "ddp" / job / name)
            if (d / "ddp_sync.json").is_file():
                entry["ddp_sync"] = json.loads((d / "ddp_sync.json").read_text())
            if (d / ".hydra" / "overrides.yaml").is_file():
                entry["overrides"] = (d / ".hydra" / "overrides.yaml").read_text()
            if (d / "failed.json").is_file():
                entry["failed"] = json.loads((d / "failed.json").read_text())
            jobs.append(entry)
        ok = run["returncode"] == 0 and all(j["metrics_json"] for j in jobs)
        return {
            "ok": ok,
            "command": " ".join(cmd[2:]),
            "distributed_backend": backends,
            "world_sizes": world_sizes,  # one per rank start, from Lightning's "MEMBER: i/n" lines
            "jobs": jobs,
            "process": run,
            **(
                {}
                if ok
                else {"error": f"exit {run['returncode']}, timed out {run['timed_out']}: {run['log_tail'][-800:]}"}
            ),
        }

    # --- 5. mini benchmark ---------------------------------------------------------------------
    def bench_command(self, limit: float) -> tuple[list[str], dict[str, Any]]:
        out_dir = self.work / "benchmark"
        shutil.rmtree(out_dir, ignore_errors=True)
        cmd = [sys.executable, "-m", "genbench.benchmark", f"hydra.run.dir={out_dir}", "print_config=false"]
        cache = [f"paths.cache_dir={self.args.cache_dir}"] if self.args.cache_dir else []
        quiet = ["callbacks.progress_bar=null", "callbacks.model_summary=null"]
        if self.tiny:
            # budget=gpu's sections and family settings (its samplers, its bounds) on the tiny
            # protocol: synthetic shapes, tiny networks, 320 images, 200 samples
            train = [*cache]
            cmd += ["budget=gpu", "budget.experiment=benchmark/tiny", "++budget.tiny_networks=true", *cache]
            sizing = {"budget": "gpu (tiny protocol)", "max_images_per_family": 320, "eval_samples": 200}
        elif self.plan["variant"] == "showdown":
            data = data_overrides(self.data, False, self.data_root)
            train = [*(data if self.data != "fashion_mnist" or self.data_root else []), *quiet, *cache]
            cmd += ["budget=gpu", *cache]
            sizing = {"budget": "gpu", "limit_s": round(limit)}
        else:
            n = len(FAMILIES)
            fit = (limit - 20 - BENCH_FIXED_S - n * BENCH_PER_FAMILY_S) / n
            seconds = int(max(BENCH_MIN_TRAIN_S, min(self.args.bench_seconds, fit)))
            train = [
                *(
                    data_overrides(self.data, False, self.data_root)
                    if self.data != "fashion_mnist" or self.data_root
                    else []
                ),
                f"callbacks.budget.max_train_seconds={seconds}",
                "callbacks.budget.eval_at=[0.5,1.0]",
                f"callbacks.evaluation.num_samples={self.args.eval_samples}",
                "callbacks.evaluation.metrics.extractor=in-domain",
                "callbacks.sampling.num_images=128",
                "callbacks.progress_bar=null",
                "callbacks.model_summary=null",
                *cache,
            ]
            # DDIM 10 / 25 / 50 (the own sampler, also at 2 more seeds: its FID's sampling noise) /
            # 100 evaluated, so the fastest one within that noise of the best can be named
            ddpm = ["~callbacks.sampling.samplers.ddim-250", "++callbacks.sampling.timing_only=[ancestral]"]
            cmd += [
                "budget=full",
                *cache,
                "budget.description='gpu_check mini benchmark: budget=full with its training time and sample "
                "counts cut to fit one short GPU loan'",
                "++family_overrides.ddpm=[" + ",".join(f'"{o}"' for o in ddpm) + "]",
            ]
            sizing = {
                "budget": "full (overridden)",
                "train_seconds_per_family": seconds,
                "wanted_train_seconds_per_family": self.args.bench_seconds,
                "reduced_to_fit": seconds < self.args.bench_seconds,
                "estimated_overhead_s": {"fixed": BENCH_FIXED_S, "per_family": BENCH_PER_FAMILY_S},
                "eval_at": [0.5, 1.0],
                "eval_samples": self.args.eval_samples,
                "extractor": "in-domain",
                "ddpm_samplers": "DDIM 50 (its default, evaluated at 3 seeds: the sampling noise), DDIM 10, 25 "
                "and 100 (evaluated), ancestral 1000 steps (timed only, 128 images)",
                "sampling_images": 128,
            }
        cmd.append("train_overrides=[" + ",".join(f'"{o}"' for o in train) + "]")
        return cmd, sizing

    def benchmark(self, limit: float) -> dict[str, Any]:
        cmd, sizing = self.bench_command(limit)
        run = run_guarded(cmd, limit, self.logs / "benchmark.log")
        out_dir = self.work / "benchmark"
        dest = self.kept / "benchmark"
        dest.mkdir(parents=True, exist_ok=True)
        copied = []
        for name in ("leaderboard.json", "leaderboard.md", "leaderboard.csv", "report.html", "benchmark_config.yaml"):
            if (out_dir / name).is_file():
                top = name in ("leaderboard.json", "leaderboard.md", "report.html")  # these also in OUT itself
                shutil.copy2(out_dir / name, (self.out if top else dest) / name)
                copied.append(name)
        runs = {}  # per family: what its run left, also when the benchmark itself did not finish
        families = (
            sorted(p.name for p in (out_dir / "runs").iterdir() if p.is_dir()) if (out_dir / "runs").is_dir() else []
        )
        for family in families:
            run_dir = out_dir / "runs" / family / "0"
            files = {}
            for name in ("metrics.json", "budget.json", "sampling.json", "failed.json", "eval/final.json"):
                if (run_dir / name).is_file():
                    files[name] = json.loads((run_dir / name).read_text())
                    target = dest / family / name.replace("/", "_")
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(run_dir / name, target)
            runs[family] = files
        leaderboard = json.loads((out_dir / "leaderboard.json").read_text()) if "leaderboard.json" in copied else None
        families_ok = [r["family"] for r in leaderboard or [] if r.get("status") == "ok"]
        ok = run["returncode"] == 0 and bool(families) and set(families_ok) >= set(families)
        # the results folder: the showdown's (and, to test it, the tiny run's); the check's benchmark is
        # a cut-down smoke test, not a result to keep
        keep = self.tiny or self.plan["variant"] == "showdown"
        evidence = self.write_evidence(out_dir) if keep and "leaderboard.json" in copied else None
        return {
            "evidence": evidence,
            "ok": ok,
            "command": " ".join(cmd[2:]),
            "sizing": sizing,
            "leaderboard": leaderboard,
            "leaderboard_md": (out_dir / "leaderboard.md").read_text() if "leaderboard.md" in copied else None,
            "copied": copied,
            "runs": runs,
            "process": run,
            **(
                {}
                if ok
                else {"error": f"exit {run['returncode']}, timed out {run['timed_out']}: {run['log_tail'][-800:]}"}
            ),
        }

    # --- the results folder: what docs/results/<date>-<device>/ keeps of a benchmark --------------
    def write_evidence(self, bench_dir: Path) -> dict[str, Any]:
        """<results dir>/<date>-<device>/ (default docs/results on a GPU, the work dir in tiny mode):
        the leaderboard (json, md), the self-contained report, the benchmark's resolved config, the
        sample grids and environment.json (device, driver, torch, CUDA, commit); the same folder
        as OUT/results.tar.gz, the one file to bring back from a machine that keeps nothing.
        ``git add docs/results/<name>`` then commits the evidence the docs' numbers come from."""
        env = (self.report["steps"].get("environment") or {}).get("result") or {}
        name = f"{self.report['started'][:10]}-{device_slug(env.get('gpu_name'))}"
        dest = self.results_dir / name
        shutil.rmtree(dest, ignore_errors=True)
        (dest / "grids").mkdir(parents=True)
        for file in ("leaderboard.json", "leaderboard.md", "report.html", "benchmark_config.yaml"):
            if (bench_dir / file).is_file():
                shutil.copy2(bench_dir / file, dest / file)
        for grid in sorted((bench_dir / "grids").glob("*.png")):
            shutil.copy2(grid, dest / "grids" / grid.name)
        keys = ("gpu_name", "gpu_memory_gib", "compute_capability", "driver", "torch", "torch_cuda", "cudnn")
        keys += ("triton", "lightning", "python", "cpu_count", "git_commit")
        write_json(
            dest / "environment.json",
            {
                "date": self.report["started"][:10],
                "device": env.get("gpu_name") or "cpu",
                **{k: env.get(k) for k in keys},
                "mode": self.plan["mode"],
                "variant": self.plan["variant"],
                "data": self.report["data"].get("used"),
                "setup": self.report["setup"]["status"],
                "command": "scripts/gpu_check.py " + " ".join(sys.argv[1:]),
            },
        )
        self.evidence_dir = dest
        return {"dir": str(dest), "name": name, "files": self.pack_evidence()}

    def pack_evidence(self) -> list[str]:
        """(Re)write OUT/results.tar.gz from the results folder; returns the folder's files."""
        dest = self.evidence_dir
        assert dest is not None, "write_evidence() makes the folder first"
        tmp = self.out / "results.tar.gz.tmp"
        with tarfile.open(tmp, "w:gz") as tar:
            tar.add(dest, arcname=dest.name)
        tmp.replace(self.out / "results.tar.gz")
        return sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file())

    # --- 6. the large UNet's speed and MFU -----------------------------------------------------
    def perf_gpu(self, limit: float) -> dict[str, Any]:
        """scripts/perf_gpu.py (the 35.7M-parameter UNet of experiment=cifar10_ddpm: images/s and MFU
        for fp32, bf16, channels_last, torch.compile; genbench against a hand-written loop) in the
        time that is left; its JSON and markdown join the results folder."""
        out_dir = self.work / "perf_gpu"
        shutil.rmtree(out_dir, ignore_errors=True)
        cmd = [sys.executable, str(REPO / "scripts" / "perf_gpu.py"), "--out", str(out_dir)]
        cmd += ["--time-limit", str(int(max(limit - 20, 10)))] + (["--tiny"] if self.tiny else [])
        run = run_guarded(cmd, limit, self.logs / "perf_gpu.log")
        result_file = out_dir / "perf_gpu.json"
        if not result_file.is_file():
            return {"ok": False, "command": " ".join(cmd[1:]), "process": run, "error": run["log_tail"][-800:]}
        res = json.loads(result_file.read_text())
        if self.evidence_dir is not None:
            for name in ("perf_gpu.json", "perf_gpu.md"):
                if (out_dir / name).is_file():
                    shutil.copy2(out_dir / name, self.evidence_dir / name)
            self.pack_evidence()
        failed = [n for n, r in res["settings"].items() if not r.get("ok")]
        if not (res.get("overhead") or {}).get("ok"):
            failed.append("overhead")
        return {
            "ok": run["returncode"] == 0 and not failed,
            "command": " ".join(cmd[1:]),
            "result": res,
            "markdown": (out_dir / "perf_gpu.md").read_text() if (out_dir / "perf_gpu.md").is_file() else None,
            "process": run,
            **({"error": "failed or not reached: " + ", ".join(failed)} if failed else {}),
        }

    # --- plumbing ------------------------------------------------------------------------------
    def worker_cmd(self, worker: str, *args: str) -> list[str]:
        return [sys.executable, str(Path(__file__).resolve()), "--worker", worker, *args]

    def data_args(self) -> list[str]:
        return [f"--data-override={o}" for o in data_overrides(self.data, self.tiny, self.data_root)]

    def run(self) -> int:
        c = self.clock
        self.save()
        self.step("environment", min(120, c.remaining()), self.environment)
        env_ok = self.report["steps"]["environment"]["ok"]
        no_gpu = not self.tiny and not env_ok
        # which steps run: the check (GPU) all but perf_gpu; the showdown the benchmark (budget=gpu)
        # and perf_gpu; tiny mode every step, its benchmark the showdown's on the tiny protocol
        if self.plan["variant"] == "showdown":
            names = ["benchmark", "perf_gpu"]
        else:
            names = ["throughput", "gpu_tests", "overhead", "ddp", "benchmark"] + (["perf_gpu"] if self.tiny else [])
        if no_gpu:
            for name in names:
                self.report["steps"][name] = {
                    "ok": False,
                    "skipped": True,
                    "error": "skipped: the environment step failed",
                }
        else:
            # each step leaves the later ones (that are not skipped) at least what they need: overhead
            # ~70 s, DDP ~45 s, benchmark ~170 s on a GPU
            need = (
                {"gpu_tests": 20, "overhead": 40, "ddp": 90, "benchmark": 100, "perf_gpu": 60}
                if self.tiny
                else {"gpu_tests": 45, "overhead": 60, "ddp": 30, "benchmark": 160, "perf_gpu": PERF_GPU_MIN_S}
            )

            def after(*later: str) -> float:
                return sum(need[n] for n in later if n in names and n not in self.args.skip)

            throughput_cap = 200 if self.tiny else 220
            steps: list[tuple[str, Callable[[], float], Callable[[float], dict[str, Any]], float]] = [
                (
                    "throughput",
                    lambda: min(throughput_cap, c.remaining() - after("gpu_tests", "overhead", "ddp", "benchmark")),
                    self.throughput,
                    30,
                ),
                (
                    "gpu_tests",
                    lambda: min(90, c.remaining() - after("overhead", "ddp", "benchmark")),
                    self.gpu_tests,
                    15,
                ),
                ("overhead", lambda: min(120, c.remaining() - after("ddp", "benchmark")), self.overhead, 20),
                ("ddp", lambda: min(120, c.remaining() - after("benchmark")), self.ddp, 20),
                # on a GPU the benchmark comes first: perf_gpu gets what it leaves (the tiny run keeps both)
                ("benchmark", lambda: c.remaining() - 15 - (after("perf_gpu") if self.tiny else 0), self.benchmark, 60),
                ("perf_gpu", lambda: c.remaining() - 10, self.perf_gpu, 30 if self.tiny else PERF_GPU_MIN_S),
            ]
            for name, limit, fn, minimum in steps:
                if name not in names:
                    continue
                if name in self.args.skip:  # a short re-check of one step: the others are not failures
                    self.report["steps"][name] = {"ok": True, "skipped": True, "note": "skipped by --skip"}
                    continue
                self.step(name, limit(), fn, minimum=minimum, optional=name == "perf_gpu" and not self.tiny)
        self.report["finished"] = now_iso()
        self.report["ok"] = all(s.get("ok") for s in self.report["steps"].values())
        self.save()
        md = render_markdown(self.report)
        (self.out / "gpu_check.md").write_text(md)
        print(md)
        print(f"[gpu_check] wrote {self.out / 'gpu_check.json'} and {self.out / 'gpu_check.md'}")
        return 0 if self.report["ok"] else 1


def device_slug(gpu_name: str | None) -> str:
    """The device part of a results folder's name: "NVIDIA H100 80GB HBM3" -> "nvidia-h100-80gb-hbm3";
    no GPU -> "cpu"."""
    return re.sub(r"[^a-z0-9]+", "-", (gpu_name or "cpu").lower()).strip("-") or "cpu"


def _float_env(name: str) -> float | None:
    try:
        return float(os.environ[name])
    except (KeyError, ValueError):
        return None


# ------------------------------------------------------------------------------------------------
# markdown
# ------------------------------------------------------------------------------------------------
def _fmt(v: Any, digits: int = 1) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:,.{digits}f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v).replace("|", "\\|").replace("\n", " ")


def render_markdown(rep: dict[str, Any]) -> str:
    steps = rep["steps"]
    env = (steps.get("environment") or {}).get("result") or {}
    gpu = rep["mode"] == "gpu"
    title = env.get("gpu_name") or ("CPU" if not gpu else "GPU (unknown)")
    lines = [
        f"# genbench GPU check — {rep['mode']} mode on {title}",
        "",
        f"{rep['started']}, {rep.get('elapsed_s', 0):.0f} s in all (limit {rep['time_limit_s']:.0f} s, "
        f"setup included), data: **{rep['data'].get('used', '?')}**; "
        f"overall: **{'ok' if rep.get('ok') else 'FAILED'}**.",
    ]
    if rep["data"].get("fallback_reason"):
        lines += ["", f"> Data fallback: {rep['data']['fallback_reason']}"]
    if not gpu:
        lines += ["", "> CPU smoke numbers (tiny networks, 2 steps of bf16): they prove the code path, not speed."]

    lines += ["", "## Environment", "", "| | |", "|---|---|"]
    keys = [
        "gpu_name",
        "gpu_memory_gib",
        "compute_capability",
        "driver",
        "torch",
        "torch_cuda",
        "cudnn",
        "triton",
        "lightning",
        "hydra",
        "torch_fidelity",
        "bf16_supported",
        "tf32_matmul",
        "tf32_cudnn",
        "python",
        "python_executable",
        "cpu_count",
        "cxx_compiler",
        "git_commit",
        "data_available",
    ]
    lines += [
        f"| {k} | {_fmt(env[k] if isinstance(env[k], bool | float) else str(env[k]))} |" for k in keys if k in env
    ]
    setup = rep.get("setup", {})
    lines.append(f"| setup | {_fmt(setup.get('status'))} ({_fmt(setup.get('seconds'), 0)} s) |")
    if not env:
        lines.append(f"| error | {_fmt((steps.get('environment') or {}).get('error'))} |")

    lines += _check_sections(rep) if "throughput" in steps else []
    bench = steps.get("benchmark") or {}
    sizing = bench.get("sizing") or {}
    lines += ["", f"## Benchmark (budget={sizing.get('budget', '?')})", ""]
    if sizing:
        lines.append("Settings: " + ", ".join(f"{k} = {_fmt(v)}" for k, v in sizing.items()) + ".")
        lines.append("")
    if bench.get("leaderboard_md"):
        lines.append(bench["leaderboard_md"].strip())
    else:
        lines.append(f"No leaderboard: {_fmt(bench.get('error', 'not run'))[:600]}")
    lines += sampler_table(((bench.get("runs") or {}).get("ddpm") or {}).get("sampling.json") or [])
    evidence = bench.get("evidence")
    if evidence:
        lines += [
            "",
            f"Results folder: `{evidence['dir']}` ({len(evidence['files'])} files; also `results.tar.gz` in OUT: "
            f"`tar -xzf results.tar.gz -C docs/results`).",
        ]
    if "perf_gpu" in steps:
        pg = steps["perf_gpu"]
        lines += ["", "## Large UNet: images/s and MFU (`scripts/perf_gpu.py`)", ""]
        if pg.get("markdown"):
            lines.append(pg["markdown"].split("\n", 1)[1].strip())  # without its own title
        else:
            lines.append(f"Not measured: {_fmt(pg.get('error') or pg.get('note') or 'not run')[:600]}")

    lines += ["", "## Steps", "", "| step | status | wall s | limit s |", "|---|---|---|---|"]
    if setup.get("seconds") is not None:
        lines.append(f"| setup (make setup, make data) | {_fmt(setup.get('status'))} | {_fmt(setup['seconds'], 0)} | |")
    for name, s in steps.items():
        status = (
            ("skipped" if s.get("skipped") else "ok") if s.get("ok") else ("skipped" if s.get("skipped") else "FAILED")
        )
        lines.append(f"| {name} | {status} | {_fmt(s.get('wall_seconds'))} | {_fmt(s.get('limit_s'), 0)} |")
    return "\n".join(lines) + "\n"


def _check_sections(rep: dict[str, Any]) -> list[str]:
    """The check's own sections: throughput, GPU tests, framework overhead, DDP."""
    steps = rep["steps"]
    lines: list[str] = []
    tp = (steps.get("throughput") or {}).get("families") or {}
    settings = rep["plan"]["settings"]
    lines += [
        "",
        f"## Training throughput (batch {rep['plan']['batch_size']}, batches already on the device)",
        "",
        "images/s over the timed batches; peak memory: torch.cuda.max_memory_allocated; compile s: the compiled "
        "warm-up minus the same precision's plain one; applied by: gpu_check (in the script) or model option (the "
        "config's). Loss: the same seed, weights and batches in every setting, so the first batch's loss and the "
        "mean over the timed batches show whether a setting changes the numerics (relative difference to fp32).",
        "",
        "| family | setting | precision | batches (warm-up + timed) | images/s | ms/batch | vs fp32 | peak memory MiB "
        "| warm-up s | compile s | loss, 1st batch | loss, timed mean (vs fp32) | applied by | status |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for family in FAMILIES:
        results = (tp.get(family) or {}).get("settings", {})
        extra = [{**settings[-1], "name": n} for n in results if n not in {s["name"] for s in settings}]
        for s in settings + extra:
            r = results.get(s["name"])
            if r is None:
                lines.append(f"| {family} | {s['name']} | | | | | | | | | | | | not run |")
                continue
            how = "; ".join(
                f"{k}: {r[k]}" + (f" ({r['compile_backend']})" if k == "compile" else "")
                for k in ("channels_last", "compile")
                if r.get(k)
            )
            status = "ok" if r.get("ok") else _fmt(r.get("error", "failed"))[:160]
            lines.append(
                f"| {family} | {s['name']} | {_fmt(r.get('precision', s['precision']))} | {s['warmup']} + {s['steps']} "
                f"| {_fmt(r.get('images_per_second'))} "
                f"| {_fmt(r.get('ms_per_batch'), 2)} | {_fmt(r.get('speedup_vs_fp32'), 2)} "
                f"| {_fmt(r.get('peak_memory_mib'))} "
                f"| {_fmt(r.get('warmup_seconds'), 2)} | {_fmt(r.get('compile_seconds'))} "
                f"| {_fmt(r.get('loss_first_batch'), 4)} | {_fmt(r.get('loss_mean_timed'), 4)}"
                + (f" ({r['loss_rel_diff_vs_fp32']:.1e})" if r.get("loss_rel_diff_vs_fp32") is not None else "")
                + f" | {how} | {status} |"
            )

    gt = steps.get("gpu_tests") or {}
    lines += ["", "## GPU tests (`tests/test_gpu.py`, skipped by CI: it has no GPU)", ""]
    if gt.get("counts") is not None:
        counts = ", ".join(f"{n} {k}" for k, n in gt["counts"].items()) or "nothing collected"
        failed = gt.get("failed_tests")
        lines.append(counts + (f"; failed: {', '.join(failed)}" if failed else "") + ".")
    else:
        lines.append("Not run: " + ("skipped" if gt.get("skipped") else _fmt(gt.get("error", "not run"))[:400]))

    ov = steps.get("overhead") or {}
    lines += ["", "## Framework overhead: genbench-train against a hand-written PyTorch loop", ""]
    if ov.get("markdown"):
        lines.append(ov["markdown"].strip())
    else:
        why = "skipped" if ov.get("skipped") else _fmt(ov.get("error", "not run"))[:600]
        lines.append(f"Not measured: {why}")

    ddp = steps.get("ddp") or {}
    backend = ", ".join(ddp.get("distributed_backend") or []) or "?"
    lines += ["", f"## DDP multirun (`{ddp.get('command', '–')}`; backend {backend})", ""]
    lines += [
        "| job | metrics.json | global_step | val/loss | world size | replicas identical |",
        "|---|---|---|---|---|---|",
    ]
    for j in ddp.get("jobs") or []:
        m, sync = j.get("metrics") or {}, j.get("ddp_sync") or {}
        # ddp_sync.json compares replicas, so a one-rank job has none: its size comes from the log
        ws = sync.get("world_size") or max(ddp.get("world_sizes") or [0]) or None
        same = (sync.get("max_abs_diff_parameters") == 0.0) if sync else ("n/a (one rank)" if ws == 1 else None)
        lines.append(
            f"| {j['job']} | {_fmt(j['metrics_json'])} | {_fmt(m.get('global_step'))} | {_fmt(m.get('val/loss'), 3)} "
            f"| {_fmt(ws)} | {_fmt(same)} |"
        )
    if not ddp.get("ok"):
        lines += ["", f"DDP: **failed** — {_fmt(ddp.get('error'))[:600]}"]
    return lines


def sampler_table(sampling: list[dict[str, Any]]) -> list[str]:
    """The DDPM's samplers from its sampling.json: cost, quality, and which is within the FID's
    sampling noise of the best (SamplingBenchmark's noise_seeds)."""
    if not sampling:
        return []
    noise = next((e["noise"] for e in sampling if e.get("noise")), None)
    lines = ["", "### DDPM samplers", ""]
    if noise:
        fids = noise["values"].get("eval/fid") or []
        lines += [
            f"Sampling noise: the own sampler's FID at seeds {noise['seeds']}: "
            + ", ".join(f"{v:.3f}" for v in fids)
            + f" (std {noise['std'].get('eval/fid', float('nan')):.3f}); within noise = FID at most the best + 2 std.",
            "",
        ]
    lines += [
        "| sampler | steps | images/s | FID | KID | within noise | recommended |",
        "|---|---|---|---|---|---|---|",
    ]
    for e in sampling:
        m = e.get("metrics") or {}
        lines.append(
            f"| {e['sampler']} | {e.get('steps', '')} | {_fmt(e.get('images_per_second'))} | {_fmt(m.get('eval/fid'), 2)} "
            f"| {_fmt(m.get('eval/kid_mean'), 3)} | {_fmt(e.get('within_noise'))} | {_fmt(e.get('recommended'))} |"
        )
    return lines


# ------------------------------------------------------------------------------------------------
def _names(text: str) -> list[str]:
    return [n.strip() for n in text.split(",") if n.strip()]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="the CPU smoke run (also GPU_CHECK_TINY=1)")
    ap.add_argument(
        "--showdown",
        action="store_true",
        help=f"genbench-benchmark budget=gpu and scripts/perf_gpu.py instead of the check ({SHOWDOWN_TIME_LIMIT_S} s)",
    )
    ap.add_argument(
        "--results-dir",
        help="where the benchmark's results folder <date>-<device>/ goes (default docs/results; tiny: the work dir)",
    )
    ap.add_argument("--out", help="where the results go (default: $OUT, else outputs/gpu_check/<time>)")
    ap.add_argument("--work-dir", help="run directories and checkpoints (default: outputs/gpu_check_work/<out's name>)")
    ap.add_argument(
        "--time-limit",
        type=float,
        help=f"seconds in all (default {GPU_TIME_LIMIT_S}; --showdown {SHOWDOWN_TIME_LIMIT_S}; tiny {TINY_TIME_LIMIT_S})",
    )
    ap.add_argument("--data", default="auto", choices=["auto", "fashion_mnist", "synthetic"], help="GPU mode's data")
    ap.add_argument("--batch-size", type=int, default=128, help="throughput batch size (the full protocol's)")
    ap.add_argument("--steps", type=int, default=50, help="timed training batches per throughput setting")
    ap.add_argument("--bench-seconds", type=int, default=90, help="wanted training seconds per family")
    ap.add_argument("--eval-samples", type=int, default=2000, help="benchmark evaluation sample count")
    ap.add_argument(
        "--skip",
        type=_names,
        default=[],
        help="steps to leave out: throughput,gpu_tests,overhead,ddp,benchmark,perf_gpu",
    )
    ap.add_argument("--families", type=_names, default=list(FAMILIES), help="throughput families (default all)")
    ap.add_argument("--data-root", help="Fashion-MNIST's folder (default $GPU_CHECK_DATA_ROOT, else genbench's search)")
    ap.add_argument("--cache-dir", help="genbench's cache (extractors, real features); default genbench's own")
    # internal: the worker processes
    ap.add_argument("--worker", choices=["env", "throughput"], help=argparse.SUPPRESS)
    ap.add_argument("--family", help=argparse.SUPPRESS)
    ap.add_argument("--plan", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    ap.add_argument("--data-override", action="append", default=[], help=argparse.SUPPRESS)
    ap.add_argument("--deadline", type=float, default=float("inf"), help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker == "env":
        write_json(Path(args.result), worker_env(args.data_override))
        return 0
    if args.worker == "throughput":
        plan = json.loads(Path(args.plan).read_text())
        worker_throughput(plan, args.family, args.data_override, Path(args.result), args.deadline)
        return 0

    tiny = args.tiny or os.environ.get("GPU_CHECK_TINY", "").lower() in ("1", "true", "yes")
    if tiny:
        EXTRA_ENV["OMP_NUM_THREADS"] = "1"
    stamp = datetime.datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    out = Path(args.out or os.environ.get("OUT") or REPO / "outputs" / "gpu_check" / stamp).resolve()
    out.mkdir(parents=True, exist_ok=True)
    # not under OUT: OUT is what a device tool copies back, and run directories hold checkpoints
    work = Path(args.work_dir).resolve() if args.work_dir else REPO / "outputs" / "gpu_check_work" / out.name
    limit = args.time_limit or (
        TINY_TIME_LIMIT_S if tiny else SHOWDOWN_TIME_LIMIT_S if args.showdown else GPU_TIME_LIMIT_S
    )
    t0 = _float_env("GPU_CHECK_T0") or time.time()
    return Check(args, tiny, out, work, Clock(limit, t0)).run()


if __name__ == "__main__":
    sys.exit(main())
