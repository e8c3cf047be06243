"""``genbench-benchmark``: train every family under one budget, evaluate them with one protocol,
write one report.

    genbench-benchmark                           # budget=cpu: Fashion-MNIST, 2 CPU cores, < 20 min
    genbench-benchmark budget=full seeds=[0,1,2] launcher=slurm
    genbench-benchmark budget=cpu families=[gan,vae]

The training jobs are Hydra multiruns of ``genbench-train`` (``experiment=<budget.experiment>_<family>``,
``seed=...``), one per family so that a family whose config or training breaks cannot take the
others down (its jobs record ``failed.json``; the report marks it failed). With the basic launcher
the families run one after another (they share the machine, and timing must be fair); with a
submitit launcher (``launcher=local`` or ``slurm``) the family sweeps are submitted together.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from genbench import CONFIG_DIR
from genbench.config import print_config_tree
from genbench.errors import GenbenchError, user_errors
from genbench.loggers import wandb_mode
from genbench.report.build import write_report
from genbench.report.collect import find_runs
from genbench.report.floor import real_floor
from genbench.rundir import write_failure

log = logging.getLogger("genbench.benchmark")


def training_command(cfg: DictConfig, family: str, sweep_dir: Path) -> list[str]:
    experiment = f"{cfg.budget.experiment}_{family}"
    if not (CONFIG_DIR / "experiment" / f"{experiment}.yaml").is_file():
        raise GenbenchError(
            f"budget '{cfg.budget.name}' has no experiment for family '{family}' (conf/experiment/{experiment}.yaml). "
            f"Choose families from those with a conf/experiment/{cfg.budget.experiment}_<family>.yaml."
        )
    cmd = [
        sys.executable,
        "-m",
        "genbench.train",
        "-m",
        f"experiment={experiment}",
        "seed=" + ",".join(str(s) for s in cfg.seeds),
        f"hydra.sweep.dir={sweep_dir}",
        "print_config=false",
        "fail_soft=true",
    ]
    if cfg.launcher:
        cmd.append(f"hydra/launcher={cfg.launcher}")
    if cfg.wandb:
        cmd += ["logger=[csv,wandb]", f"logger.wandb.group={sweep_dir.parent.parent.name}"]
    cmd += list(cfg.budget.get("train_overrides") or []) + list(cfg.train_overrides or [])
    cmd += list((cfg.family_overrides or {}).get(family) or [])
    return cmd


def run_training(cfg: DictConfig, out_dir: Path) -> dict[str, int]:
    """Launch one multirun per family; returns each family's exit status."""
    procs: dict[str, subprocess.Popen] = {}
    status: dict[str, int] = {}
    parallel = bool(cfg.launcher)  # submitit launchers: the cluster runs them side by side
    # The jobs run in the benchmark's root, so their paths (root_dir: $GENBENCH_ROOT or the working
    # directory) resolve as the benchmark's did, wherever genbench is installed.
    root = Path(cfg.paths.root_dir)
    root.mkdir(parents=True, exist_ok=True)
    for family in cfg.families:
        sweep_dir = out_dir / "runs" / family
        sweep_dir.mkdir(parents=True, exist_ok=True)
        cmd = training_command(cfg, family, sweep_dir)
        log.info("Training %s: %s", family, " ".join(cmd[2:]))
        logf = open(sweep_dir / "launcher.log", "w")  # noqa: SIM115 - closed when the process ends
        procs[family] = subprocess.Popen(cmd, cwd=root, stdout=logf, stderr=subprocess.STDOUT)
        procs[family].logf = logf  # type: ignore[attr-defined]
        if not parallel:
            status[family] = _finish(procs.pop(family), family, sweep_dir)
    for family, proc in procs.items():
        status[family] = _finish(proc, family, out_dir / "runs" / family)
    return status


def _finish(proc: subprocess.Popen, family: str, sweep_dir: Path) -> int:
    rc = proc.wait()
    proc.logf.close()  # type: ignore[attr-defined]
    has_runs = any(c.is_dir() and (c / ".hydra").is_dir() for c in sweep_dir.iterdir())
    if rc != 0 and not has_runs:
        # The sweep died before any job started (a broken config): record it like a failed job.
        tail = (sweep_dir / "launcher.log").read_text().strip().splitlines()[-15:]
        lines = [ln.strip() for ln in tail if ln.strip() and "HYDRA_FULL_ERROR" not in ln]
        error = (
            " / ".join(lines[-5:]) if lines else f"the training sweep exited with status {rc} before any job started"
        )
        write_failure(sweep_dir / "failed", family=family, seed=None, error=error, details="\n".join(tail))
    log.info("%s: training jobs finished with exit status %d", family, rc)
    return rc


def run_benchmark(cfg: DictConfig) -> dict[str, Any]:
    out_dir = Path(cfg.paths.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, out_dir / "benchmark_config.yaml", resolve=True)
    for family in cfg.families:  # fail before any training if a family is unknown to the budget
        training_command(cfg, family, out_dir)
    status = run_training(cfg, out_dir)
    runs = find_runs([out_dir / "runs" / f for f in cfg.families])
    floor, real_grid = real_floor(runs, out_dir) if cfg.floor else (None, None)
    wandb_run = None
    if cfg.wandb:
        import wandb

        wandb_run = wandb.init(
            project=cfg.wandb_project,
            group=out_dir.name,
            job_type="benchmark-report",
            dir=str(out_dir),
            mode=wandb_mode(),
            config=OmegaConf.to_container(cfg, resolve=True),
        )
    report = write_report(
        runs,
        out_dir,
        title=f"genbench benchmark — budget '{cfg.budget.name}'",
        floor=floor,
        real_grid=real_grid,
        context={
            "budget": OmegaConf.to_container(cfg.budget, resolve=True),
            "config": OmegaConf.to_container(cfg, resolve=True),
            "exit_status": status,
        },
        wandb_run=wandb_run,
    )
    if wandb_run is not None:
        wandb_run.finish()
    print(report["paths"]["md"].read_text())
    print(f"Report: {report['paths']['html']}")
    return report


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="benchmark")
def main(cfg: DictConfig) -> None:
    with user_errors():
        if cfg.get("print_config"):
            print_config_tree(cfg, order=("budget", "families", "seeds", "launcher"))
        run_benchmark(cfg)


if __name__ == "__main__":
    main()
