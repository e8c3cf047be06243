"""What a run does differently inside a SLURM job.

SLURM signals the job (``--signal=USR2@N`` before the time limit; SIGTERM on preemption,
``scontrol requeue``, ``scancel --signal=TERM`` or ``scancel``); :class:`genbench.callbacks.ResumeCheckpoint`
saves ``last.ckpt`` at the next step boundary and :func:`requeue_job` decides whether this job
requeues itself, and the rerun (``SLURM_RESTART_COUNT > 0``) resumes from it
(:func:`genbench.checkpointing.resolve_ckpt_path`). Lightning's own SLURM auto-requeue
(``hpc_ckpt_*.ckpt`` saved inside the signal handler, in the middle of a step, while training goes
on until SLURM kills the job) is switched off, so only one party requeues.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
from typing import Any

from genbench.cluster.resources import as_int

log = logging.getLogger("genbench.cluster")


def in_slurm_job() -> bool:
    return "SLURM_JOB_ID" in os.environ


def slurm_restart_count() -> int:
    """How many times SLURM has requeued this job (0 on the first run or outside SLURM)."""
    return as_int(os.environ.get("SLURM_RESTART_COUNT")) or 0


def job_id() -> str:
    """This job's id as scontrol knows it (``<array job>_<task>`` for an array task)."""
    array = os.environ.get("SLURM_ARRAY_JOB_ID")
    return f"{array}_{os.environ['SLURM_ARRAY_TASK_ID']}" if array else os.environ["SLURM_JOB_ID"]


def job_state() -> str | None:
    """This job's state as squeue reports it (RUNNING, CANCELLED, PREEMPTED...), None if unknown."""
    if shutil.which("squeue") is None:
        return None
    try:
        out = subprocess.run(["squeue", "-h", "-j", job_id(), "-o", "%T"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None


def requeue_decision(signum: int, requeue_signal: int) -> bool:
    """Whether this SLURM job must requeue itself after saving its checkpoint for ``signum``.

    * the requeue signal (time limit near): yes;
    * SIGTERM while the job is still RUNNING: a bare signal (``scancel --signal=TERM``, an admin),
      yes. In any other state SLURM has decided: a preemption with ``PreemptMode=REQUEUE``
      requeues the job itself, ``scancel`` cancels it (a cancelled job is never requeued behind
      the user's back);
    * SIGINT: never.
    """
    if signum == requeue_signal:
        return True
    return signum == signal.SIGTERM and job_state() == "RUNNING"


def requeue_job(previous_handler: Any, requeue_signal: int) -> bool:
    """Requeue this job: through submitit's own handler when submitit launched the job and
    installed one for ``requeue_signal`` (it counts ``max_num_timeout``, requeues and exits), else
    with ``scontrol requeue``. False (with a warning) when the requeue failed."""
    if callable(previous_handler) and type(getattr(previous_handler, "__self__", None)).__name__ == "SignalHandler":
        previous_handler(requeue_signal, None)
        return True
    try:
        subprocess.run(["scontrol", "requeue", job_id()], check=True, timeout=60, capture_output=True)
    except (OSError, subprocess.SubprocessError) as e:
        log.warning("scontrol requeue %s failed (%s): the job stops here; resume it with ckpt_path=auto.", job_id(), e)
        return False
    log.info("Requeued job %s with scontrol.", job_id())
    return True


def cluster_plugins() -> list[Any]:
    """Inside SLURM, Lightning's SLURM environment without its own auto-requeue (ResumeCheckpoint does it)."""
    from lightning_fabric.plugins.environments import SLURMEnvironment

    return [SLURMEnvironment(auto_requeue=False)] if SLURMEnvironment.detect() else []
