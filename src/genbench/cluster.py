"""Running genbench on SLURM: launcher resolvers, checks before submission, and requeue/resume.

Three concerns live here so that ``models/`` and ``nets/`` never learn about a scheduler:

* resolvers that turn the trainer config into a SLURM request (``conf/hydra/launcher/slurm.yaml``:
  one task per device, the GPUs a GPU trainer needs, the nodes it spans);
* :class:`LauncherPreflight`, a Hydra callback that checks the request against the config and
  the cluster (``sinfo``) before anything is submitted, so a typo in a partition costs seconds,
  not a queue wait;
* :class:`SlurmRequeue` + :func:`resume_csv_history`: the one requeue mechanism genbench uses.
  SLURM signals the job (``--signal=USR2@signal_delay_s`` before the time limit; SIGTERM on
  preemption or ``scontrol requeue``); the callback saves ``checkpoints/last.ckpt`` at the next
  step boundary and then requeues through submitit (which counts ``max_num_timeout``) or, in a
  plain sbatch job, with ``scontrol requeue``. The rerun (``SLURM_RESTART_COUNT > 0``) resumes
  from that checkpoint (``genbench.train.resolve_ckpt_path``) and continues the CSV log without
  the rows of steps that are not in the checkpoint, so no step is lost or logged twice.
  Lightning's own SLURM auto-requeue (``hpc_ckpt_*.ckpt`` saved inside the signal handler, in the
  middle of a step, while training goes on until SLURM kills the job) is switched off, so only
  one party requeues.
"""

from __future__ import annotations

import csv
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf

from genbench import GenbenchError

log = logging.getLogger("genbench.cluster")

SUBMITIT_INSTALL = "pip install 'submitit==1.5.4' 'hydra-submitit-launcher==1.2.0' (both are genbench dependencies)"

# --- resolvers for conf/hydra/launcher/*.yaml ------------------------------------------------------


def _as_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    return None


def devices_per_node(devices: Any) -> int | None:
    """How many processes Lightning runs per node for ``trainer.devices``: an int > 0 or a list of
    device ids; None for "all" (-1, "auto"), which a SLURM request cannot be sized from."""
    if isinstance(devices, Sequence) and not isinstance(devices, str):
        return len(devices)
    n = _as_int(devices)
    if isinstance(devices, str) and "," in devices:
        return len([d for d in devices.split(",") if d.strip()])
    return n if n is not None and n > 0 else None


def uses_gpus(accelerator: Any) -> bool:
    return str(accelerator).lower() in {"gpu", "cuda"}


def slurm_tasks_per_node(devices: Any) -> int:
    """One SLURM task per device: Lightning's SLURMEnvironment then takes each task as a rank
    instead of spawning processes itself. "All devices" (-1) falls back to 1 here and the
    preflight check explains what to set."""
    return devices_per_node(devices) or 1


def slurm_gpus_per_node(accelerator: Any, devices: Any) -> int | None:
    """A GPU trainer asks for as many GPUs as it has devices per node; a CPU trainer for none."""
    return (devices_per_node(devices) if uses_gpus(accelerator) else None) or None


def slurm_cpus_per_task(num_workers: Any) -> int:
    """The training process plus its DataLoader workers."""
    return max(0, _as_int(num_workers) or 0) + 1


def register_resolvers() -> None:
    for name, fn in {
        "genbench_slurm_tasks": slurm_tasks_per_node,
        "genbench_slurm_gpus": slurm_gpus_per_node,
        "genbench_slurm_cpus": slurm_cpus_per_task,
    }.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)


register_resolvers()

# --- checks before submission ---------------------------------------------------------------------


def _sinfo(*args: str) -> list[str] | None:
    """Lines of ``sinfo -h ARGS``, or None where sinfo is missing or does not answer."""
    if shutil.which("sinfo") is None:
        return None
    try:
        out = subprocess.run(["sinfo", "-h", *args], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    return [line.strip() for line in out.stdout.splitlines() if line.strip()]


def _gres_gpus(gres: str) -> int:
    """GPUs per node from sinfo's %G (``gpu:4``, ``gpu:a100:8(S:0-1)``, ``(null)``)."""
    counts = [int(m.group(1)) for m in re.finditer(r"gpu(?::[^:,(]+)?:(\d+)", gres)]
    return max(counts, default=0)


def _memory_mb(mem: str) -> int | None:
    return _as_int(mem.rstrip("+"))


def check_partition(partition: str | None, gpus_per_node: int, mem_gb: Any, cpus_per_node: int) -> None:
    """Against ``sinfo``: the partition exists and one of its nodes has the GPUs, memory and CPUs
    a node of this job asks for. Skipped where sinfo is unavailable (submitting from elsewhere)."""
    rows = _sinfo("-o", "%P|%G|%m|%c")
    if rows is None:
        log.info("sinfo is not available: cannot check partition/resources before submission.")
        return
    parts = [r.split("|") for r in rows]
    names = sorted({p[0].rstrip("*") for p in parts})
    if partition is None:
        chosen = [p for p in parts if p[0].endswith("*")]
        where = "the default partition"
        if not chosen:
            return
    else:
        chosen = [p for p in parts if p[0].rstrip("*") == partition]
        where = f"partition '{partition}'"
        if not chosen:
            raise GenbenchError(
                f"SLURM has no partition '{partition}' (sinfo knows: {', '.join(names) or 'none'}): set "
                "hydra.launcher.partition=<one of those> (or SBATCH_PARTITION), or null for the default partition."
            )
    gpus = max(_gres_gpus(p[1]) for p in chosen)
    if gpus_per_node > gpus:
        raise GenbenchError(
            f"The job asks for {gpus_per_node} GPU(s) per node but nodes of {where} have at most {gpus} "
            f"(sinfo gres: {', '.join(sorted({p[1] for p in chosen}))}): lower trainer.devices (and "
            "hydra.launcher.gpus_per_node), raise trainer.num_nodes, or pick a GPU partition."
        )
    mem = max((_memory_mb(p[2]) or 0) for p in chosen)
    want = _as_int(mem_gb)
    if want is not None and mem and want * 1024 > mem:
        raise GenbenchError(
            f"hydra.launcher.mem_gb={want} is more than a node of {where} has ({mem} MB): lower hydra.launcher.mem_gb."
        )
    cpus = max((_as_int(p[3].rstrip("+")) or 0) for p in chosen)
    if cpus and cpus_per_node > cpus:
        raise GenbenchError(
            f"The job asks for {cpus_per_node} CPUs per node (tasks_per_node x cpus_per_task) but nodes of {where} "
            f"have {cpus}: lower hydra.launcher.cpus_per_task (or data.num_workers)."
        )


def check_launcher(cfg: DictConfig) -> None:
    """Everything about a submitit launch that can be known before submission. Raises
    :class:`GenbenchError` with one message that says what to change."""
    launcher = cfg.hydra.launcher
    target = str(launcher.get("_target_", ""))
    slurm = target.endswith("SlurmLauncher")
    try:
        import hydra_plugins.hydra_submitit_launcher.submitit_launcher  # noqa: F401
        import submitit  # noqa: F401
    except ImportError as e:
        raise GenbenchError(
            f"hydra/launcher={'slurm' if slurm else 'local'} needs submitit and the Hydra submitit launcher "
            f"({e}): {SUBMITIT_INSTALL}."
        ) from None

    trainer = cfg.get("trainer") or {}
    accelerator, devices = trainer.get("accelerator"), trainer.get("devices")
    per_node = devices_per_node(devices)
    tasks = _as_int(launcher.get("tasks_per_node")) or 1
    gpus = _as_int(launcher.get("gpus_per_node")) or 0
    nodes = _as_int(launcher.get("nodes")) or 1
    num_nodes = _as_int(trainer.get("num_nodes")) or 1
    if not slurm:
        if tasks != 1 or nodes != 1:
            raise GenbenchError(
                "hydra/launcher=local runs one process per job and lets Lightning start the DDP ranks: keep "
                "hydra.launcher.tasks_per_node=1 and nodes=1 (use hydra/launcher=slurm for multi-task jobs)."
            )
        return
    if per_node is None and (trainer.get("strategy") is not None or tasks > 1):
        raise GenbenchError(
            f"trainer.devices={devices} ('all devices') cannot size a SLURM request: set trainer.devices=N, the "
            "number of GPUs (or CPU processes) per node, e.g. trainer=ddp trainer.devices=4."
        )
    if per_node is not None and tasks != per_node:
        raise GenbenchError(
            f"hydra.launcher.tasks_per_node={tasks} but trainer.devices={devices}: Lightning under SLURM runs one "
            "task per device; leave tasks_per_node at its default (${trainer.devices}) or make them equal."
        )
    if nodes != num_nodes:
        raise GenbenchError(
            f"hydra.launcher.nodes={nodes} but trainer.num_nodes={num_nodes}: set trainer.num_nodes (the launcher "
            "follows it by default) so both agree."
        )
    if uses_gpus(accelerator):
        if gpus == 0:
            raise GenbenchError(
                f"trainer.accelerator={accelerator} but the job asks for no GPUs (hydra.launcher.gpus_per_node="
                f"{launcher.get('gpus_per_node')}): set hydra.launcher.gpus_per_node=N or use trainer=cpu."
            )
        if per_node is not None and per_node > gpus:
            raise GenbenchError(
                f"trainer.devices={devices} is more GPUs per node than the job asks for (hydra.launcher."
                f"gpus_per_node={gpus}): lower trainer.devices or raise hydra.launcher.gpus_per_node."
            )
    if shutil.which("sbatch") is None:
        raise GenbenchError(
            "hydra/launcher=slurm submits with sbatch, which is not on PATH: run from a SLURM login node, or use "
            "hydra/launcher=local to run the sweep on this machine."
        )
    cpus_per_task = _as_int(launcher.get("cpus_per_task")) or 1
    check_partition(launcher.get("partition"), gpus, launcher.get("mem_gb"), tasks * cpus_per_task)


try:
    from hydra.experimental.callback import Callback as _HydraCallback
except ImportError:  # pragma: no cover - hydra-core always ships it
    _HydraCallback = object  # type: ignore[assignment,misc]


class LauncherPreflight(_HydraCallback):  # type: ignore[misc,valid-type]
    """Hydra callback of ``hydra/launcher={slurm,local}``: runs :func:`check_launcher` in the
    submitting process at multirun start, i.e. before the sweeper builds the launcher and before
    anything reaches the queue. Errors end the process with one line and status 1."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            check_launcher(config)
        except GenbenchError as e:
            print(f"genbench: error: {e}", file=sys.stderr)
            raise SystemExit(1) from None

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        if os.environ.get("SLURM_JOB_ID") is None and "LOCAL_RANK" not in os.environ:
            log.warning("hydra/launcher only takes effect with -m (multirun); this run executes here.")


# --- requeue and resume -----------------------------------------------------------------------------


def in_slurm_job() -> bool:
    return "SLURM_JOB_ID" in os.environ


def slurm_restart_count() -> int:
    """How many times SLURM has requeued this job (0 on the first run or outside SLURM)."""
    return _as_int(os.environ.get("SLURM_RESTART_COUNT")) or 0


def _signal_by_name(name: str) -> signal.Signals:
    name = name.upper()
    return getattr(signal, name if name.startswith("SIG") else f"SIG{name}")


class SlurmRequeue(pl.Callback):
    """Save ``checkpoints/last.ckpt`` at the next step boundary after SLURM's warning signal, then
    requeue (time limit) or just stop (preemption, ``scontrol requeue``, ``scancel``).

    Why a step boundary and not inside the signal handler: a handler runs in the middle of a
    step (between a GAN's two optimizer steps, inside a DDP all-reduce), so a checkpoint written
    there can mix states; at ``on_train_batch_start`` the previous batch is trained *and logged*
    and nothing of the next has run, so the checkpoint and the CSV log agree exactly.

    Signals: ``requeue_signal`` (submitit's ``SUBMITIT_PREEMPT_SIGNAL``, default USR2; sbatch
    ``--signal=USR2@N``) means "time is nearly up: requeue me"; SIGTERM means SLURM already decided
    (preemption or ``scontrol requeue`` requeue the job themselves; ``scancel`` ends it), so the
    callback saves and exits. Under DDP every rank is signalled; the decision is all-reduced so
    all ranks save the same step together.
    """

    def __init__(self, requeue_signal: str | None = None) -> None:
        self.requeue_signal = _signal_by_name(requeue_signal or os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2"))
        self.received: set[int] = set()
        self._previous: dict[int, Any] = {}
        self._saving = False

    def _record(self, signum: int, frame: Any) -> None:
        self.received.add(signum)
        log.warning("Received %s: saving a checkpoint at the next step boundary.", signal.Signals(signum).name)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # After Lightning's SignalConnector (registered before the hooks run), so ours are in charge.
        for signum in (self.requeue_signal, signal.SIGTERM):
            self._previous[signum] = signal.getsignal(signum)
            signal.signal(signum, self._record)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._restore()

    def _restore(self) -> None:
        for signum, handler in self._previous.items():
            if handler is not None:
                signal.signal(signum, handler)
        self._previous = {}

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        requeue = trainer.strategy.reduce_boolean_decision(self.requeue_signal in self.received, all=False)
        stop = trainer.strategy.reduce_boolean_decision(bool(self.received), all=False)
        if not (requeue or stop):
            return
        path = self.save(trainer)
        for logger in trainer.loggers:
            logger.save()
        from genbench.config import finish_wandb

        finish_wandb()
        log.warning("Saved %s at step %d; %s.", path, trainer.global_step, "requeueing" if requeue else "stopping")
        previous = self._previous.get(self.requeue_signal)
        self._restore()
        if requeue and trainer.is_global_zero:
            if callable(previous) and type(getattr(previous, "__self__", None)).__name__ == "SignalHandler":
                # submitit's handler: pickles the launcher's checkpoint(), counts max_num_timeout,
                # runs `scontrol requeue` and exits.
                previous(self.requeue_signal, None)
            else:
                job = os.environ.get("SLURM_ARRAY_JOB_ID")
                job = f"{job}_{os.environ['SLURM_ARRAY_TASK_ID']}" if job else os.environ["SLURM_JOB_ID"]
                subprocess.run(["scontrol", "requeue", job], check=True, timeout=60)
        raise SystemExit(3 if requeue else 143)

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        """The batch whose start we save at has been fetched ("ready") but not run; recorded as is,
        the resumed loop counts it as done and logs its first step one too far. Record it as
        never fetched, which is the truth of the saved weights."""
        if not self._saving:
            return
        progress = checkpoint.get("loops", {}).get("fit_loop", {}).get("epoch_loop.batch_progress", {})
        for key in ("total", "current"):
            if key in progress:
                progress[key]["ready"] = progress[key]["completed"]

    def save(self, trainer: pl.Trainer) -> Path:
        """Write ``<run>/checkpoints/last.ckpt`` atomically (a kill mid-write leaves the old one)."""
        ckpt_dir = Path(trainer.default_root_dir) / "checkpoints"
        for cb in trainer.checkpoint_callbacks:
            if getattr(cb, "dirpath", None):
                ckpt_dir = Path(cb.dirpath)
                break
        last, tmp = ckpt_dir / "last.ckpt", ckpt_dir / "last.ckpt.part"
        for cb in trainer.checkpoint_callbacks:
            # Recorded as ModelCheckpoint's own "last", so the resumed run overwrites it rather
            # than writing last-v1.ckpt next to a stale last.ckpt.
            if getattr(cb, "save_last", False) and Path(getattr(cb, "dirpath", "") or "") == ckpt_dir:
                cb.last_model_path = str(last)
        self._saving = True
        try:
            trainer.save_checkpoint(tmp)  # collective under DDP; rank 0 writes
        finally:
            self._saving = False
        if trainer.is_global_zero:
            os.replace(tmp, last)
        trainer.strategy.barrier("genbench-requeue-save")
        return last


def cluster_callbacks() -> list[pl.Callback]:
    """Callbacks a run needs because of where it runs: the requeue handler inside SLURM jobs."""
    return [SlurmRequeue()] if in_slurm_job() else []


def cluster_plugins() -> list[Any]:
    """Inside SLURM, Lightning's SLURM environment without its own auto-requeue (SlurmRequeue does it)."""
    from lightning_fabric.plugins.environments import SLURMEnvironment

    return [SLURMEnvironment(auto_requeue=False)] if SLURMEnvironment.detect() else []


def checkpoint_step(ckpt: dict[str, Any]) -> int:
    """The logger step a checkpoint was taken at (Lightning logs with ``_batches_that_stepped``;
    ``global_step`` counts optimizer steps, twice per batch for a GAN)."""
    loop = ckpt.get("loops", {}).get("fit_loop", {}).get("epoch_loop.state_dict", {})
    return int(loop.get("_batches_that_stepped", ckpt.get("global_step", 0)))


def resume_csv_history(loggers: list[Any], ckpt_path: str | Path) -> None:
    """Continue each CSVLogger's ``metrics.csv`` on resume instead of losing it.

    Lightning's CSV writer deletes an existing ``metrics.csv`` when it starts, so a resumed run
    would keep only its own steps. Here the rows logged before the checkpoint's step are read
    back and written again first; rows at or after it describe steps the checkpoint does not
    contain (a crash or kill after the last save), which the resumed run trains and logs again,
    so they are dropped: every step appears once.
    """
    from pytorch_lightning.loggers import CSVLogger

    csv_loggers = [lg for lg in loggers if isinstance(lg, CSVLogger)]
    if not csv_loggers or pl.utilities.rank_zero_only.rank != 0:
        return
    import torch

    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    step = checkpoint_step(ckpt)
    for logger in csv_loggers:
        path = Path(logger.log_dir) / "metrics.csv"
        if not path.is_file():
            continue
        with open(path, newline="") as f:
            rows = [{k: v for k, v in r.items() if v not in ("", None)} for r in csv.DictReader(f)]
        kept = [r for r in rows if _as_int(r.get("step")) is not None and int(r["step"]) < step]
        writer = logger.experiment  # creating the writer deletes metrics.csv
        writer.metrics = kept + writer.metrics
        writer.save()
        log.info("Resumed %s: kept %d rows before step %d, dropped %d.", path, len(kept), step, len(rows) - len(kept))
