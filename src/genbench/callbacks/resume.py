"""``last.ckpt``: the checkpoint a run resumes from, exactly, after any stop.

:class:`ResumeCheckpoint` owns ``<run>/checkpoints/last.ckpt``. It writes it atomically

* every ``every_n_train_steps`` batches and/or ``every_n_minutes`` minutes, so a ``kill -9`` or a
  crash loses at most that much work (Lightning's ModelCheckpoint only writes at validation or
  epoch end: up to a whole epoch lost, everything before the first epoch ends);
* on SIGTERM and SIGINT (Ctrl-C), and on SLURM's requeue signal (``--signal=USR2@N``, submitit's
  ``SUBMITIT_PREEMPT_SIGNAL``), after which it stops the run (outside SLURM: exit status 143 /
  130 and a line saying how to resume) or requeues the SLURM job.

Always at a batch start: the previous batch is trained *and logged* and nothing of the next has
run, so the checkpoint and the CSV log agree exactly (a handler or a batch-end save would catch a
step half done: between a two-optimizer family's two steps, before an EMA update, inside a DDP
all-reduce). Every checkpoint also carries the RNG streams of every rank and the position inside
the epoch's order (:class:`genbench.reproducibility.EpochOrder`), which are restored at the first
batch of the resumed run: the resumed run then trains the same batches with the same noise as
the uninterrupted one and ends with the same weights, bit for bit, on the same machine.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from typing import Any

import pytorch_lightning as pl
import torch

from genbench.checkpointing import promote_pending, save_last_checkpoint, use_atomic_checkpoint_io
from genbench.cluster.environment import in_slurm_job, requeue_decision, requeue_job
from genbench.compat import epoch_batches_done, mark_fetched_batch_unrun
from genbench.errors import GenbenchError
from genbench.loggers import finish_wandb
from genbench.reproducibility import rng_states, set_rng_states
from genbench.stopping import clear_stop, request_stop

log = logging.getLogger("genbench.train")

#: where checkpoints keep what exact resumption needs
STATE_KEY = "genbench_resume"
EXIT_STATUS = {signal.SIGTERM: 143, signal.SIGINT: 130}


def _signal_by_name(name: str) -> signal.Signals:
    name = name.upper()
    return getattr(signal, name if name.startswith("SIG") else f"SIG{name}")


def _gather(obj: Any) -> list[Any]:
    """``obj`` of every rank (rank order); just ``[obj]`` in a single process."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return [obj]
    out: list[Any] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(out, obj)
    return out


class ResumeCheckpoint(pl.Callback):
    """Args:
    every_n_train_steps: refresh last.ckpt every n training batches (null: not by steps).
    every_n_minutes: refresh last.ckpt when this many minutes passed since the last save (null: not by time).
    handle_signals: save and stop on SIGTERM / SIGINT (and requeue on SLURM's requeue signal).
    requeue_signal: the signal that means "time is nearly up, requeue me" inside SLURM
        (default: submitit's SUBMITIT_PREEMPT_SIGNAL, else USR2).
    """

    def __init__(
        self,
        every_n_train_steps: int | None = 500,
        every_n_minutes: float | None = 5.0,
        handle_signals: bool = True,
        requeue_signal: str | None = None,
    ) -> None:
        if every_n_train_steps is not None and every_n_train_steps < 1:
            raise GenbenchError(
                f"callbacks.resume.every_n_train_steps must be >= 1 or null, got {every_n_train_steps}."
            )
        if every_n_minutes is not None and every_n_minutes <= 0:
            raise GenbenchError(f"callbacks.resume.every_n_minutes must be > 0 or null, got {every_n_minutes}.")
        self.every_n_train_steps = every_n_train_steps
        self.every_n_minutes = every_n_minutes
        self.handle_signals = handle_signals
        self.requeue_signal = _signal_by_name(requeue_signal or os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2"))
        self.received: list[int] = []
        self._previous: dict[int, Any] = {}
        self._previous_handlers: dict[int, Any] = {}
        self._saving = False
        self._batches_since_save = 0
        self._last_save = time.monotonic()
        self._rng_to_restore: dict[str, Any] | None = None
        #: the global step of the last.ckpt this run wrote last (None: none yet)
        self.last_saved_step: int | None = None
        self._pending: tuple[Any, int] | None = None

    # --- signals --------------------------------------------------------------------------------
    def _record(self, signum: int, frame: Any) -> None:
        self.received.append(signum)
        request_stop(signum)  # long loops (sampling, evaluation) give up within one iteration
        log.warning("Received %s: saving last.ckpt at the next step boundary.", signal.Signals(signum).name)

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Every checkpoint of a trainer that keeps a last.ckpt is written atomically and loaded
        safely, also where the trainer was not built by genbench-train (which installs it itself)."""
        use_atomic_checkpoint_io(trainer)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._last_save = time.monotonic()
        clear_stop()
        if not self.handle_signals:
            return
        # After Lightning's SignalConnector (registered before the hooks run), so ours are in charge.
        signums = [signal.SIGTERM, signal.SIGINT] + ([self.requeue_signal] if in_slurm_job() else [])
        for signum in signums:
            self._previous[signum] = signal.getsignal(signum)
            signal.signal(signum, self._record)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """last.ckpt is the final model (a run stopped by max_steps, max_time or a budget
        mid-epoch would otherwise keep an older one)."""
        self._restore_handlers()
        if not trainer.sanity_checking and not trainer.fast_dev_run:
            save_last_checkpoint(trainer)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        """A save still pending never proved its weights sane: it is dropped, last.ckpt stays."""
        self._restore_handlers()
        if self._pending is not None and trainer.is_global_zero:
            self._pending[0].unlink(missing_ok=True)
        self._pending = None

    def _restore_handlers(self) -> None:
        clear_stop()
        for signum, handler in self._previous.items():
            if handler is not None:
                signal.signal(signum, handler)
        self._previous = {}

    # --- when to save ---------------------------------------------------------------------------
    def _due(self, trainer: pl.Trainer) -> tuple[bool, int | None]:
        """(save now, the signal that stops the run or None), the same on every rank: rank 0's
        clock decides the time-based saves, and a signal seen by any rank counts."""
        by_steps = self.every_n_train_steps is not None and self._batches_since_save >= self.every_n_train_steps
        by_time = self.every_n_minutes is not None and time.monotonic() - self._last_save >= 60 * self.every_n_minutes
        signum = self.received[0] if self.received else 0
        if trainer.world_size > 1:  # one small all-reduce: rank 0's clock, any rank's signal
            flags = torch.tensor([float(by_time and trainer.is_global_zero), float(signum)])
            flags = flags.to(trainer.strategy.root_device)
            torch.distributed.all_reduce(flags, op=torch.distributed.ReduceOp.MAX)
            by_time, signum = bool(flags[0]), int(flags[1])
        return by_steps or by_time or bool(signum), signum or None

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self._rng_to_restore is not None:  # the first batch of a resumed run
            set_rng_states(self._rng_to_restore)
            self._rng_to_restore = None
        save, signum = self._due(trainer)
        path = None
        if save:
            # a periodic save waits for its weights' own loss (this batch) before it becomes last.ckpt
            path = self.save(trainer, verify=signum is None)
        if signum is None:
            return
        self._stop(trainer, signum, path)

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """Promote a pending save once the loss its weights gave is finite: weights that have
        already diverged (finite but huge, their loss NaN) never become last.ckpt."""
        self._batches_since_save += 1
        if self._pending is None:
            return
        path, step = self._pending
        self._pending = None
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if torch.is_tensor(loss) and not bool(torch.isfinite(loss.detach()).all()):
            if trainer.is_global_zero:
                path.unlink(missing_ok=True)
            return  # the NaN guard stops the run and names the last.ckpt that is kept
        promote_pending(trainer, path)
        self.last_saved_step = step

    def save(self, trainer: pl.Trainer, verify: bool = False) -> Any:
        """Write last.ckpt now (collective under DDP). Only call at a batch start. Weights that
        are no longer finite never replace the previous last.ckpt; with ``verify`` the file is
        pending until this batch's loss (computed with these weights) has proved finite."""
        weights = [p.detach() for p in trainer.lightning_module.parameters()]
        if weights and not bool(torch.isfinite(torch.stack([w.abs().max().float() for w in weights])).all()):
            kept = (
                f"last.ckpt of step {self.last_saved_step} is kept"
                if self.last_saved_step is not None
                else ("no checkpoint was written before")
            )
            raise GenbenchError(
                f"The weights are no longer finite at step {trainer.global_step}: training stopped and {kept}. "
                "Lower the learning rate, or try trainer.gradient_clip_val / trainer.precision=32."
            )
        self._saving = True
        try:
            path = save_last_checkpoint(trainer, pending=verify)
        finally:
            self._saving = False
        self._batches_since_save = 0
        self._last_save = time.monotonic()
        if verify:
            self._pending = (path, trainer.global_step)
        else:
            self.last_saved_step = trainer.global_step
        return path

    def _stop(self, trainer: pl.Trainer, signum: int, path: Any) -> None:
        for logger in trainer.loggers:
            logger.save()
        finish_wandb()
        self._previous_handlers = dict(self._previous)
        self._restore_handlers()
        name = signal.Signals(signum).name
        if in_slurm_job():
            requeue = trainer.is_global_zero and requeue_decision(signum, self.requeue_signal)
            log.warning(
                "%s: Saved %s at step %d; %s.", name, path, trainer.global_step, "requeueing" if requeue else "stopping"
            )
            previous = self._previous_handlers.get(self.requeue_signal)
            if requeue and requeue_job(previous if signum == self.requeue_signal else None, self.requeue_signal):
                raise SystemExit(3)
            raise SystemExit(EXIT_STATUS.get(signum, 143))
        run_dir = os.path.dirname(os.path.dirname(str(path)))
        log.warning(
            "%s: Saved %s at step %d. Resume with: genbench-train <same overrides> ckpt_path=auto hydra.run.dir=%s",
            name,
            path,
            trainer.global_step,
            run_dir,
        )
        raise SystemExit(EXIT_STATUS.get(signum, 143))

    # --- what a checkpoint carries -------------------------------------------------------------
    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        if self._saving:  # written at on_train_batch_start: the fetched batch has not run
            mark_fetched_batch_unrun(checkpoint)
        checkpoint[STATE_KEY] = {
            "epoch": trainer.current_epoch,
            "batches_done": epoch_batches_done(trainer),  # batches of this epoch already trained
            "rng": _gather(rng_states()),  # collective: every rank saves together
        }

    def on_load_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        state = checkpoint.get(STATE_KEY)
        if state is None:  # written by another tool or an older genbench: resumes, not exactly
            log.warning("The checkpoint carries no RNG / data-order state: the resumed run will not be exact.")
            return
        datamodule = trainer.datamodule
        if datamodule is not None and hasattr(datamodule, "resume_train_order"):
            datamodule.resume_train_order(state["epoch"], state["batches_done"])
        ranks = state["rng"]
        if len(ranks) == trainer.world_size:
            self._rng_to_restore = ranks[trainer.global_rank]
        else:
            log.warning(
                "The checkpoint was written by %d rank(s), this run has %d: RNG streams are not restored.",
                len(ranks),
                trainer.world_size,
            )


def cluster_callbacks(callbacks: list[pl.Callback]) -> list[pl.Callback]:
    """Callbacks a run needs because of where it runs: inside a SLURM job, a ResumeCheckpoint
    (signals -> last.ckpt -> requeue) even where the callbacks config has none."""
    if in_slurm_job() and not any(isinstance(cb, ResumeCheckpoint) for cb in callbacks):
        return [ResumeCheckpoint(every_n_train_steps=None, every_n_minutes=None)]
    return []
