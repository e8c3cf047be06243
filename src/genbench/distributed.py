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

from genbench.errors import GenbenchError


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


# --- work split across the ranks of a process group ----------------------------------------------
def rank_and_world() -> tuple[int, int]:
    """(rank, world size) of the initialised default process group; (0, 1) without one."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def share(n: int, world: int, rank: int) -> range:
    """Rank ``rank``'s contiguous part of ``n`` items split over ``world`` ranks: shares differ by
    at most one item, the earlier ranks taking the extra ones (so rank 0 has work whenever there is
    any), no padding duplicates (the shares add up to exactly ``n``), and joined in rank order they
    are ``range(n)``, so a gather in rank order restores the single-process order."""
    if world < 1 or not 0 <= rank < world:
        raise GenbenchError(f"Rank {rank} does not exist in a world of {world} ranks (0..{world - 1}).")
    return range(-(-rank * n // world), -(-(rank + 1) * n // world))  # ceil(rank n / world)...


def gather_rows(rows: torch.Tensor) -> torch.Tensor:
    """Every rank's ``rows`` concatenated along dim 0 in rank order, on every rank (collective;
    the identity without a process group). The ranks' row counts may differ, zero included:
    torchmetrics' ``gather_all_tensors`` pads to the largest and trims, so nothing is duplicated."""
    _, world = rank_and_world()
    if world == 1:
        return rows
    from torchmetrics.utilities.distributed import gather_all_tensors

    on = _collective_device()
    return torch.cat(gather_all_tensors(rows.to(on).contiguous())).to(rows.device)


def _collective_device() -> torch.device:
    """Where the process group's tensors must live (NCCL: this rank's GPU; gloo: the CPU)."""
    if torch.distributed.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def broadcast_object(obj: object, src: int = 0) -> object:
    """``obj`` of rank ``src`` on every rank (collective; the identity without a process group)."""
    _, world = rank_and_world()
    if world == 1:
        return obj
    box = [obj]
    torch.distributed.broadcast_object_list(box, src=src)
    return box[0]


def first_error(message: str | None) -> str | None:
    """The first rank's error message among every rank's ``message`` (None where it went well), on
    every rank (collective): a rank that failed before a collective would otherwise leave the others
    waiting in it forever, so all ranks ask this first and stop together."""
    _, world = rank_and_world()
    if world == 1:
        return message
    messages: list[str | None] = [None] * world
    torch.distributed.all_gather_object(messages, message)
    return next((m for m in messages if m is not None), None)
