"""A training config turned into a SLURM request: one task per device, the GPUs a GPU trainer
needs, a CPU for the training process plus one per DataLoader worker.

These are OmegaConf resolvers of ``conf/hydra/launcher/{slurm,local}.yaml`` (registered by
``genbench.config``), pure functions of config values so they are easy to test.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def as_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    return None


def devices_per_node(devices: Any) -> int | None:
    """How many processes Lightning runs per node for ``trainer.devices``: an int > 0 or a list of
    device ids; None for "all" (-1, "auto"), which a SLURM request cannot be sized from."""
    if isinstance(devices, Sequence) and not isinstance(devices, str):
        return len(devices)
    n = as_int(devices)
    if isinstance(devices, str) and "," in devices:
        return len([d for d in devices.split(",") if d.strip()])
    return n if n is not None and n > 0 else None


def uses_gpus(accelerator: Any) -> bool:
    return str(accelerator).lower() in {"gpu", "cuda"}


def slurm_tasks_per_node(devices: Any) -> int:
    """One SLURM task per device: Lightning's SLURMEnvironment then takes each task as a rank
    instead of spawning processes itself. "All devices" (-1) falls back to 1 here and the
    preflight check explains what to set."""
    return devices_per_node(devices) or 1


def slurm_gpus_per_node(accelerator: Any, devices: Any) -> int | None:
    """A GPU trainer asks for as many GPUs as it has devices per node; a CPU trainer for none."""
    return (devices_per_node(devices) if uses_gpus(accelerator) else None) or None


def slurm_cpus_per_task(num_workers: Any) -> int:
    """The training process plus its DataLoader workers."""
    return max(0, as_int(num_workers) or 0) + 1
