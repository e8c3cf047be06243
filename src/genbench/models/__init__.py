"""genbench's own families as LightningModules, and loading any family's model back from a checkpoint.

Each family module declares its :class:`~genbench.registry.FamilySpec` (``SPEC``) beside its
LightningModule; importing this package registers them. Families of other packages register
through the ``genbench.families`` entry point group (see :mod:`genbench.registry`).
"""

from __future__ import annotations

import pickle
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
    "CHECKPOINT_SAFE_GLOBALS",
    "DDPM",
    "GAN",
    "FlowMatching",
    "VAE",
    "GenerativeModel",
    "checkpoint_family",
    "family_of_config",
    "load_checkpoint_file",
    "load_model_from_checkpoint",
    "read_checkpoint",
]


def family_of_config(model_cfg: Any) -> str | None:
    """The family a ``model`` config builds (from its ``_target_``), without building it: what a
    failed job records when the model itself could not be made. None for anything unknown."""
    target = str((model_cfg or {}).get("_target_", "")) if hasattr(model_cfg, "get") else ""
    return family_of_target(target) if target else None


#: Python objects a genbench checkpoint may hold beyond what ``torch.load(weights_only=True)``
#: accepts by itself (tensors, dtypes, dicts, OrderedDicts, lists, tuples, strings, numbers, None).
#: None: ``get_unsafe_globals_in_checkpoint`` finds no other global in real checkpoints of every
#: family (gan, vae, ddpm, flow_matching: their hyperparameters are plain values, the stored
#: config is a resolved container, the RNG states are tensors and ints, ModelCheckpoint keeps its
#: paths as strings; ``tests/test_safe_loading.py`` checks this on fresh checkpoints). An object a
#: checkpoint must carry from now on is added here, and only a class whose unpickling runs no code.
CHECKPOINT_SAFE_GLOBALS: tuple[Any, ...] = ()


def load_checkpoint_file(path: str | Path) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU, with :data:`CHECKPOINT_SAFE_GLOBALS`.

    Every checkpoint genbench opens (``genbench-eval``, a resume, Lightning's own restore through
    :class:`genbench.checkpointing.AtomicCheckpointIO`) is read here: a checkpoint is a pickle, and
    unpickling with ``weights_only=False`` runs whatever code the file names, so a checkpoint from
    elsewhere could run code on the machine that evaluates it. A file that names any other Python
    object is refused with one line (:class:`GenbenchError`) before any of it is built; other
    failures (a truncated or foreign file) are raised as they are, for the caller to word."""
    with torch.serialization.safe_globals(list(CHECKPOINT_SAFE_GLOBALS)):
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            unsafe = _unsafe_globals(path)
            if not unsafe:
                raise pickle.UnpicklingError(_weights_only_reason(str(e))) from None
            raise GenbenchError(
                f"Refusing checkpoint {path}: it holds Python objects genbench does not load ({', '.join(unsafe)}), "
                "and unpickling them could run arbitrary code. Only use checkpoints you trust; to use a trusted "
                "one, re-save it with tensors and plain values only (its state_dict and the config genbench-train "
                "stores), or train it again with genbench-train."
            ) from None


def _unsafe_globals(path: str | Path) -> list[str]:
    """The globals of a checkpoint outside the allowlist, read from its pickle opcodes without
    running them (empty for a file that is not a torch.save zip: such a file is corrupt instead)."""
    allowed = {f"{g.__module__}.{g.__qualname__}" for g in CHECKPOINT_SAFE_GLOBALS}
    try:
        return [g for g in torch.serialization.get_unsafe_globals_in_checkpoint(path) if g not in allowed]
    except Exception:  # noqa: BLE001 - not a zip checkpoint, unreadable: not a question of globals
        return []


def _weights_only_reason(message: str) -> str:
    """The reason inside torch's long weights_only message ("Unsupported operand 103"), which
    otherwise tells the user to retry with weights_only=False: the one thing genbench must not do."""
    marker = "WeightsUnpickler error:"
    if marker not in message:
        return message.splitlines()[0] if message else "not a checkpoint"
    reason = message.split(marker, 1)[1].split("Check the documentation", 1)[0]
    return " ".join(reason.split()) or "not a checkpoint"


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint file on the CPU, safely (:func:`load_checkpoint_file`), turning every way
    it can be broken into one clear error."""
    path = Path(path)
    if not path.is_file():
        raise GenbenchError(f"Checkpoint {path} does not exist. Pass ckpt_path=<run dir>/checkpoints/last.ckpt.")
    try:
        ckpt = load_checkpoint_file(path)
    except GenbenchError:
        raise
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
