"""``genbench-train``: compose the config, build datamodule + model + callbacks + loggers, fit.

genbench-train model=<family> data=fashion_mnist trainer=cpu
genbench-train -m model=<family>,<family> seed=0,1 hydra/launcher=local
genbench-train experiment=<preset> ckpt_path=outputs/train/runs/<run>/checkpoints/last.ckpt
"""

from __future__ import annotations

import logging
import math
import time
import traceback
import warnings
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf, open_dict

from genbench import CONFIG_DIR
from genbench.callbacks import ResumeCheckpoint, link_callbacks
from genbench.callbacks.resume import cluster_callbacks
from genbench.checkpointing import (
    AtomicCheckpointIO,
    check_resume_compatible,
    checkpoint_dir,
    resolve_ckpt_path,
    resume_csv_history,
)
from genbench.cluster import cluster_plugins
from genbench.compat import install_ddp_child_command
from genbench.config import build, print_config_tree
from genbench.devices import check_accelerator, reduced_precision_warning, resolve_precision
from genbench.distributed import ddp_child_command, is_rank_zero, isolated_job
from genbench.errors import GenbenchError, user_errors
from genbench.io import atomic_write_bytes, atomic_write_json, check_writable_dir
from genbench.loggers import build_loggers, finish_wandb
from genbench.models import GenerativeModel, family_of_config
from genbench.rundir import CONFIG, RunLayout, write_failure
from genbench.schema import validate_config
from genbench.summary import print_summary, setup_run_logging

log = logging.getLogger("genbench.train")

# A family's EMA copy is in eval mode on purpose; torch's pytree deprecation comes from Lightning.
warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")
warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
# genbench's DataModules restart mid-epoch themselves (EpochOrder + ResumeCheckpoint): not Lightning's concern.
warnings.filterwarnings("ignore", message=r".*your dataloader is not resumable")
# Lightning's hint to "prepend srun" wherever an srun binary exists: genbench reaches SLURM through
# hydra/launcher=slurm (submitit runs srun itself), so the hint only misleads.
warnings.filterwarnings("ignore", message=r"The `srun` command is available on your system but is not used")


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


def ensure_output_dir(cfg: DictConfig) -> Path:
    """``paths.output_dir``. It is Hydra's ``runtime.output_dir``, which only ``@hydra.main`` sets:
    a config composed in a notebook or a test (``hydra.compose``, ``genbench.api.compose``) that
    does not set it gets a fresh timestamped run directory, claimed as the command line claims
    its own (``<paths.log_dir>/<task_name>/runs/<time>``; ``_1``, ``_2``... if taken)."""
    from omegaconf.errors import InterpolationResolutionError

    from genbench.rundir import claim_dir

    try:
        return Path(cfg.paths.output_dir)
    except InterpolationResolutionError:  # ${hydra:runtime.output_dir} outside @hydra.main
        pass
    stamp = time.strftime("%Y-%m-%d_%H-%M-%S")
    path = Path(cfg.paths.log_dir).absolute() / str(cfg.task_name) / "runs" / stamp
    run_dir, _ = claim_dir(path, generated=True, key="paths.output_dir")
    with open_dict(cfg):
        cfg.paths.output_dir = str(run_dir)
    return run_dir


def finished_metrics(cfg: DictConfig, output_dir: Path, ckpt_path: str) -> dict[str, Any] | None:
    """The recorded metrics of a run that is resumed from its own last.ckpt although its training
    already ended (metrics.json reached ``trainer.max_steps`` or ``trainer.max_epochs``): a sweep
    re-run with ``ckpt_path=auto`` after an interruption. None otherwise. Such a job is skipped:
    resuming it would only redo the end-of-training work (grids, evaluation) and overwrite its
    metrics.json with the few metrics a fit that trains no step logs."""
    from genbench.io import read_json

    layout = RunLayout(output_dir)
    if Path(ckpt_path).resolve() != layout.last_checkpoint.resolve():
        return None
    done = read_json(layout.metrics)
    if not isinstance(done, dict) or "global_step" not in done:
        return None
    max_steps, max_epochs = cfg.trainer.get("max_steps", -1), cfg.trainer.get("max_epochs")
    steps_done = max_steps is not None and max_steps >= 0 and done["global_step"] >= max_steps
    epochs_done = max_epochs is not None and max_epochs >= 0 and done.get("epoch", -1) >= max_epochs
    return done if steps_done or epochs_done else None


def apply_auto_precision(cfg: DictConfig, family: str, announce: bool = True) -> str | None:
    """Turn ``trainer.precision=auto`` into the precision this hardware and family train fastest in
    (genbench.devices.choose_precision), in ``cfg`` itself so that the saved config.yaml, the
    logged hyperparameters and the Trainer all show what ran; logs one info line saying what was
    chosen and why. Returns the choice, or None when the precision was given explicitly."""
    choice = resolve_precision(cfg.trainer.get("precision"), cfg.trainer.get("accelerator"), family)
    if choice is None:
        return None
    with open_dict(cfg):
        cfg.trainer.precision = choice.precision
    if announce:
        log.info("trainer.precision=auto chose %s: %s.", choice.precision, choice.reason)
    return choice.precision


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit one model; returns the final callback metrics (also written to metrics.json)."""
    validate_config(cfg)
    check_accelerator(cfg.trainer.get("accelerator"))
    enforce_tags(cfg)
    from hydra.core.hydra_config import HydraConfig

    output_dir = ensure_output_dir(cfg)
    rank_zero = is_rank_zero()
    if HydraConfig.initialized():
        install_ddp_child_command(ddp_child_command)

    pl.seed_everything(cfg.seed, workers=True)
    datamodule = build(cfg.data, f"datamodule '{cfg.data._target_}'")
    if cfg.model.get("conditional") and cfg.model.get("num_classes") is None:
        with open_dict(cfg):  # data.num_classes: null means "as many as the labels name"
            cfg.model.num_classes = datamodule.num_classes
    model: GenerativeModel = build(cfg.model, f"model '{cfg.model._target_}'")
    if model.image_shape != tuple(datamodule.image_shape):
        raise GenbenchError(
            f"The model is built for images {model.image_shape} but data gives {tuple(datamodule.image_shape)}: "
            "take model.channels / model.image_size from data (the default interpolation)."
        )
    if model.num_classes is not None:
        datamodule.check_labels(model.num_classes)
    apply_auto_precision(cfg, model.family, announce=rank_zero)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    model.genbench_config = {key: resolved[key] for key in ("model", "data", "seed")}
    ckpt_path = resolve_ckpt_path(cfg, output_dir)
    if ckpt_path is not None:
        check_resume_compatible(ckpt_path, model)
        if (done := finished_metrics(cfg, output_dir, ckpt_path)) is not None:
            log.info("%s finished training already (step %s): nothing to resume.", output_dir, done["global_step"])
            return done
        log.info("Resuming from %s", ckpt_path)

    callbacks = build_callbacks(cfg, model)
    callbacks += cluster_callbacks(callbacks)
    loggers = build_loggers(cfg)
    if ckpt_path is not None:
        resume_csv_history(loggers, ckpt_path)
    # every checkpoint is written atomically (a full disk is one line) and loaded with weights_only=True
    extra: dict[str, Any] = {"plugins": [*cluster_plugins(), AtomicCheckpointIO()]}
    if cfg.trainer.get("strategy") == "ddp" and model.ddp_find_unused_parameters:
        extra["strategy"] = "ddp_find_unused_parameters_true"
    if any(isinstance(cb, pl.callbacks.ModelSummary) for cb in callbacks):
        # ours is configured (callbacks.model_summary): Lightning must not add its default one,
        # which it reports on every run ("Trainer already configured with model summary callbacks")
        extra.setdefault("enable_model_summary", False)
    trainer: pl.Trainer = build(cfg.trainer, "trainer", callbacks=callbacks, logger=loggers or False, **extra)
    if warning := reduced_precision_warning(trainer.strategy.root_device, str(trainer.precision)):
        log.warning(warning)
    writes_checkpoints = trainer.checkpoint_callbacks or any(isinstance(cb, ResumeCheckpoint) for cb in callbacks)
    if rank_zero and writes_checkpoints:  # fail now, not after hours of training
        check_writable_dir(checkpoint_dir(trainer), "callbacks.model_checkpoint.dirpath")
    if rank_zero:
        datamodule.prepare_data()  # a missing dataset is an input error: report it before the tree
        if cfg.get("print_config", True):  # after everything that can refuse the input was built
            print_config_tree(cfg)

    if rank_zero:
        output_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(output_dir / CONFIG, OmegaConf.to_yaml(cfg, resolve=True).encode())
    for logger in loggers:
        logger.log_hyperparams({**resolved, "num_parameters": model.num_parameters()})
    started = time.perf_counter()
    try:
        trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
        metrics.update(
            family=model.family,
            global_step=trainer.global_step,
            epoch=trainer.current_epoch,
            num_parameters=model.num_parameters(),
        )
        if trainer.is_global_zero:
            atomic_write_json(RunLayout(output_dir).metrics, metrics)
    finally:
        finish_wandb()
    print_summary("genbench-train: done", run_summary(trainer, output_dir, metrics, time.perf_counter() - started))
    return metrics


#: metrics the summary shows when logged (the run's own monitor and val/* are added)
SUMMARY_METRICS = ("train/loss", "eval/fid", "eval/kid_mean", "eval/precision", "eval/recall", "eval/bpd")


def run_summary(trainer: pl.Trainer, output_dir: Path, metrics: dict[str, Any], seconds: float) -> dict[str, Any]:
    """What a finished run tells its user: where everything is and how it ended (the final
    metrics; the last and best checkpoints; the sample grid; the log; the command that evaluates it)."""
    from genbench.rundir import FINAL_GRID, METRICS

    ckpt_dir = checkpoint_dir(trainer)
    last = ckpt_dir / "last.ckpt"
    best = getattr(trainer.checkpoint_callback, "best_model_path", "") or ""
    best_score = getattr(trainer.checkpoint_callback, "best_model_score", None)
    monitor = getattr(trainer.checkpoint_callback, "monitor", None)
    shown = {
        k: v for k, v in metrics.items() if isinstance(v, float) and (k in SUMMARY_METRICS or k.startswith("val/"))
    }
    log_file = next(iter(sorted(output_dir.glob("*.log"))), None)
    return {
        "run directory": output_dir,
        "trained": f"{metrics.get('family')}: {trainer.global_step} steps, epoch {trainer.current_epoch}, {seconds:.0f} s",
        "final metrics": shown,
        "last checkpoint": last if last.is_file() else None,
        "best checkpoint": (
            f"{best} ({monitor} {float(best_score):.4g})" if best and best_score is not None else (best or None)
        ),
        "samples": output_dir / FINAL_GRID if (output_dir / FINAL_GRID).is_file() else None,
        "metrics": output_dir / METRICS if (output_dir / METRICS).is_file() else None,
        "log": log_file,
        "evaluate": f"genbench-eval ckpt_path={last}" if last.is_file() else None,
    }


def enforce_tags(cfg: DictConfig) -> None:
    """``tags`` label a run in W&B and in its saved config. As lightning-hydra-template's
    ``enforce_tags``: a multirun without tags is refused (dozens of untagged runs are hard to
    find again); a single run without tags gets a warning (never a prompt: jobs are not interactive)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    tags = cfg.get("tags")
    if tags and all(isinstance(t, str) and t.strip() for t in tags):
        return
    if tags:
        raise GenbenchError(f"tags={list(tags)} must be a list of non-empty strings, e.g. tags=[dev,lr_sweep].")
    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        raise GenbenchError(
            "No tags for a multirun: name what it is for, e.g. tags=[lr_sweep] (conf/train.yaml: tags)."
        )
    log.warning("No tags given (tags=[]): this run will be hard to find in W&B; set e.g. tags=[dev].")


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

    setup_run_logging()
    if cfg.get("fail_soft") and is_rank_zero():
        with isolated_job():
            try:
                return objective(cfg, train(cfg))
            except Exception as e:  # noqa: BLE001 - any failure of this job is recorded, not raised
                record_failure(cfg, e)
                return None
    with user_errors(), undo_failed_start(cfg), isolated_job():
        return objective(cfg, train(cfg))


__all__ = ["main", "train"]

if __name__ == "__main__":
    main()
