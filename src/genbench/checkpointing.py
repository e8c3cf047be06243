"""Checkpoints of a run directory: which one a run resumes from, whether it may, writing
``last.ckpt`` (and every other checkpoint) so a kill or a full disk never leaves half a file,
loading them without running code they might carry, and continuing the CSV log after a resume.

Reading a checkpoint file and rebuilding a model from it is :mod:`genbench.models`' job; this
module is about the run directory and the training loop around it.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from lightning_fabric.plugins import TorchCheckpointIO
from omegaconf import DictConfig

from genbench.cluster.environment import in_slurm_job, slurm_restart_count
from genbench.cluster.resources import as_int
from genbench.compat import checkpoint_logger_step, prepend_csv_rows
from genbench.distributed import is_rank_zero
from genbench.errors import GenbenchError
from genbench.io import atomic_torch_save, replace_durably
from genbench.models import GenerativeModel, checkpoint_family, read_checkpoint
from genbench.rundir import LAST, RunLayout

log = logging.getLogger("genbench.train")


def resolve_ckpt_path(cfg: DictConfig, output_dir: Path) -> str | None:
    """``ckpt_path``: a file to resume from, ``auto`` (this run dir's last.ckpt if it exists, for
    requeued cluster jobs) or null. Refuses to start fresh in a run directory that already has
    checkpoints, which would overwrite them. A SLURM job that was requeued (SLURM_RESTART_COUNT > 0)
    resumes from its own last.ckpt whatever ckpt_path says: that is the state it was stopped in."""
    ckpt_path = cfg.get("ckpt_path")
    last = RunLayout(output_dir).last_checkpoint
    if in_slurm_job() and slurm_restart_count() > 0 and last.is_file():
        log.info("SLURM restart %d of this job: resuming from its last.ckpt.", slurm_restart_count())
        ckpt_path = "auto"
    if ckpt_path == "auto":
        return str(last) if last.is_file() else None
    existing = sorted(RunLayout(output_dir).checkpoints.glob("*.ckpt"))
    if ckpt_path is None and existing and is_rank_zero():
        raise GenbenchError(
            f"{output_dir} already holds checkpoints ({existing[0].name}, ...); starting afresh would overwrite "
            "them. Resume with ckpt_path=auto (or a file), or choose a new hydra.run.dir."
        )
    return None if ckpt_path is None else str(ckpt_path)


def _flat(tree: Any, prefix: str) -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"<prefix>.a.b": 1}`` (lists stay leaves)."""
    if not isinstance(tree, dict):
        return {prefix: tree}
    return {k: v for key, sub in tree.items() for k, v in _flat(sub, f"{prefix}.{key}").items()}


#: model settings that never change a parameter's shape: listed after the ones that may
_SHAPE_FREE = {"optimizer", "optimizer_g", "optimizer_d", "scheduler", "scheduler_g", "scheduler_d", "sampler"}
_SHAPE_FREE |= {"sample_batch_size", "ema_decay", "loss", "d_steps_per_g_step", "beta", "dropout", "lr", "betas"}


def _as_override(value: Any) -> str:
    """A value as it is typed on the command line (null, true, [1,2])."""
    if value is None or isinstance(value, bool):
        return "null" if value is None else str(value).lower()
    return str(value).replace(" ", "")


def _config_differences(stored: Any, current: Any, limit: int = 4) -> list[str]:
    """``model.<key>=<checkpoint value>`` for the model settings that differ: the ones that can
    change a shape first, shallowest first (``model.latent_dim`` before the
    ``model.encoder.latent_dim`` that follows it by interpolation)."""
    if not isinstance(stored, dict) or not isinstance(current, dict):
        return []
    old, new = _flat(stored, "model"), _flat(current, "model")
    keys = sorted(
        (k for k in old.keys() | new.keys() if old.get(k) != new.get(k)),
        key=lambda k: (bool(_SHAPE_FREE & set(k.split("."))), k.count("."), k),
    )
    shown = [f"{k}={_as_override(old.get(k))}" for k in keys[:limit]]
    return shown + (["..."] if len(keys) > limit else [])


def check_resume_compatible(ckpt_path: str | Path, model: GenerativeModel) -> None:
    """The checkpoint must be of the configured family and architecture.

    Both are checked here, before anything is written or fitted: Lightning would find a shape
    mismatch only inside ``fit`` and end in a ``size mismatch for decoder.fc.weight`` traceback that
    says neither which setting differs nor how to resume. The checkpoint stores the model config it
    was trained with, so the message names the overrides that rebuild its architecture.
    """
    ckpt = read_checkpoint(ckpt_path)
    family = checkpoint_family(ckpt, ckpt_path)
    if family != model.family:
        raise GenbenchError(
            f"{ckpt_path} is a '{family}' checkpoint but model={model.family} is configured: "
            f"resume with model={family}."
        )
    stored = {k: tuple(v.shape) for k, v in ckpt["state_dict"].items() if isinstance(v, torch.Tensor)}
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    mismatched = [
        f"{k} is {list(stored[k])} in the checkpoint but {list(ours[k])} in this model"
        for k in ours
        if k in stored and stored[k] != ours[k]
    ]
    missing = [f"{k} is not in the checkpoint" for k in ours if k not in stored]
    unexpected = [f"the checkpoint has {k}, which this model lacks" for k in stored if k not in ours]
    found = mismatched + missing + unexpected
    if not found:
        return
    more = f" (and {len(found) - 2} more)" if len(found) > 2 else ""
    config = (ckpt.get("genbench") or {}).get("config") or {}
    diffs = _config_differences(config.get("model"), (getattr(model, "genbench_config", None) or {}).get("model"))
    fix = (
        f"resume with the checkpoint's own model config ({' '.join(diffs)})"
        if diffs
        else "resume with the model config the checkpoint was trained with"
    )
    raise GenbenchError(
        f"{ckpt_path} holds another {family} architecture than the configured one: {'; '.join(found[:2])}{more}. "
        f"To continue it, {fix}; to train this architecture, start a new run without ckpt_path."
    )


def checkpoint_dir(trainer: pl.Trainer) -> Path:
    """Where the run's ModelCheckpoint writes (``<run>/checkpoints`` by default)."""
    for cb in trainer.checkpoint_callbacks:
        if getattr(cb, "dirpath", None):
            return Path(cb.dirpath)
    return RunLayout(trainer.default_root_dir).checkpoints


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint reader and writer for genbench runs: safe to load, whole when saved.

    * saving (ModelCheckpoint's files, last.ckpt) goes through :func:`genbench.io.atomic_torch_save`:
      Lightning's own writer builds the file in the system's temporary directory and *copies* it
      to the checkpoint directory, so a full disk or a kill mid-copy leaves a truncated file under
      the final name (and a full disk ends in an OSError traceback). Here the file is complete and
      synced before it gets its name, a partial file is removed, and a full disk is one line;
    * loading (``trainer.fit(ckpt_path=...)``) goes through
      :func:`genbench.models.read_checkpoint`: ``weights_only=True`` with genbench's allowlist, so
      resuming from a foreign file cannot run its code, whatever ``weights_only`` Lightning passes.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options.")
        atomic_torch_save(checkpoint, path)

    def load_checkpoint(self, path: Any, map_location: Any | None = None, weights_only: bool | None = None) -> Any:
        """The checkpoint on the CPU (Lightning moves what it restores to the model's device)."""
        return read_checkpoint(path)


def use_atomic_checkpoint_io(trainer: pl.Trainer) -> None:
    """Give ``trainer`` an :class:`AtomicCheckpointIO` where it has Lightning's default writer (a
    trainer built outside genbench-train, e.g. in a notebook or a test, that uses
    ResumeCheckpoint): last.ckpt must be atomic whoever built the trainer. A custom CheckpointIO
    of the user's is left in place."""
    if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
        trainer.strategy.checkpoint_io = AtomicCheckpointIO()


def save_last_checkpoint(trainer: pl.Trainer, pending: bool = False) -> Path:
    """Write ``<checkpoint dir>/last.ckpt`` atomically: a kill, a crash or a full disk mid-write
    leaves the previous one, and no partial file (:class:`AtomicCheckpointIO`).

    With ``pending`` the file is ``.last.ckpt.pending`` instead, for the caller to promote with
    :func:`promote_pending` once the weights have proved sane. Collective under DDP (every rank
    calls it, rank 0 writes). Recorded as the "last" of the ModelCheckpoint of that directory (see
    :func:`track_last`)."""
    use_atomic_checkpoint_io(trainer)
    ckpt_dir = checkpoint_dir(trainer)
    last = ckpt_dir / (f".{LAST}.pending" if pending else LAST)
    # the full state (optimisers, loops); said explicitly, or Lightning logs "weights_only was not set,
    # defaulting to False" on every save, which reads like an unsafe load
    trainer.save_checkpoint(last, weights_only=False)
    if not pending:
        track_last(trainer, last)
    return last


def track_last(trainer: pl.Trainer, last: Path) -> None:
    """Record ``last`` (a complete last.ckpt) as the ``last_model_path`` of the ModelCheckpoint(s)
    of its directory and tell the loggers, as ModelCheckpoint does after its own saves. So a later
    save of that callback overwrites it instead of writing ``last-v1.ckpt`` beside a stale
    ``last.ckpt``, and a logger that uploads checkpoints (W&B's ``log_model``) uploads last.ckpt
    too, not only ModelCheckpoint's best."""
    from genbench.loggers import report_checkpoint

    for cb in trainer.checkpoint_callbacks:
        if Path(getattr(cb, "dirpath", "") or "") == last.parent and hasattr(cb, "last_model_path"):
            cb.last_model_path = str(last)
            report_checkpoint(trainer, cb)


def promote_pending(trainer: pl.Trainer, pending: Path) -> Path:
    """Make a pending checkpoint the run's last.ckpt (rank 0; an atomic, synced rename)."""
    last = pending.with_name(LAST)
    if trainer.is_global_zero and pending.is_file():
        replace_durably(pending, last)
    track_last(trainer, last)
    return last


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
    step = checkpoint_logger_step(read_checkpoint(ckpt_path))
    for logger in csv_loggers:
        path = Path(logger.log_dir) / "metrics.csv"
        if not path.is_file():
            continue
        with open(path, newline="") as f:
            rows = [{k: v for k, v in r.items() if v not in ("", None)} for r in csv.DictReader(f)]
        kept = [r for r in rows if as_int(r.get("step")) is not None and int(r["step"]) < step]
        prepend_csv_rows(logger, kept)
        log.info("Resumed %s: kept %d rows before step %d, dropped %d.", path, len(kept), step, len(rows) - len(kept))
