"""Checkpoints of a run directory: which one a run resumes from, whether it may, writing
``last.ckpt`` so a kill never leaves half a file, and continuing the CSV log after a resume.

Reading a checkpoint file and rebuilding a model from it is :mod:`genbench.models`' job; this
module is about the run directory and the training loop around it.
"""

from __future__ import annotations

import csv
import logging
import os
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig

from genbench.cluster.environment import in_slurm_job, slurm_restart_count
from genbench.cluster.resources import as_int
from genbench.compat import checkpoint_logger_step, last_saved_step, prepend_csv_rows
from genbench.distributed import is_rank_zero
from genbench.errors import GenbenchError
from genbench.models import GenerativeModel, checkpoint_family, read_checkpoint

log = logging.getLogger("genbench.train")

LAST = "last.ckpt"


def resolve_ckpt_path(cfg: DictConfig, output_dir: Path) -> str | None:
    """``ckpt_path``: a file to resume from, ``auto`` (this run dir's last.ckpt if it exists, for
    requeued cluster jobs) or null. Refuses to start fresh in a run directory that already has
    checkpoints, which would overwrite them. A SLURM job that was requeued (SLURM_RESTART_COUNT > 0)
    resumes from its own last.ckpt whatever ckpt_path says: that is the state it was stopped in."""
    ckpt_path = cfg.get("ckpt_path")
    last = output_dir / "checkpoints" / LAST
    if in_slurm_job() and slurm_restart_count() > 0 and last.is_file():
        log.info("SLURM restart %d of this job: resuming from its last.ckpt.", slurm_restart_count())
        ckpt_path = "auto"
    if ckpt_path == "auto":
        return str(last) if last.is_file() else None
    existing = sorted((output_dir / "checkpoints").glob("*.ckpt"))
    if ckpt_path is None and existing and is_rank_zero():
        raise GenbenchError(
            f"{output_dir} already holds checkpoints ({existing[0].name}, ...); starting afresh would overwrite "
            "them. Resume with ckpt_path=auto (or a file), or choose a new hydra.run.dir."
        )
    return None if ckpt_path is None else str(ckpt_path)


def check_resume_compatible(ckpt_path: str | Path, model: GenerativeModel) -> None:
    """The checkpoint must be of the configured family (its weights are checked by Lightning)."""
    family = checkpoint_family(read_checkpoint(ckpt_path), ckpt_path)
    if family != model.family:
        raise GenbenchError(
            f"{ckpt_path} is a '{family}' checkpoint but model={model.family} is configured: "
            f"resume with model={family}."
        )


def checkpoint_dir(trainer: pl.Trainer) -> Path:
    """Where the run's ModelCheckpoint writes (``<run>/checkpoints`` by default)."""
    for cb in trainer.checkpoint_callbacks:
        if getattr(cb, "dirpath", None):
            return Path(cb.dirpath)
    return Path(trainer.default_root_dir) / "checkpoints"


def save_last_checkpoint(trainer: pl.Trainer) -> Path:
    """Write ``<checkpoint dir>/last.ckpt`` atomically: a kill mid-write leaves the previous one.

    Collective under DDP (every rank calls it, rank 0 writes). Recorded as ModelCheckpoint's own
    "last", so a later save of the run overwrites it instead of writing ``last-v1.ckpt`` beside a
    stale ``last.ckpt``."""
    ckpt_dir = checkpoint_dir(trainer)
    last, tmp = ckpt_dir / LAST, ckpt_dir / f".{LAST}.part"
    for cb in trainer.checkpoint_callbacks:
        if getattr(cb, "save_last", False) and Path(getattr(cb, "dirpath", "") or "") == ckpt_dir:
            cb.last_model_path = str(last)
    trainer.save_checkpoint(tmp)
    if trainer.is_global_zero:
        os.replace(tmp, last)
    trainer.strategy.barrier("genbench-save-last")
    return last


def save_final_checkpoint(trainer: pl.Trainer) -> None:
    """ModelCheckpoint refreshes last.ckpt at validation or epoch end; a run stopped mid-epoch (by
    max_steps, max_time or the benchmark's budget) would otherwise leave a last.ckpt that is not
    the final model. Collective under DDP."""
    cb = trainer.checkpoint_callback
    if cb is None or not getattr(cb, "save_last", False) or not cb.dirpath:
        return
    if last_saved_step(cb) != trainer.global_step or not cb.last_model_path:
        save_last_checkpoint(trainer)


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
    if not csv_loggers or not is_rank_zero():
        return
    step = checkpoint_logger_step(torch.load(ckpt_path, map_location="cpu", weights_only=False))
    for logger in csv_loggers:
        path = Path(logger.log_dir) / "metrics.csv"
        if not path.is_file():
            continue
        with open(path, newline="") as f:
            rows = [{k: v for k, v in r.items() if v not in ("", None)} for r in csv.DictReader(f)]
        kept = [r for r in rows if as_int(r.get("step")) is not None and int(r["step"]) < step]
        prepend_csv_rows(logger, kept)
        log.info("Resumed %s: kept %d rows before step %d, dropped %d.", path, len(kept), step, len(rows) - len(kept))
