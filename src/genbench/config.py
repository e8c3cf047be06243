"""Everything between a composed Hydra config and live objects: resolvers, instantiation with
clear errors, the config tree printout, and the W&B/ DDP details that Hydra + Lightning need."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from genbench import PROJECT_ROOT, GenbenchError

log = logging.getLogger("genbench")


def _gpu_precision() -> str:
    """bf16-mixed where the GPU supports it (Ampere and newer), else 16-mixed."""
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16-mixed"
    return "16-mixed"


def register_resolvers() -> None:
    for name, fn in {
        "genbench_root": lambda: str(PROJECT_ROOT),
        "gpu_precision": _gpu_precision,
    }.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)


register_resolvers()


def _root_cause(e: BaseException) -> BaseException:
    while isinstance(e, InstantiationException) and e.__cause__ is not None:
        e = e.__cause__
    return e


def build(cfg: Any, what: str, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate`` that surfaces genbench's own error messages unwrapped and
    names the config group for anything else (a typo in a ``_target_``, a bad argument)."""
    try:
        return instantiate(cfg, **kwargs)
    except InstantiationException as e:
        cause = _root_cause(e)
        if isinstance(cause, GenbenchError):
            raise cause from None
        raise GenbenchError(f"Cannot build the {what} from its config: {cause}") from e


def is_rank_zero() -> bool:
    """True in the launching process; Lightning's DDP children get LOCAL_RANK/NODE_RANK > 0, and under
    SLURM (one task per device, hydra/launcher=slurm or srun) every task but the first has SLURM_PROCID > 0."""
    return all(int(os.environ.get(k, 0)) == 0 for k in ("LOCAL_RANK", "NODE_RANK", "SLURM_PROCID"))


def print_config_tree(
    cfg: DictConfig, order: tuple[str, ...] = ("data", "model", "trainer", "callbacks", "logger", "paths")
) -> None:
    """Print the composed config as a rich tree, one branch per group, so every run shows what it ran."""
    import rich
    import rich.syntax
    import rich.tree

    tree = rich.tree.Tree("CONFIG", guide_style="dim")
    keys = [k for k in order if k in cfg] + [k for k in cfg if k not in order]
    for key in keys:
        branch = tree.add(str(key), guide_style="dim")
        value = cfg[key]
        text = OmegaConf.to_yaml(value, resolve=True) if isinstance(value, DictConfig) else str(value)
        branch.add(rich.syntax.Syntax(text, "yaml"))
    rich.print(tree)


# --- loggers ---------------------------------------------------------------------------------------


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
    import secrets

    run_id = secrets.token_hex(4)
    path.write_text(run_id + "\n")
    return run_id


def finish_wandb() -> None:
    """Close the W&B run so the next job of a sequential multirun starts its own run."""
    if "wandb" in sys.modules:
        import wandb

        if wandb.run is not None:
            wandb.finish()


# --- Hydra + Lightning DDP ------------------------------------------------------------------------


def ddp_child_command(local_rank: int) -> tuple[list[str], str]:
    """The command Lightning's DDP launcher runs for ranks > 0 under Hydra.

    Lightning's own version re-uses ``sys.argv``: inside a multirun that contains ``-m`` and the
    sweep, so every child re-launches the whole sweep, and ``hydra.run.dir`` points to a new
    directory. Here each child re-composes exactly this job (its resolved task overrides) in this
    job's output directory, writes no ``.hydra`` folder and no log file of its own.
    """
    from hydra.core.hydra_config import HydraConfig

    hc = HydraConfig.get()
    out_dir = str(hc.runtime.output_dir).replace("'", "\\'")
    command = [sys.executable, "-m", "genbench.train", f"--config-name={hc.job.config_name}"]
    command += list(hc.overrides.task)
    command += [
        f"hydra.run.dir='{out_dir}'",
        "hydra.output_subdir=null",
        f"hydra.job.name={hc.job.name}_rank{local_rank}",
        "hydra/job_logging=disabled",
        "hydra/hydra_logging=disabled",
    ]
    return command, os.getcwd()


def install_ddp_child_command() -> None:
    import pytorch_lightning.strategies.launchers.subprocess_script as launcher

    launcher._hydra_subprocess_cmd = ddp_child_command


@contextmanager
def isolated_job() -> Iterator[None]:
    """Leave no distributed state behind a training job.

    In a sequential Hydra multirun every job runs in the same process. After a DDP job,
    Lightning has left a live process group (whose peers have exited) and MASTER_PORT /
    WORLD_SIZE / ... in ``os.environ``; the next job would join that dead group and crash. So the
    environment is restored and the process group destroyed when each job ends.
    """
    saved_env = dict(os.environ)
    try:
        yield
    finally:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
        for key in set(os.environ) - set(saved_env):
            del os.environ[key]
        os.environ.update(saved_env)


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn GenbenchError into one clear line on stderr and exit status 1 (no traceback)."""
    try:
        yield
    except GenbenchError as e:
        log.error("%s", e)
        print(f"genbench: error: {e}", file=sys.stderr)
        raise SystemExit(1) from None
