"""Verify that every DDP rank ends training with the same weights.

DDP keeps replicas identical only if every update is synchronised; a manual-optimisation bug
(an optimiser stepping on unsynchronised gradients) makes them drift silently. At the end of
training each rank computes a cheap fingerprint of every parameter, rank 0 compares them and
writes ``ddp_sync.json``; a mismatch is an error.

BatchNorm running statistics are buffers, not weights: DDP broadcasts rank 0's copy at the start
of every forward, so between forwards they legitimately differ by the last local update. Their
difference is reported, not enforced (only rank 0's copy is ever checkpointed).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytorch_lightning as pl
import torch

from genbench import GenbenchError
from genbench.io import atomic_write_bytes


def fingerprint(tensors: list[torch.Tensor]) -> torch.Tensor:
    """Per tensor: sum and sum of squares, in float64."""
    values = []
    for t in tensors:
        t = t.detach().double()
        values += [t.sum(), t.pow(2).sum()]
    return torch.stack(values) if values else torch.zeros(1, dtype=torch.float64)


class DDPSyncCheck(pl.Callback):
    def __init__(self, atol: float = 1e-6, filename: str = "ddp_sync.json") -> None:
        self.atol = atol
        self.filename = filename

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.world_size < 2:
            return
        params = list(pl_module.parameters())
        buffers = [b for b in pl_module.buffers() if b.is_floating_point()]
        gathered = {
            name: trainer.strategy.all_gather(fingerprint(ts).to(pl_module.device)).cpu()  # (world_size, n)
            for name, ts in (("parameters", params), ("buffers", buffers))
        }
        diffs = {name: float((g - g[0]).abs().max()) for name, g in gathered.items()}
        if trainer.is_global_zero:
            report = {
                "world_size": trainer.world_size,
                "num_parameter_tensors": len(params),
                "max_abs_diff_parameters": diffs["parameters"],
                "max_abs_diff_buffers": diffs["buffers"],
                "rank_parameter_checksums": [float(row.sum()) for row in gathered["parameters"]],
            }
            Path(trainer.default_root_dir).mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(Path(trainer.default_root_dir) / self.filename, json.dumps(report, indent=2).encode())
        if diffs["parameters"] > self.atol:
            raise GenbenchError(
                f"DDP ranks ended with different weights (max |diff| {diffs['parameters']:.3g} > {self.atol}): "
                "gradients are not synchronised. Check manual optimisation and rank-local updates."
            )
