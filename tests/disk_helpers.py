"""A callback that fills the file system of the run directory at a chosen batch.

Used by subprocess tests (``+callbacks.fill={_target_: disk_helpers.FillDiskAt, ...}`` with the
tests folder on PYTHONPATH) on a small tmpfs: the disk runs full for real, at a reproducible step,
after the run has written its first last.ckpt, so the next save meets a real ENOSPC.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import pytorch_lightning as pl


class FillDiskAt(pl.Callback):
    """At the start of batch ``batch`` (counted from 0 over the whole run): record the SHA-256 of
    ``<checkpoint dir>/last.ckpt`` in ``record`` (a path off the full disk), then write ``filler``
    until the file system refuses (ENOSPC)."""

    def __init__(self, batch: int, filler: str, record: str) -> None:
        self.batch = batch
        self.filler = Path(filler)
        self.record = Path(record)
        self.seen = 0

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, i: int) -> None:
        if self.seen == self.batch:
            last = Path(trainer.default_root_dir) / "checkpoints" / "last.ckpt"
            self.record.write_text(hashlib.sha256(last.read_bytes()).hexdigest())
            block = b"\0" * (1 << 16)
            fd = os.open(self.filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                while True:
                    os.write(fd, block)
            except OSError:
                pass
            finally:
                os.close(fd)
        self.seen += 1
