"""``genbench-train``: compose the config, build datamodule + model + callbacks + loggers, fit.

genbench-train model=gan data=fashion_mnist trainer=cpu
genbench-train -m model=gan,vae,ddpm seed=0,1 hydra/launcher=local
genbench-train experiment=fashion_mnist_ddpm ckpt_path=outputs/train/runs/<run>/checkpoints/last.ckpt
"""

from __future__ import annotations

import logging
import math
import traceback
import warnings
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf

from genbench import CONFIG_DIR
from genbench.callbacks import ResumeCheckpoint, link_callbacks
from genbench.checkpointing import (
    check_resume_compatible,
    checkpoint_dir,
    resolve_ckpt_path,
    resume_csv_history,
)
from genbench.cluster import cluster_callbacks, cluster_plugins
from genbench.compat import install_ddp_child_command
from genbench.config import build, print_config_tree
from genbench.devices import reduced_precision_warning
from genbench.distributed import ddp_child_command, is_rank_zero, isolated_job
from genbench.errors import GenbenchError, user_errors
from genbench.io import atomic_write_json, check_writable_dir
from genbench.loggers import build_loggers, finish_wandb
from genbench.models import FAMILIES, GenerativeModel, family_of_config
from genbench.rundir import write_failure
from genbench.schema import validate_config

log = logging.getLogger("genbench.train")

# The DDPM's EMA copy is in eval mode on purpose; torch's pytree deprecation comes from Lightning.
warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")
warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
# genbench's DataModules restart mid-epoch themselves (EpochOrder + ResumeCheckpoint): not Lightning's concern.
warnings.filterwarnings("ignore", message=r".*your dataloader is not resumable")


def build_callbacks(cfg: DictConfig, model: GenerativeModel) -> list[pl.Callback]:
    callbacks = []
    for name, conf in (cfg.get("callbacks") or {}).items():
        if conf is None or "_target_" not in conf:
            continue
        kwargs = {}
        if conf.get("monitor") == "auto":  # each family knows which validation metric means "better"
            kwargs["monitor"] = model.default_monitor
        callbacks.append(build(conf, f"callback '{name}'", **kwargs))
    return link_callbacks(callbacks)


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit one model; returns the final callback metrics (also written to metrics.json)."""
    validate_config(cfg)
    from hydra.core.hydra_config import HydraConfig

    output_dir = Path(cfg.paths.output_dir)
    rank_zero = is_rank_zero()
    if rank_zero and cfg.get("print_config", True):
        print_config_tree(cfg)
    if HydraConfig.initialized():
        install_ddp_child_command(ddp_child_command)

    pl.seed_everything(cfg.seed, workers=True)
    datamodule = build(cfg.data, f"datamodule '{cfg.data._target_}'")
    model: GenerativeModel = build(cfg.model, f"model '{cfg.model._target_}'")
    if model.image_shape != tuple(datamodule.image_shape):
        raise GenbenchError(
            f"The model is built for images {model.image_shape} but data gives {tuple(datamodule.image_shape)}: "
            "take model.channels / model.image_size from data (the default interpolation)."
        )
    resolved = OmegaConf.to_container(cfg, resolve=True)
    model.genbench_config = {key: resolved[key] for key in ("model", "data", "seed")}
    ckpt_path = resolve_ckpt_path(cfg, output_dir)
    if ckpt_path is not None:
        check_resume_compatible(ckpt_path, model)
        log.info("Resuming from %s", ckpt_path)

    callbacks = build_callbacks(cfg, model)
    callbacks += cluster_callbacks(callbacks)
    loggers = build_loggers(cfg)
    if ckpt_path is not None:
        resume_csv_history(loggers, ckpt_path)
    extra: dict[str, Any] = {}
    if plugins := cluster_plugins():
        extra["plugins"] = plugins
    if cfg.trainer.get("strategy") == "ddp" and model.ddp_find_unused_parameters:
        extra["strategy"] = "ddp_find_unused_parameters_true"
    trainer: pl.Trainer = build(cfg.trainer, "trainer", callbacks=callbacks, logger=loggers or False, **extra)
    if warning := reduced_precision_warning(trainer.strategy.root_device, str(trainer.precision)):
        log.warning(warning)
    writes_checkpoints = trainer.checkpoint_callbacks or any(isinstance(cb, ResumeCheckpoint) for cb in callbacks)
    if rank_zero and writes_checkpoints:  # fail now, not after hours of training
        check_writable_dir(checkpoint_dir(trainer), "callbacks.model_checkpoint.dirpath")

    if rank_zero:
        output_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(cfg, output_dir / "config_resolved.yaml", resolve=True)
    for logger in loggers:
        logger.log_hyperparams({**resolved, "num_parameters": model.num_parameters()})
    try:
        trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
        metrics.update(
            family=model.family,
            global_step=trainer.global_step,
            epoch=trainer.current_epoch,
            num_parameters=model.num_parameters(),
        )
        if trainer.is_global_zero:
            atomic_write_json(output_dir / "metrics.json", metrics)
    finally:
        finish_wandb()
    return metrics


def objective(cfg: DictConfig, metrics: dict[str, Any]) -> float | None:
    """The value a sweeper optimises (``optimized_metric``), NaN-safe."""
    name = cfg.get("optimized_metric")
    if not name:
        return None
    if name not in metrics:
        raise GenbenchError(f"optimized_metric={name} was not logged; logged: {', '.join(sorted(metrics))}.")
    value = float(metrics[name])
    return value if math.isfinite(value) else float("inf")


def record_failure(cfg: DictConfig, error: BaseException) -> None:
    """``fail_soft``: write the error to ``<run dir>/failed.json`` instead of ending the sweep, so
    the other jobs of a benchmark still run and the report can show this one as failed."""
    from hydra.core.hydra_config import HydraConfig

    overrides = list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []
    write_failure(
        Path(cfg.paths.output_dir),
        family=family_of_config(cfg.get("model")),
        seed=cfg.get("seed"),
        error=error,
        overrides=overrides,
        details="".join(traceback.format_exception(error)),
    )
    log.error("Job failed (fail_soft=true, the sweep goes on): %s: %s", type(error).__name__, error)


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="train")
def main(cfg: DictConfig) -> float | None:
    """The console script. The run directory was vetted and claimed by ``genbench.rundir.RunDirGuard``
    before Hydra wrote into it; a start that then fails on bad input (a GenbenchError before
    training) takes back what it wrote there (``undo_failed_start``), so nothing on disk changes. A
    ``fail_soft`` job instead keeps its directory: its failed.json is the record a benchmark shows."""
    from genbench.rundir import undo_failed_start

    if cfg.get("fail_soft") and is_rank_zero():
        with isolated_job():
            try:
                return objective(cfg, train(cfg))
            except Exception as e:  # noqa: BLE001 - any failure of this job is recorded, not raised
                record_failure(cfg, e)
                return None
    with user_errors(), undo_failed_start(cfg), isolated_job():
        return objective(cfg, train(cfg))


__all__ = ["FAMILIES", "main", "train"]

if __name__ == "__main__":
    main()
