"""Checks before a sweep reaches the queue, so a typo in a partition costs seconds, not a queue wait.

:class:`LauncherPreflight` is a Hydra callback of ``hydra/launcher={slurm,local}``: at multirun
start, in the submitting process, before the sweeper builds the launcher, it checks the request
against the training config (tasks per node = devices, GPUs for a GPU trainer, nodes) and against
the cluster as ``sinfo`` describes it (the partition exists; a node has the GPUs, memory and CPUs).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
from typing import Any

from hydra.experimental.callback import Callback as HydraCallback
from omegaconf import DictConfig

from genbench.cluster.resources import as_int, devices_per_node, uses_gpus
from genbench.errors import GenbenchError, user_errors
from genbench.extras import require_extra

log = logging.getLogger("genbench.cluster")

#: how long sinfo may take to answer; a slurmctld that does not answer in this time will not take jobs either
SINFO_TIMEOUT_S = 30


def _unreachable(reason: str) -> GenbenchError:
    conf = os.environ.get("SLURM_CONF")
    where = f"SLURM_CONF={conf}" if conf else "SLURM_CONF (unset: the default slurm.conf or DNS SRV records)"
    return GenbenchError(
        f"SLURM is not reachable ({reason}): check {where} and that slurmctld is up (sinfo must answer), or use "
        "hydra/launcher=local to run the sweep on this machine."
    )


def _first_error_line(stderr: str) -> str:
    """The line of sinfo's stderr that says why: its ``fatal:`` line where there is one (SLURM
    prints retries and DNS lookups first), else its first line."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    fatal = [line for line in lines if "fatal" in line.lower()]
    return (fatal or lines or ["no message"])[0]


def _sinfo(*args: str) -> list[str] | None:
    """Lines of ``sinfo -h ARGS``; None where sinfo is not installed (submitting from elsewhere).

    An installed sinfo that fails or does not answer means no SLURM controller can be reached, so
    sbatch would fail too, after Hydra has started the sweep and with a traceback: that is a
    :class:`GenbenchError` here, before anything is submitted.
    """
    if shutil.which("sinfo") is None:
        return None
    try:
        out = subprocess.run(["sinfo", "-h", *args], capture_output=True, text=True, timeout=SINFO_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise _unreachable(f"sinfo did not answer within {SINFO_TIMEOUT_S} s") from None
    except OSError as e:
        raise _unreachable(f"sinfo cannot run: {e}") from None
    if out.returncode != 0:
        raise _unreachable(f"sinfo exited with status {out.returncode}: {_first_error_line(out.stderr)}")
    return [line.strip() for line in out.stdout.splitlines() if line.strip()]


def _gres_gpus(gres: str) -> int:
    """GPUs per node from sinfo's %G (``gpu:4``, ``gpu:a100:8(S:0-1)``, ``(null)``)."""
    counts = [int(m.group(1)) for m in re.finditer(r"gpu(?::[^:,(]+)?:(\d+)", gres)]
    return max(counts, default=0)


def _memory_mb(mem: str) -> int | None:
    return as_int(mem.rstrip("+"))


def check_partition(partition: str | None, gpus_per_node: int, mem_gb: Any, cpus_per_node: int) -> None:
    """Against ``sinfo``: the partition exists and one of its nodes has the GPUs, memory and CPUs
    a node of this job asks for. Skipped where sinfo is not installed (submitting from elsewhere);
    an error where it is installed but SLURM does not answer."""
    rows = _sinfo("-o", "%P|%G|%m|%c")
    if rows is None:
        log.info("sinfo is not installed: cannot check partition/resources before submission.")
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
    want = as_int(mem_gb)
    if want is not None and mem and want * 1024 > mem:
        raise GenbenchError(
            f"hydra.launcher.mem_gb={want} is more than a node of {where} has ({mem} MB): lower hydra.launcher.mem_gb."
        )
    cpus = max((as_int(p[3].rstrip("+")) or 0) for p in chosen)
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
    require_extra("slurm", f"hydra/launcher={'slurm' if slurm else 'local'}")

    trainer = cfg.get("trainer") or {}
    accelerator, devices = trainer.get("accelerator"), trainer.get("devices")
    per_node = devices_per_node(devices)
    tasks = as_int(launcher.get("tasks_per_node")) or 1
    gpus = as_int(launcher.get("gpus_per_node")) or 0
    nodes = as_int(launcher.get("nodes")) or 1
    num_nodes = as_int(trainer.get("num_nodes")) or 1
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
    cpus_per_task = as_int(launcher.get("cpus_per_task")) or 1
    check_partition(launcher.get("partition"), gpus, launcher.get("mem_gb"), tasks * cpus_per_task)


class LauncherPreflight(HydraCallback):
    """Hydra callback of ``hydra/launcher={slurm,local}``: runs :func:`check_launcher` in the
    submitting process at multirun start, i.e. before the sweeper builds the launcher and before
    anything reaches the queue. Errors end the process with one line and status 1."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        with user_errors():
            check_launcher(config)

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        if os.environ.get("SLURM_JOB_ID") is None and "LOCAL_RANK" not in os.environ:
            log.warning("hydra/launcher only takes effect with -m (multirun); this run executes here.")
