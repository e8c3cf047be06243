"""Experiment loggers from the ``logger`` config group, and the W&B details Hydra runs need.

W&B is the logger that talks to the network, so it gets the care here: it goes offline when no
credentials are configured (nothing ever waits on the network), every run directory keeps its own
W&B run id (a resumed or requeued job continues its run instead of starting a new one), runs get
short names (``<model>-<data>-s<seed>``, plus a digest of any other overrides), the jobs of a
multirun are grouped under the experiment's or sweep's name, the config's ``tags`` plus family and
dataset tag every run, and each job closes its run so the next job of a sequential multirun
starts a fresh one.
"""

from __future__ import annotations

import contextlib
import hashlib
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
from genbench.io import atomic_write_bytes
from genbench.rundir import RunLayout

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
            conf = _wandb_kwargs(conf, cfg)
        loggers.append(build(conf, f"logger '{name}'"))
    return loggers


#: overrides a run's name already says (model, data, seed) or that do not change what is trained
NAMED_KEYS = ("model", "data", "seed", "tags", "experiment", "logger", "print_config", "fail_soft", "ckpt_path")


def _choices() -> dict[str, Any]:
    from hydra.core.hydra_config import HydraConfig

    return dict(HydraConfig.get().runtime.choices) if HydraConfig.initialized() else {}


def _task_overrides() -> list[str]:
    from hydra.core.hydra_config import HydraConfig

    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def run_name(cfg: DictConfig) -> str:
    """A short W&B run name: ``<model>-<data>-s<seed>``, plus 6 hex digits of the other overrides
    when there are any (two runs of one sweep that differ in ``model.beta`` must not share a name;
    the overrides themselves are in the run's config). The whole override string was unreadable."""
    from hydra.utils import get_class

    from genbench.models import family_of_config

    model = family_of_config(cfg.get("model")) or _choices().get("model") or "model"
    try:
        data = getattr(get_class(cfg.data._target_), "name", None) or _choices().get("data")
    except Exception:  # noqa: BLE001 - a name is cosmetic; the datamodule reports a bad target itself
        data = _choices().get("data")
    name = f"{model}-{data or 'data'}-s{cfg.get('seed')}"
    rest = sorted(o for o in _task_overrides() if o.split("=", 1)[0].lstrip("+~") not in NAMED_KEYS)
    rest = [o for o in rest if not o.lstrip("+~").startswith(("hydra.", "hydra/", "paths."))]
    if rest:
        name += "-" + hashlib.sha1(",".join(rest).encode()).hexdigest()[:6]
    return name


def run_group(cfg: DictConfig) -> str | None:
    """The W&B group: the jobs of one multirun together (``<experiment or search>-<sweep dir>``),
    a single run under its experiment preset, else none."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    choices = _choices()
    label = choices.get("experiment") or choices.get("hparams_search")
    label = str(label).replace("/", "-") if label else None
    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        sweep = Path(HydraConfig.get().sweep.dir).name
        return f"{label}-{sweep}" if label else sweep
    return label


def run_tags(cfg: DictConfig, extra: list[str] | None = None) -> list[str]:
    """``cfg.tags`` (conf/train.yaml), the logger's own ``tags`` and the family and dataset, once each."""
    from hydra.utils import get_class

    from genbench.models import family_of_config

    tags = [*(cfg.get("tags") or []), *(extra or []), family_of_config(cfg.get("model"))]
    with contextlib.suppress(Exception):  # cosmetic, as in run_name
        tags.append(getattr(get_class(cfg.data._target_), "name", None))
    return list(dict.fromkeys(str(t) for t in tags if t))


def _wandb_kwargs(conf: dict[str, Any], cfg: DictConfig) -> dict[str, Any]:
    if conf.get("offline") == "auto":
        conf["offline"] = not wandb_has_credentials()
        if conf["offline"]:
            log.info("W&B: no credentials configured, logging offline (upload later with `wandb sync`).")
    if conf.get("group") == "auto":
        conf["group"] = run_group(cfg)
    if conf.get("name") == "auto":
        conf["name"] = run_name(cfg)
    conf["tags"] = run_tags(cfg, list(conf.get("tags") or []))
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
    path = RunLayout(run_dir).wandb_run_id
    if path.is_file():
        return path.read_text().strip() or None
    if not is_rank_zero():
        return None
    run_id = secrets.token_hex(4)
    atomic_write_bytes(path, (run_id + "\n").encode())
    return run_id


def finish_wandb() -> None:
    """Close the W&B run so the next job of a sequential multirun starts its own run."""
    if "wandb" in sys.modules:
        import wandb

        if wandb.run is not None:
            wandb.finish()
