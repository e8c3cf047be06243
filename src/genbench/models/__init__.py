"""genbench's own families as LightningModules, and loading any family's model back from a checkpoint.

Each family module declares its :class:`~genbench.registry.FamilySpec` (``SPEC``) beside its
LightningModule; importing this package registers them. Families of other packages register
through the ``genbench.families`` entry point group (see :mod:`genbench.registry`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from genbench import GenbenchError
from genbench.models import ddpm, flow_matching, gan, vae
from genbench.models.base import GenerativeModel
from genbench.models.ddpm import DDPM
from genbench.models.flow_matching import FlowMatching
from genbench.models.gan import GAN
from genbench.models.vae import VAE
from genbench.registry import families, family_of_target, register_family

for _spec in (gan.SPEC, vae.SPEC, ddpm.SPEC, flow_matching.SPEC):
    register_family(_spec)

__all__ = [
    "DDPM",
    "GAN",
    "FlowMatching",
    "VAE",
    "GenerativeModel",
    "checkpoint_family",
    "family_of_config",
    "load_model_from_checkpoint",
    "read_checkpoint",
]


def family_of_config(model_cfg: Any) -> str | None:
    """The family a ``model`` config builds (from its ``_target_``), without building it: what a
    failed job records when the model itself could not be made. None for anything unknown."""
    target = str((model_cfg or {}).get("_target_", "")) if hasattr(model_cfg, "get") else ""
    return family_of_target(target) if target else None


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint file on the CPU, turning every way it can be broken into one clear error."""
    path = Path(path)
    if not path.is_file():
        raise GenbenchError(f"Checkpoint {path} does not exist. Pass ckpt_path=<run dir>/checkpoints/last.ckpt.")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # truncated zip, pickle garbage, wrong file type...
        raise GenbenchError(
            f"Checkpoint {path} is corrupt or not a PyTorch checkpoint ({type(e).__name__}: {e}). "
            "Use another checkpoint of the run (e.g. the best one, or an earlier epoch)."
        ) from e
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise GenbenchError(f"Checkpoint {path} has no 'state_dict': it is not a Lightning checkpoint.")
    return ckpt


def checkpoint_family(ckpt: dict[str, Any], path: str | Path = "checkpoint") -> str:
    """The registered family a genbench checkpoint belongs to, or one line saying it is unknown."""
    meta = ckpt.get("genbench") or {}
    family = meta.get("family")
    known = families()
    if family not in known:
        raise GenbenchError(
            f"{path} is a checkpoint of an unknown family ({family!r}); genbench knows {', '.join(known)}. "
            "Only checkpoints written by genbench-train can be evaluated (a family from another package "
            "must be installed to load its checkpoints)."
        )
    return family


def load_model_from_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> GenerativeModel:
    """Rebuild a model from the config stored in its checkpoint and load its weights (EMA included)."""
    from hydra.utils import instantiate

    ckpt = read_checkpoint(path)
    checkpoint_family(ckpt, path)
    config = ckpt["genbench"].get("config")
    if not config or "model" not in config:
        raise GenbenchError(f"{path} carries no model config; it was not written by genbench-train.")
    model: GenerativeModel = instantiate(config["model"])
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as e:
        raise GenbenchError(f"{path}: weights do not fit the stored model config ({e}).") from e
    model.genbench_config = config
    return model.to(map_location).eval()
