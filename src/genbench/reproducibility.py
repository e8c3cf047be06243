"""Randomness that does not depend on where it runs or on what ran before.

Two ideas every part of genbench relies on, kept in one place:

* :func:`randn` draws noise on the *generator's* device and then moves it: a CPU
  ``torch.Generator`` gives the same samples whether the model runs on a CPU or a GPU, which is
  what makes "a fixed generator gives the same images on every device" true;
* :func:`preserved_training_state` runs a block (an evaluation, a sample grid, a sampling
  benchmark) and afterwards restores every RNG stream and every submodule's train/eval flag, so
  measuring a model can never change what training does next;
* :func:`rng_states` / :func:`set_rng_states` and :class:`EpochOrder` (the training order as a
  function of seed and epoch) are what a checkpoint carries so that a resumed run continues
  exactly as the uninterrupted one would have.

Nothing here knows about Lightning, Hydra or the families: ``nets/``, ``diffusion/`` and
``models/`` may all import it.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator, Sequence, Sized
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch.utils.data import DistributedSampler


def randn(
    shape: Sequence[int],
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Standard normal noise of ``shape`` on ``device``, drawn on the generator's device (so a
    CPU generator gives the same numbers whatever device the result lives on)."""
    draw_on = generator.device if generator is not None else device
    return torch.randn(tuple(shape), generator=generator, device=draw_on, dtype=dtype).to(device)


@contextmanager
def preserved_training_state(module: torch.nn.Module) -> Iterator[None]:
    """Restore all RNG streams (torch CPU and the current CUDA device, numpy, python) and each
    submodule's train/eval flag after the block, so an evaluation cannot change what training
    does next (same batches, same dropout masks, same noise)."""
    py_state, np_state = random.getstate(), np.random.get_state()
    modes = [(m, m.training) for m in module.modules()]
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() and torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=devices):
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)
            for m, training in modes:
                m.training = training


def rng_states() -> dict[str, Any]:
    """Every RNG stream a training step may draw from: torch CPU, every CUDA device, numpy and
    python. Saved in checkpoints so a resumed run draws the same noise as an uninterrupted one.
    Only tensors and plain Python values, so checkpoints still load with ``weights_only=True``."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    """Restore what :func:`rng_states` captured (CUDA only where it was captured and is present)."""
    torch.set_rng_state(states["torch"])
    kind, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    random.setstate(tuple(states["python"]))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


class EpochOrder(DistributedSampler):
    """The training order: a permutation that is a pure function of (seed, epoch), which can
    start part-way through an epoch, on one process or sharded over DDP ranks.

    A plain shuffled DataLoader draws its order from the global RNG when its iterator is created,
    so a run resumed mid-epoch sees other batches than the uninterrupted run did. Here epoch ``e``
    is always ``randperm(n)`` of a generator seeded with (seed, e), and :meth:`resume_at` skips
    the batches a checkpoint already trained. Lightning calls :meth:`set_epoch` before each epoch.

    Under DDP each rank takes every ``num_replicas``-th index of that permutation (padded to equal
    shares as ``DistributedSampler`` does). Being a ``DistributedSampler`` itself, Lightning leaves
    it in place instead of swapping in its own sampler, which could not restart mid-epoch: so a
    DDP run resumes bit-exactly too, each rank skipping the batches it already trained."""

    def __init__(self, data_source: Sized, seed: int, batch_size: int, num_replicas: int = 1, rank: int = 0) -> None:
        super().__init__(
            data_source,  # type: ignore[arg-type]
            num_replicas=num_replicas,
            rank=rank,
            shuffle=True,
            seed=int(seed),
            drop_last=False,
        )
        self.data_source = data_source
        self.batch_size = int(batch_size)
        self._resume: tuple[int, int] | None = None

    def resume_at(self, epoch: int, batches_done: int) -> None:
        """The next iteration of ``epoch`` starts after this rank's first ``batches_done`` batches."""
        self._resume = (int(epoch), int(batches_done))

    def order(self, epoch: int) -> list[int]:
        """This rank's indices of ``epoch``, in training order."""
        g = torch.Generator().manual_seed((self.seed * 1_000_003 + epoch) % 2**63)
        indices = torch.randperm(len(self.data_source), generator=g).tolist()
        if self.num_replicas == 1:
            return indices
        padding = self.total_size - len(indices)  # equal shares: repeat the start, as DistributedSampler
        indices += (indices * math.ceil(padding / len(indices)))[:padding]
        return indices[self.rank : self.total_size : self.num_replicas]

    def __iter__(self) -> Iterator[int]:
        skip = 0
        if self._resume is not None and self._resume[0] == self.epoch:
            skip = self._resume[1] * self.batch_size
        self._resume = None
        yield from self.order(self.epoch)[skip:]

    def __len__(self) -> int:
        return self.num_samples
