"""Save and requeue on SLURM's signals, at a step boundary.

SLURM signals the job: ``--signal=USR2@N`` (submitit's ``SUBMITIT_PREEMPT_SIGNAL``) shortly before
the time limit, SIGTERM on preemption, ``scontrol requeue`` or ``scancel``. :class:`SlurmRequeue`
saves ``checkpoints/last.ckpt`` at the next step boundary and then requeues through submitit
(which counts ``max_num_timeout``) or, in a plain sbatch job, with ``scontrol requeue``. The rerun
resumes from that checkpoint and continues the CSV log without the rows of steps that are not in
it (:mod:`genbench.checkpointing`), so no step is lost or logged twice.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
from typing import Any

import pytorch_lightning as pl

from genbench.checkpointing import save_last_checkpoint
from genbench.compat import mark_fetched_batch_unrun
from genbench.loggers import finish_wandb

log = logging.getLogger("genbench.cluster")


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
        self._saving = True
        try:
            path = save_last_checkpoint(trainer)
        finally:
            self._saving = False
        for logger in trainer.loggers:
            logger.save()
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
        if self._saving:  # written at on_train_batch_start: the fetched batch has not run
            mark_fetched_batch_unrun(checkpoint)
