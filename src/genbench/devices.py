"""Which device and precision a run uses: the one place that turns "auto" into a choice."""

from __future__ import annotations

import torch

from genbench.errors import GenbenchError

DEVICE_CHOICES = ("auto", "cpu", "cuda")


def resolve_device(name: str) -> torch.device:
    """``auto`` (a GPU when one is visible, else the CPU), ``cpu`` or ``cuda``; asking for a GPU
    that is not there is a clear error rather than a CUDA traceback later."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in DEVICE_CHOICES:
        raise GenbenchError(f"Unknown device '{name}': use one of {', '.join(DEVICE_CHOICES)}.")
    if name == "cuda" and not torch.cuda.is_available():
        raise GenbenchError("device=cuda but no GPU is visible: use device=auto or cpu.")
    return torch.device(name)


def gpu_precision() -> str:
    """bf16-mixed where the GPU supports it (Ampere and newer), else 16-mixed (``trainer=gpu``)."""
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16-mixed"
    return "16-mixed"
