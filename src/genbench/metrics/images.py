"""Images on their way into torch-fidelity: checked, converted to uint8, wrapped as a Dataset.

The sampling contract gives float images in [-1, 1]; torch-fidelity wants uint8 C×H×W items
(three channels for InceptionV3). Bad input (wrong shape, NaN, out of range) is one clear error
here instead of an assertion deep inside torch-fidelity.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import Dataset

from genbench.data.base import to_uint8
from genbench.errors import GenbenchError


class UInt8ImageDataset(Dataset):
    """What torch-fidelity wants from a Dataset: each item a bare uint8 C×H×W tensor (a tuple
    would fail). ``rgb`` repeats grayscale to 3 channels for InceptionV3."""

    def __init__(self, images_u8: torch.Tensor, rgb: bool = False) -> None:
        self.images = images_u8
        self.rgb = rgb and images_u8.shape[1] == 1

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> torch.Tensor:
        x = self.images[i]
        return x.expand(3, -1, -1).contiguous() if self.rgb else x


def check_images(images: Any, what: str) -> torch.Tensor:
    """Accept uint8 [0, 255] or float [-1, 1] (the sampling contract) N×C×H×W images and return
    them as uint8 on the CPU; anything else is a clear error naming what to change."""

    if not torch.is_tensor(images):
        raise GenbenchError(f"The {what} images must be a torch.Tensor, got {type(images).__name__}.")
    if images.ndim != 4 or images.shape[1] not in (1, 3) or images.shape[-1] < 2 or images.shape[-2] < 2:
        raise GenbenchError(
            f"The {what} images must be shaped N×C×H×W with C = 1 or 3, got {tuple(images.shape)}. "
            "A single image needs a batch dimension (x[None])."
        )
    if images.shape[0] == 0:
        raise GenbenchError(f"There are no {what} images.")
    if images.dtype == torch.uint8:
        return images.detach().cpu()
    if not images.is_floating_point():
        raise GenbenchError(f"The {what} images must be uint8 [0, 255] or float [-1, 1], got {images.dtype}.")
    if not bool(torch.isfinite(images).all()):
        raise GenbenchError(f"The {what} images contain NaN or inf: the model diverged (check its training losses).")
    lo, hi = float(images.min()), float(images.max())
    if lo < -1.001 or hi > 1.001:
        raise GenbenchError(
            f"The {what} images are floats in [{lo:.3g}, {hi:.3g}], outside [-1, 1] (the sampling contract). "
            "Scale them to [-1, 1], or pass uint8 [0, 255] images."
        )
    return to_uint8(images).cpu()


def sample_uint8(
    model: Any, n: int, generator: torch.Generator | None = None, batch_size: int | None = None, **sample_kwargs: Any
) -> torch.Tensor:
    """Draw ``n`` images through the sampling contract and return them as uint8 on the CPU,
    moving each chunk off the device as soon as it is drawn (10k images stay cheap in memory).
    ``labels=`` (one class per image, for a conditional model) is handed to each chunk in its part."""
    chunk = batch_size or getattr(model, "sample_batch_size", 256)
    labels = sample_kwargs.pop("labels", None)
    if labels is not None and not isinstance(labels, int):
        labels = torch.as_tensor(labels)
        if labels.ndim != 1 or len(labels) != n:
            raise GenbenchError(f"sample_uint8(n={n}) needs one label per image, got shape {tuple(labels.shape)}.")
    out = []
    for start in range(0, n, chunk):
        b = min(chunk, n - start)
        if labels is not None:
            sample_kwargs["labels"] = labels if isinstance(labels, int) else labels[start : start + b]
        x = model.sample(b, generator=generator, **sample_kwargs)
        out.append(check_images(x, "generated"))
    return torch.cat(out)
