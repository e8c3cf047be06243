"""Experiment loggers from the ``logger`` config group, and the W&B details Hydra runs need.

W&B is the logger that talks to the network, so it gets the care here: it goes offline when no
credentials are configured (nothing ever waits on the network), every run directory keeps its own
W&B run id (a resumed or requeued job continues its run instead of starting a new one), the jobs
of a multirun are grouped under the sweep's name, and each job closes its run so the next job of a
sequential multirun starts a fresh one.
"""

from __future__ import annotations

import logging
import os
import secrets
import sys
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf

from genbench.config import build
from genbench.distributed import is_rank_zero

log = logging.getLogger("genbench")


def wandb_has_credentials() -> bool:
    """An API key in the environment or in ~/.netrc, or an explicit WANDB_MODE, counts as configured."""
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_MODE"):
        return True
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    try:
        return "api.wandb.ai" in netrc.read_text()
    except OSError:
        return False


def wandb_mode() -> str | None:
    """The W&B mode to ask for: None where WANDB_MODE already decides (W&B reads it itself),
    "online" with credentials, else "offline" so that nothing ever waits on the network."""
    if os.environ.get("WANDB_MODE"):
        return None
    return "online" if wandb_has_credentials() else "offline"


def build_loggers(cfg: DictConfig) -> list[pl.loggers.Logger]:
    """Instantiate every logger of the ``logger`` group. W&B: ``offline: auto`` goes offline when
    no credentials are configured (never waits on the network); ``group: auto`` groups the jobs
    of one Hydra multirun under the sweep directory's name."""
    loggers: list[pl.loggers.Logger] = []
    for name, conf in (cfg.get("logger") or {}).items():
        if conf is None or "_target_" not in conf:
            continue
        conf = OmegaConf.to_container(conf, resolve=True)
        if conf["_target_"].endswith("WandbLogger"):
            conf = _wandb_kwargs(conf)
        loggers.append(build(conf, f"logger '{name}'"))
    return loggers


def _wandb_kwargs(conf: dict[str, Any]) -> dict[str, Any]:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if conf.get("offline") == "auto":
        conf["offline"] = not wandb_has_credentials()
        if conf["offline"]:
            log.info("W&B: no credentials configured, logging offline (upload later with `wandb sync`).")
    if HydraConfig.initialized():
        hc = HydraConfig.get()
        if conf.get("group") == "auto":
            multirun = hc.mode == RunMode.MULTIRUN
            conf["group"] = Path(hc.sweep.dir).name if multirun else None
        if conf.get("name") == "auto":
            conf["name"] = hc.job.override_dirname or hc.job.name
    for key in ("group", "name"):
        if conf.get(key) == "auto":
            conf[key] = None
    Path(conf.get("save_dir") or ".").mkdir(parents=True, exist_ok=True)
    if conf.get("id") in (None, "auto"):
        # One W&B run per run directory: a resumed or requeued job continues its run, not a new one.
        conf["id"] = wandb_run_id(Path(conf.get("save_dir") or "."))
        conf.setdefault("resume", "allow")
    return conf


def wandb_run_id(run_dir: Path) -> str | None:
    """The W&B run id of a run directory, kept in ``<run_dir>/wandb_run_id``: created on the first
    start, read back on resume. A fresh id per directory (not a hash of its path) so a deleted and
    re-created directory starts a new W&B run. Ranks > 0 never create it (they do not log)."""
    path = run_dir / "wandb_run_id"
    if path.is_file():
        return path.read_text().strip() or None
    if not is_rank_zero():
        return None
    run_id = secrets.token_hex(4)
    path.write_text(run_id + "\n")
    return run_id


def finish_wandb() -> None:
    """Close the W&B run so the next job of a sequential multirun starts its own run."""
    if "wandb" in sys.modules:
        import wandb

        if wandb.run is not None:
            wandb.finish()
