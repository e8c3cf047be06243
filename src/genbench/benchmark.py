"""``genbench-benchmark``: train every family under one budget, evaluate them with one protocol,
write one report.

    genbench-benchmark                           # budget=cpu: Fashion-MNIST, 2 CPU cores, < 20 min
    genbench-benchmark budget=full seeds=[0,1,2] launcher=slurm
    genbench-benchmark budget=cpu families=[<family>,<family>]
    genbench-benchmark conditional=true          # every family that can be, class-conditional

The training jobs are Hydra multiruns of ``genbench-train`` (``experiment=<budget.experiment>``, the
same protocol for every family, ``model=<family>`` with the family's settings for the budget, ``seed=...``), one per family so that a family whose config or training breaks cannot take the
others down (its jobs record ``failed.json``; the report marks it failed). With the basic launcher
the families run one after another (they share the machine, and timing must be fair); with a
submitit launcher (``launcher=local`` or ``slurm``) the family sweeps are submitted together.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from genbench import CONFIG_DIR
from genbench.config import print_config_tree
from genbench.errors import GenbenchError, user_errors
from genbench.extras import require_extra
from genbench.io import atomic_write_bytes
from genbench.loggers import log_file_artifact, wandb_mode
from genbench.report.build import hints_text, write_report
from genbench.report.collect import failed_runs_line, find_runs
from genbench.report.floor import real_floor
from genbench.rundir import FAILED, METRICS, write_failure
from genbench.summary import print_summary, setup_run_logging

log = logging.getLogger("genbench.benchmark")


def conditional_families(cfg: DictConfig) -> tuple[list[str], list[str]]:
    """(the families a conditional benchmark trains, those it leaves out because they cannot be
    asked for a class: ``FamilySpec.conditional``). Every family when ``conditional`` is false."""
    from genbench.registry import get_family

    if not cfg.get("conditional"):
        return list(cfg.families), []
    able = [f for f in cfg.families if get_family(f).conditional]
    return able, [f for f in cfg.families if f not in able]


def check_families(cfg: DictConfig) -> None:
    """Refuse, before any training, a family genbench does not know, a budget without its
    protocol experiment, or a conditional benchmark of families none of which can be conditioned:
    one line each, saying what exists."""
    from genbench.registry import families, get_family

    for family in cfg.families:
        get_family(family)
    able, left_out = conditional_families(cfg)
    if not able:
        can = [name for name, spec in families().items() if spec.conditional]
        raise GenbenchError(
            f"conditional=true, but none of {', '.join(cfg.families)} can be class-conditional: "
            + (f"choose from {', '.join(can)}." if can else "no registered family declares conditional=True.")
        )
    if left_out:
        log.warning("conditional=true: %s cannot be class-conditional and is left out.", ", ".join(left_out))
    experiment = str(cfg.budget.experiment)
    if not (CONFIG_DIR / "experiment" / f"{experiment}.yaml").is_file():
        raise GenbenchError(
            f"budget '{cfg.budget.name}' names the protocol experiment '{experiment}', which does not exist "
            f"(conf/experiment/{experiment}.yaml)."
        )


def training_command(cfg: DictConfig, family: str, sweep_dir: Path) -> list[str]:
    """The ``genbench-train`` multirun of one family: the budget's protocol experiment (the same for
    every family), ``model=<family>``, the family's own settings for this budget
    (``section=<budget.section>``: ``conf/family_settings/<family>/<section>.yaml``), its tiny network sizes
    where the budget asks for them, then the budget's and the user's overrides."""
    from genbench.registry import get_family

    spec = get_family(family)
    cmd = [
        sys.executable,
        "-m",
        "genbench.train",
        "-m",
        f"experiment={cfg.budget.experiment}",
        f"model={family}",
        f"section={cfg.budget.get('section') or 'none'}",
        "seed=" + ",".join(str(s) for s in cfg.seeds),
        f"hydra.sweep.dir={sweep_dir}",
        "print_config=false",
        "fail_soft=true",
        f"tags=[benchmark,budget-{cfg.budget.name}{',conditional' if cfg.get('conditional') else ''}]",
    ]
    if cfg.get("conditional"):  # the class count comes from the data (data.num_classes)
        cmd.append("model.conditional=true")
    if cfg.budget.get("tiny_networks"):
        cmd += list(spec.tiny_overrides)
    if cfg.launcher:
        cmd.append(f"hydra/launcher={cfg.launcher}")
    if cfg.wandb:
        # the benchmark's project, one group per benchmark run (its report run joins the same group)
        group = sweep_dir.parent.parent.name
        cmd += ["logger=[csv,wandb]", f"logger.wandb.project={cfg.wandb_project}", f"logger.wandb.group={group}"]
    cmd += list(cfg.budget.get("train_overrides") or [])
    cmd += list(cfg.train_overrides or [])
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
    started = time.perf_counter()
    trained, _ = conditional_families(cfg)
    n = len(trained)
    for i, family in enumerate(trained, 1):
        sweep_dir = out_dir / "runs" / family
        sweep_dir.mkdir(parents=True, exist_ok=True)
        cmd = training_command(cfg, family, sweep_dir)
        log.info(
            "[%d/%d] %s: training %d seed(s) (elapsed %s; job output: %s)",
            i, n, family, len(cfg.seeds), _duration(time.perf_counter() - started), sweep_dir / "launcher.log",
        )  # fmt: skip
        log.debug("%s: %s", family, " ".join(cmd[2:]))
        logf = open(sweep_dir / "launcher.log", "w")  # noqa: SIM115 - closed when the process ends
        procs[family] = subprocess.Popen(cmd, cwd=root, stdout=logf, stderr=subprocess.STDOUT)
        procs[family].logf = logf  # type: ignore[attr-defined]
        procs[family].started = time.perf_counter()  # type: ignore[attr-defined]
        if not parallel:
            status[family] = _finish(procs.pop(family), family, sweep_dir, f"[{i}/{n}]", started)
    for family, proc in procs.items():
        i = trained.index(family) + 1
        status[family] = _finish(proc, family, out_dir / "runs" / family, f"[{i}/{n}]", started)
    return status


def _duration(seconds: float) -> str:
    """12 s, 3m05s, 1h02m: elapsed times in the progress lines."""
    s = int(round(seconds))
    return f"{s} s" if s < 60 else f"{s // 60}m{s % 60:02d}s" if s < 3600 else f"{s // 3600}h{s % 3600 // 60:02d}m"


def job_counts(sweep_dir: Path) -> tuple[int, int]:
    """(jobs that finished, jobs that failed) of a family's sweep: metrics.json vs failed.json."""
    jobs = [c for c in sweep_dir.iterdir() if c.is_dir()] if sweep_dir.is_dir() else []
    return sum((c / METRICS).is_file() for c in jobs), sum((c / FAILED).is_file() for c in jobs)


def _finish(proc: subprocess.Popen, family: str, sweep_dir: Path, step: str = "", started: float = 0.0) -> int:
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
    ok, failed = job_counts(sweep_dir)
    state = "ok" if rc == 0 and failed == 0 else "FAILED"
    log.info(
        "%s %s: %s (%d job(s) done, %d failed, exit status %d) in %s; elapsed %s",
        step, family, state, ok, failed, rc,
        _duration(time.perf_counter() - getattr(proc, "started", started)), _duration(time.perf_counter() - started),
    )  # fmt: skip
    return rc


def run_benchmark(cfg: DictConfig) -> dict[str, Any]:
    out_dir = Path(cfg.paths.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out_dir / "benchmark_config.yaml", OmegaConf.to_yaml(cfg, resolve=True).encode())
    check_families(cfg)  # fail before any training if a family or the budget's protocol is unknown
    if cfg.wandb:
        require_extra("wandb", "genbench-benchmark wandb=true")
    if cfg.launcher:
        require_extra("slurm", f"genbench-benchmark launcher={cfg.launcher}")
    status = run_training(cfg, out_dir)
    trained, left_out = conditional_families(cfg)
    runs = find_runs([out_dir / "runs" / f for f in trained])
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
        title=f"genbench benchmark — budget '{cfg.budget.name}'"
        + (" — class-conditional" if cfg.get("conditional") else ""),
        floor=floor,
        real_grid=real_grid,
        context={
            "budget": OmegaConf.to_container(cfg.budget, resolve=True),
            "config": OmegaConf.to_container(cfg, resolve=True),
            "exit_status": status,
            **({"conditional": {"left_out": left_out}} if cfg.get("conditional") else {}),
        },
        wandb_run=wandb_run,
    )
    if wandb_run is not None:
        log_file_artifact(wandb_run, report["paths"]["html"], f"report-{out_dir.name}", "report")
        wandb_run.finish()
    print(report["paths"]["md"].read_text())
    print(hints_text(report["hints"]), end="")
    report["failed"] = failed_runs_line(runs) or (
        None if all(code == 0 for code in status.values()) else f"a training sweep exited with status {status}"
    )
    families = {family: "left out: cannot be class-conditional" for family in left_out}
    for family in trained:
        ok, failed = job_counts(out_dir / "runs" / family)
        families[family] = f"{'ok' if status.get(family) == 0 and not failed else 'FAILED'}: {ok} done, {failed} failed"
    print_summary(
        "genbench-benchmark: done",
        {
            "benchmark directory": out_dir,
            **{f"  {family}": state for family, state in families.items()},
            "report (html)": report["paths"]["html"],
            "report (markdown)": report["paths"].get("md"),
            "runs": out_dir / "runs",
            "compare": f"genbench-compare {out_dir / 'runs'}",
        },
    )
    return report


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="benchmark")
def main(cfg: DictConfig) -> None:
    setup_run_logging()
    with user_errors():
        if cfg.get("print_config"):
            print_config_tree(cfg, order=("budget", "families", "seeds", "launcher"))
        report = run_benchmark(cfg)
    if report.get("failed"):  # the report is written; the exit status says not every family finished
        print(f"genbench-benchmark: {report['failed']}", file=sys.stderr, flush=True)
        raise SystemExit(1)


if __name__ == "__main__":
    main()
