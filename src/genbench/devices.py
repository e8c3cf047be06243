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


def reduced_precision_warning(device: torch.device, precision: str) -> str | None:
    """Why bf16/16-bit precision on a CPU is almost always a mistake, or None when it is not one.
    Measured on our 2-core CPU (2026-11-26): ``torch.autocast("cpu", bfloat16)`` made an
    encoder-decoder training step ~12x slower and a bf16 matmul ran at ~1/60 of fp32. It still
    runs (and is tested), so this warns instead of refusing."""
    if device.type != "cpu" or not precision.startswith(("bf16", "16")):
        return None
    return (
        f"trainer.precision={precision} on a CPU: reduced precision is for GPUs. On CPUs without native bf16 "
        "matmuls it is far slower (measured here: a training step ~12x slower, a bf16 matmul ~1/60 of fp32). "
        "Use trainer.precision=32 on CPU."
    )


def gpu_precision() -> str:
    """bf16-mixed where the GPU supports it (Ampere and newer), else 16-mixed (``trainer=gpu``)."""
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16-mixed"
    return "16-mixed"
