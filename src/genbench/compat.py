"""Every use of a third party's private API, in one place, with the version it was checked against.

genbench relies on a few internals that Lightning and torch-fidelity do not promise to keep: a
module-level function Lightning calls to start DDP children under Hydra, the fit loop's batch
progress and its layout in a checkpoint, and the CSV logger's writer. Each is wrapped here and
nowhere else, so an upgrade is one file to review, and
``tests/test_compat.py`` exercises every wrapper against the installed versions: it fails loudly
(naming the wrapper) when one of them changes. The stack is pinned in ``pyproject.toml``;
:data:`CHECKED_AGAINST` must move with those pins. (torch-fidelity's per-metric functions, which
``genbench.metrics.fidelity`` drives itself to cache the real side, are module-level API; their
results are checked against ``torch_fidelity.calculate_metrics`` in ``tests/test_metrics.py``.)
"""

from __future__ import annotations

from collections.abc import Callable
from importlib.metadata import version
from typing import Any

#: the versions whose internals the wrappers below were read from
CHECKED_AGAINST = {"pytorch-lightning": "2.6.6", "torch-fidelity": "0.4.0", "wandb": "0.31.0"}


def version_mismatches() -> dict[str, tuple[str, str]]:
    """Packages whose installed version is not the one the wrappers were checked against:
    name -> (checked, installed)."""
    out = {}
    for name, checked in CHECKED_AGAINST.items():
        installed = version(name)
        if installed != checked:
            out[name] = (checked, installed)
    return out


# --- W&B ----------------------------------------------------------------------------------------


def wandb_find_credentials() -> bool:
    """Whether W&B's own resolver finds credentials for the server it would log to, without
    prompting or contacting it; raises ``wandb.errors.AuthenticationError`` for credentials it
    finds but cannot use.

    wandb 0.31.0 has no public call for this: ``wandb.sdk.wandb_setup.singleton().settings`` gives the
    server (``base_url``, from WANDB_BASE_URL or ``wandb login --host``) and
    ``wandb.sdk.lib.wbauth.authenticate_session(host=HostUrl(...), prompt=False, update_session=False)``
    resolves WANDB_API_KEY, identity tokens, the netrc entry of that server and saved settings."""
    from wandb.sdk import wandb_setup
    from wandb.sdk.lib import wbauth

    settings = wandb_setup.singleton().settings
    host = wbauth.HostUrl(settings.base_url, app_url=settings.app_url)
    return wbauth.authenticate_session(host=host, source="genbench", prompt=False, update_session=False) is not None


# --- Lightning ----------------------------------------------------------------------------------


def install_ddp_child_command(command: Callable[[int], tuple[list[str], str]]) -> None:
    """Make Lightning's DDP launcher start ranks > 0 with ``command(local_rank) -> (argv, cwd)``.

    Lightning 2.6.6, ``strategies/launchers/subprocess_script.py``: the module imports
    ``_hydra_subprocess_cmd`` into its namespace and calls it for every child rank when Hydra is
    initialised, so replacing the module attribute is what changes the children's command."""
    import pytorch_lightning.strategies.launchers.subprocess_script as launcher

    if not hasattr(launcher, "_hydra_subprocess_cmd"):
        raise RuntimeError("Lightning no longer has subprocess_script._hydra_subprocess_cmd: see genbench.compat.")
    launcher._hydra_subprocess_cmd = command


def epoch_batches_done(trainer: Any) -> int:
    """Training batches of the current epoch that have completed (Lightning 2.6.6:
    ``trainer.fit_loop.epoch_loop.batch_progress.current.completed``)."""
    return int(trainer.fit_loop.epoch_loop.batch_progress.current.completed)


def _fit_loop(checkpoint: dict[str, Any]) -> dict[str, Any]:
    return checkpoint.get("loops", {}).get("fit_loop", {})


def checkpoint_logger_step(checkpoint: dict[str, Any]) -> int:
    """The logger step a checkpoint was taken at. Lightning logs with the epoch loop's
    ``_batches_that_stepped`` (``loops.fit_loop["epoch_loop.state_dict"]``), whereas
    ``global_step`` counts optimizer steps: twice per batch for a family with two optimizers
    (manual optimisation)."""
    loop = _fit_loop(checkpoint).get("epoch_loop.state_dict", {})
    return int(loop.get("_batches_that_stepped", checkpoint.get("global_step", 0)))


def mark_fetched_batch_unrun(checkpoint: dict[str, Any]) -> None:
    """For a checkpoint written at ``on_train_batch_start``: that batch has been fetched
    ("ready") but not run. Recorded as is, the resumed loop counts it as done and logs its first
    step one too far, so record it as never fetched, which is the truth of the saved weights.
    Lightning 2.6.6: ``loops.fit_loop["epoch_loop.batch_progress"]["total"|"current"]``."""
    progress = _fit_loop(checkpoint).get("epoch_loop.batch_progress", {})
    for key in ("total", "current"):
        if key in progress:
            progress[key]["ready"] = progress[key]["completed"]


def prepend_csv_rows(logger: Any, rows: list[dict[str, Any]]) -> None:
    """Write ``rows`` as the first rows of a CSVLogger's ``metrics.csv``.

    Lightning 2.6.6 (``lightning_fabric/loggers/csv_logs.py``): creating the logger's writer
    (``logger.experiment``) deletes an existing ``metrics.csv``; the writer buffers rows in
    ``.metrics`` and ``save()`` writes them, so the old rows go in front of the buffer."""
    writer = logger.experiment
    writer.metrics = list(rows) + writer.metrics
    writer.save()
