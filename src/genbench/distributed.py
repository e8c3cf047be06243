"""Processes and ranks: who is rank zero, what a DDP child runs, and jobs that leave no
distributed state behind.

Rank: Lightning's ``rank_zero_only.rank`` is the single source of truth. Lightning sets it when
it is imported, from the variables every launcher exports (``RANK``, ``LOCAL_RANK`` in the DDP
children it spawns, ``SLURM_PROCID`` in each SLURM task), and again once a Trainer's strategy
knows the global rank, so asking it is right before, during and after a fit.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from pytorch_lightning.utilities import rank_zero_only


def is_rank_zero() -> bool:
    """True in the process that writes run files (rank 0 of a DDP job, the first SLURM task)."""
    return getattr(rank_zero_only, "rank", 0) == 0


def ddp_child_command(local_rank: int) -> tuple[list[str], str]:
    """The command Lightning's DDP launcher runs for ranks > 0 under Hydra.

    Lightning's own version re-uses ``sys.argv``: inside a multirun that contains ``-m`` and the
    sweep, so every child re-launches the whole sweep, and ``hydra.run.dir`` points to a new
    directory. Here each child re-composes exactly this job (its resolved task overrides) in this
    job's output directory, writes no ``.hydra`` folder and no log file of its own.
    """
    from hydra.core.hydra_config import HydraConfig

    hc = HydraConfig.get()
    out_dir = str(hc.runtime.output_dir).replace("'", "\\'")
    command = [sys.executable, "-m", "genbench.train", f"--config-name={hc.job.config_name}"]
    command += list(hc.overrides.task)
    command += [
        f"hydra.run.dir='{out_dir}'",
        "hydra.output_subdir=null",
        f"hydra.job.name={hc.job.name}_rank{local_rank}",
        "hydra/job_logging=disabled",
        "hydra/hydra_logging=disabled",
    ]
    return command, os.getcwd()


@contextmanager
def isolated_job() -> Iterator[None]:
    """Leave no distributed state behind a training job.

    In a sequential Hydra multirun every job runs in the same process. After a DDP job,
    Lightning has left a live process group (whose peers have exited) and MASTER_PORT /
    WORLD_SIZE / ... in ``os.environ``; the next job would join that dead group and crash. So the
    environment is restored and the process group destroyed when each job ends.
    """
    saved_env = dict(os.environ)
    try:
        yield
    finally:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
        for key in set(os.environ) - set(saved_env):
            del os.environ[key]
        os.environ.update(saved_env)
