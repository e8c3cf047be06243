"""The optional features and the pip extra that installs each one.

``import genbench``, training on one machine and the benchmark need none of them, so none is a
hard dependency: W&B (``logger=wandb``, ``genbench-benchmark wandb=true``), the submitit launchers
(``hydra/launcher=slurm`` or ``local``) and the Optuna sweeper (``hparams_search=*_optuna``) are
imported only where they are used. Using one without its extra stops with one line that names the
extra, instead of a ``ModuleNotFoundError`` deep inside Lightning or Hydra.
"""

from __future__ import annotations

import importlib

from genbench.errors import GenbenchError

#: extra -> (what it provides, the modules it must make importable)
EXTRAS: dict[str, tuple[str, tuple[str, ...]]] = {
    "wandb": ("Weights & Biases (wandb)", ("wandb",)),
    "slurm": ("submitit and hydra-submitit-launcher", ("submitit", "hydra_plugins.hydra_submitit_launcher")),
    "optuna": ("Optuna and hydra-optuna-sweeper", ("optuna", "hydra_plugins.hydra_optuna_sweeper")),
}


def install_hint(extra: str) -> str:
    """The command that installs ``extra``."""
    return f"pip install 'genbench[{extra}]'"


def _import_error(extra: str) -> ImportError | None:
    """The error of the first module of ``extra`` that does not import, or None when all do."""
    for module in EXTRAS[extra][1]:
        try:
            importlib.import_module(module)
        except ImportError as e:  # missing, or installed but broken (then the message says why)
            return e
    return None


def has_extra(extra: str) -> bool:
    """Whether every module of ``extra`` imports. The Hydra plugins ask this when Hydra scans them
    (at the start of every Hydra app), so that a missing extra gives a stand-in, not Hydra's
    "Error importing plugin" warning."""
    return _import_error(extra) is None


def missing_extra(extra: str, feature: str, cause: BaseException | None = None) -> GenbenchError:
    """The error for using ``feature`` without ``extra`` installed."""
    what = EXTRAS[extra][0]
    detail = f" ({cause})" if cause is not None else " (not installed)"
    return GenbenchError(f"{feature} needs {what}{detail}: {install_hint(extra)}")


def require_extra(extra: str, feature: str) -> None:
    """Import the modules of ``extra``, or raise :func:`missing_extra`'s error naming the extra."""
    error = _import_error(extra)
    if error is not None:
        raise missing_extra(extra, feature, error)
