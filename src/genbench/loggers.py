"""Experiment loggers from the ``logger`` config group, and the W&B details Hydra runs need.

W&B is the logger that talks to the network, so it gets the care here: it goes offline when W&B
itself finds no credentials for its host (nothing ever waits on the network), every run directory
keeps its own W&B run id (a resumed or requeued job continues its run instead of starting a new
one), runs get short names (``<model>-<data>-s<seed>``, plus a digest of any other overrides), the
jobs of a multirun are grouped under the experiment's or sweep's name, the config's ``tags`` plus
family and dataset tag every run, and each job closes its run so the next job of a sequential
multirun starts a fresh one. What reaches W&B beyond the logged numbers is built here too: the
checkpoints as ``model`` artifacts (``logger.wandb.log_model``), an evaluation's samples table and
class histograms, and a benchmark report as an artifact.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import secrets
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf

from genbench.config import build
from genbench.distributed import is_rank_zero
from genbench.errors import GenbenchError
from genbench.extras import require_extra
from genbench.io import atomic_write_bytes
from genbench.rundir import RunLayout

log = logging.getLogger("genbench")


#: how to log in, for the line that says a run went offline
LOGIN_HINT = (
    "log in with `wandb login` (a self-hosted server: `wandb login --host https://<server>`, or set "
    "WANDB_BASE_URL and WANDB_API_KEY), and upload offline runs later with `wandb sync <run dir>/wandb/offline-run-*`"
)


def wandb_has_credentials() -> bool:
    """Whether W&B itself finds credentials for the server it would log to.

    Asked of W&B's own resolver, never by reading files here, so every way W&B logs in counts: the
    server is ``WANDB_BASE_URL`` or the one ``wandb login --host`` saved in W&B's settings (else
    api.wandb.ai), and its credentials are ``WANDB_API_KEY``, an identity token file
    (``WANDB_IDENTITY_TOKEN_FILE``), that server's entry in the netrc file (``NETRC`` or ~/.netrc) or
    an API key in W&B's settings. Nothing is prompted for and the server is not contacted. A key
    W&B finds but could not use (malformed) is one clear error rather than a run that fails later."""
    from wandb.errors import AuthenticationError

    from genbench.compat import wandb_find_credentials

    try:
        return wandb_find_credentials()
    except AuthenticationError as e:
        raise GenbenchError(
            f"W&B found credentials but cannot use them ({e}): log in again with `wandb login --relogin`, or set "
            "WANDB_MODE=offline."
        ) from None


def wandb_mode() -> str | None:
    """The W&B mode to ask for: None where WANDB_MODE already decides (W&B reads it itself),
    "online" when W&B finds credentials, else "offline" (with one line saying how to log in) so that
    nothing ever waits on the network."""
    if os.environ.get("WANDB_MODE"):
        return None
    if wandb_has_credentials():
        return "online"
    log.info("W&B: no credentials found, logging offline; %s.", LOGIN_HINT)
    return "offline"


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
            require_extra("wandb", f"logger '{name}' (W&B)")
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
    # offline (auto: without credentials) is passed to W&B as its mode: Lightning's own ``offline``
    # refuses log_model (checkpoints are uploaded by `wandb sync` with the rest of an offline run)
    # and sets WANDB_MODE for the whole process
    offline = conf.pop("offline", False)
    mode = wandb_mode() if offline == "auto" else ("offline" if offline else None)
    if mode == "offline":
        conf["mode"] = "offline"
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


# --- what reaches W&B beyond the logged numbers -----------------------------------------------------
def wandb_loggers(loggers: list[Any]) -> list[Any]:
    """The W&B loggers among ``loggers`` (none when W&B is not installed: nothing to log to)."""
    from pytorch_lightning.loggers import WandbLogger

    return [lg for lg in loggers if isinstance(lg, WandbLogger)]


def report_checkpoint(trainer: pl.Trainer, checkpoint_callback: Any) -> None:
    """Tell the trainer's loggers that ``checkpoint_callback`` saved a file, as ModelCheckpoint
    does after its own saves: W&B's ``log_model`` then uploads the callback's ``last_model_path``
    (last.ckpt, alias ``latest``) and its best checkpoint (aliases ``latest`` and ``best``) as
    ``model`` artifacts: every save with ``log_model: all``, once at the end with ``true``."""
    if trainer.is_global_zero:
        for logger in trainer.loggers:
            logger.after_save_checkpoint(checkpoint_callback)


def log_file_artifact(run: Any, path: str | Path, name: str, kind: str) -> None:
    """Log one file as a W&B artifact of ``run`` (e.g. a benchmark's report.html, type ``report``)."""
    import wandb

    artifact = wandb.Artifact(name=name, type=kind)
    artifact.add_file(str(path), name=Path(path).name)
    run.log_artifact(artifact)


#: samples shown in an evaluation's W&B table
TABLE_SAMPLES = 32


def class_histogram(fractions: list[float]) -> Any:
    """A class histogram (one fraction per class) as a W&B Histogram with one bin per class."""
    import numpy as np
    import wandb

    return wandb.Histogram(np_histogram=(np.asarray(fractions, dtype=float), np.arange(len(fractions) + 1)))


def evaluation_media(
    images: Any,
    result: Mapping[str, Any],
    per_sample: Mapping[str, list[Any]] | None = None,
    labels: Any = None,
    prefix: str = "eval/",
) -> dict[str, Any]:
    """An evaluation's samples table and class histograms, as W&B values to log.

    The table (``<prefix>samples``) has one row per sample (the first :data:`TABLE_SAMPLES`): the
    image, its asked class (``labels``, a conditional model) and the per-sample metrics that exist
    (``per_sample``: the in-domain classifier's predicted class and confidence, the distance to the
    nearest training image; see :func:`genbench.metrics.per_sample.per_sample_metrics`). The
    generated and real class histograms of mode coverage (``class_hist``, ``real_class_hist``)
    become W&B histograms with one bin per class."""
    import wandb

    images = images[:TABLE_SAMPLES]
    columns = ["image", *(["class"] if labels is not None else []), *(per_sample or {})]
    rows = []
    for i, image in enumerate(images):
        row = [wandb.Image(image.permute(1, 2, 0).squeeze(-1).numpy())]
        row += [int(labels[i])] if labels is not None else []
        row += [values[i] for values in (per_sample or {}).values()]
        rows.append(row)
    media: dict[str, Any] = {f"{prefix}samples": wandb.Table(columns=columns, data=rows)}
    for key in ("class_hist", "real_class_hist"):
        if result.get(key):
            media[f"{prefix}{key}"] = class_histogram(result[key])
    return media


def log_evaluation_media(
    loggers: list[Any],
    images: Any,
    result: Mapping[str, Any],
    step: int,
    per_sample: Mapping[str, list[Any]] | None = None,
    labels: Any = None,
) -> bool:
    """Log :func:`evaluation_media` to every W&B logger of a training run (rank 0); returns
    whether anything was logged."""
    runs = [lg.experiment for lg in wandb_loggers(loggers)]
    if not runs or not is_rank_zero():
        return False
    media = evaluation_media(images, result, per_sample, labels)
    for run in runs:
        run.log({**media, "trainer/global_step": step})
    return True
