"""Randomness that does not depend on where it runs or on what ran before.

Two ideas every part of genbench relies on, kept in one place:

* :func:`randn` draws noise on the *generator's* device and then moves it: a CPU
  ``torch.Generator`` gives the same samples whether the model runs on a CPU or a GPU, which is
  what makes "a fixed generator gives the same images on every device" true;
* :func:`preserved_training_state` runs a block (an evaluation, a sample grid, a sampling
  benchmark) and afterwards restores every RNG stream and every submodule's train/eval flag, so
  measuring a model can never change what training does next.

Nothing here knows about Lightning, Hydra or the families: ``nets/``, ``diffusion/`` and
``models/`` may all import it.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import torch


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
