"""What a run does differently inside a SLURM job.

SLURM signals the job (``--signal=USR2@N`` before the time limit; SIGTERM on preemption or
``scontrol requeue``); :class:`genbench.callbacks.SlurmRequeue` saves ``last.ckpt`` at the next
step boundary and requeues, and the rerun (``SLURM_RESTART_COUNT > 0``) resumes from it
(:func:`genbench.checkpointing.resolve_ckpt_path`). Lightning's own SLURM auto-requeue
(``hpc_ckpt_*.ckpt`` saved inside the signal handler, in the middle of a step, while training goes
on until SLURM kills the job) is switched off, so only one party requeues.
"""

from __future__ import annotations

import os
from typing import Any

import pytorch_lightning as pl

from genbench.cluster.resources import as_int


def in_slurm_job() -> bool:
    return "SLURM_JOB_ID" in os.environ


def slurm_restart_count() -> int:
    """How many times SLURM has requeued this job (0 on the first run or outside SLURM)."""
    return as_int(os.environ.get("SLURM_RESTART_COUNT")) or 0


def cluster_callbacks() -> list[pl.Callback]:
    """Callbacks a run needs because of where it runs: the requeue handler inside SLURM jobs."""
    from genbench.callbacks.requeue import SlurmRequeue

    return [SlurmRequeue()] if in_slurm_job() else []


def cluster_plugins() -> list[Any]:
    """Inside SLURM, Lightning's SLURM environment without its own auto-requeue (SlurmRequeue does it)."""
    from lightning_fabric.plugins.environments import SLURMEnvironment

    return [SLURMEnvironment(auto_requeue=False)] if SLURMEnvironment.detect() else []
