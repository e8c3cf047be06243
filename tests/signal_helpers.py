"""Callbacks that deliver a real signal to the training process at a chosen batch.

Used by subprocess tests (``+callbacks.kill={_target_: signal_helpers.SignalAt, ...}`` with the
tests folder on PYTHONPATH): the signal is a real one, sent by the kernel like ``kill`` would; the
callback only picks a reproducible moment, so the test never races the training loop.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from typing import Any

import pytorch_lightning as pl


class SignalAt(pl.Callback):
    def __init__(self, batch: int, signal_name: str = "SIGKILL") -> None:
        self.batch = batch
        self.signum = getattr(signal, signal_name)
        self.seen = 0

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, i: int) -> None:
        if self.seen == self.batch:
            os.kill(os.getpid(), self.signum)
        self.seen += 1


class SignalAfterValidation(pl.Callback):
    """Sends a signal ``delay`` seconds after the first validation ends, i.e. while the epoch-end
    work that follows it (sample grids, evaluations) is running."""

    def __init__(self, delay: float = 0.5, signal_name: str = "SIGTERM") -> None:
        self.delay = delay
        self.signum = getattr(signal, signal_name)
        self.sent = False

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.sent and not trainer.sanity_checking:
            self.sent = True
            threading.Timer(self.delay, os.kill, (os.getpid(), self.signum)).start()


class SlowDown(pl.Callback):
    """Sleeps after each training batch: a job long enough in time for a scheduler to act on it,
    without changing a single number it computes."""

    def __init__(self, seconds: float = 0.5) -> None:
        self.seconds = seconds

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        time.sleep(self.seconds)
