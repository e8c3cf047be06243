"""Against a real single-node SLURM (scripts/slurm_local.sh): Hydra multiruns submitted through
hydra/launcher=slurm, a DDP job spread over two SLURM tasks, a requeued job that resumes from
its checkpoint, and the checks that refuse bad requests before submission.

The module's fixture brings the cluster up (as root; skips with the script's reason where it
cannot) and down again. Every test uses its own sweep directory (and so submitit folder)."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from conftest import QUIET, TINY, vae_sweep
from genbench import PROJECT_ROOT, GenbenchError
from genbench.cluster import check_launcher

pytestmark = pytest.mark.slurm

SCRIPT = PROJECT_ROOT / "scripts" / "slurm_local.sh"
# One CPU and 1 GB per task: the local node has 2 CPUs, so two jobs (or one 2-task job) run at once.
SLURM = ["hydra/launcher=slurm", "hydra.launcher.mem_gb=1", "hydra.launcher.timeout_min=10"]


def local_slurm(**settings: str) -> Iterator[dict[str, str]]:
    """Bring a local cluster up (``settings``: GENBENCH_SLURM_* variables of the script), yield the
    environment its clients need, and bring it down again; skips with the script's reason where
    SLURM cannot run here (not root, no packages)."""
    script_env = {**os.environ, **settings}
    up = subprocess.run(["bash", str(SCRIPT), "up"], capture_output=True, text=True, timeout=600, env=script_env)
    if up.returncode == 2:
        pytest.skip(f"no local SLURM: {up.stderr.strip().splitlines()[-1]}")
    assert up.returncode == 0, f"slurm_local.sh up failed:\n{up.stderr[-3000:]}"
    conf = re.search(r"SLURM_CONF=(\S+)", up.stdout)
    assert conf, up.stdout
    env = {"SLURM_CONF": conf.group(1)}
    old = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = env["SLURM_CONF"]  # for in-process sinfo/squeue/scontrol
    try:
        yield env
    finally:
        subprocess.run(["bash", str(SCRIPT), "down"], capture_output=True, text=True, timeout=120, env=script_env)
        if old is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = old


# Module scope: another module's cluster (tests/test_multinode.py) sets SLURM_CONF for its own tests.
@pytest.fixture(scope="module")
def slurm() -> Iterator[dict[str, str]]:
    yield from local_slurm()


def squeue(*args: str) -> list[str]:
    out = subprocess.run(["squeue", "-h", *args], capture_output=True, text=True, timeout=30, check=True)
    return [line.strip() for line in out.stdout.splitlines() if line.strip()]


def steps(run: Path, key: str = "train/loss") -> list[int]:
    with open(run / "csv" / "metrics.csv") as f:
        return [int(r["step"]) for r in csv.DictReader(f) if r.get(key)]


def job_ids(sweep: Path) -> list[str]:
    return sorted(p.name for p in (sweep / ".submitit").iterdir() if p.name.isdigit())


def test_multirun_of_two_trainings_through_slurm(slurm: dict[str, str], tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    res = vae_sweep(
        sweep,
        "seed=1,2",
        *SLURM,
        env=slurm,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    tasks = sorted(p.name for p in (sweep / ".submitit").iterdir() if re.fullmatch(r"\d+_\d+", p.name))
    assert len(tasks) == 2  # two SLURM jobs (an array of two)
    val = {}
    for num, seed in (("0", 1), ("1", 2)):
        run = sweep / num
        ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
        assert ckpt["global_step"] == 6
        assert ckpt["genbench"]["config"]["seed"] == seed
        metrics = json.loads((run / "metrics.json").read_text())
        assert metrics["global_step"] == 6
        assert steps(run) == list(range(6))
        val[seed] = metrics["val/loss"]
    assert val[1] != val[2]
    logs = [p.read_text() for p in (sweep / ".submitit").glob("*/*_log.out")]
    assert len(logs) == 2 and all("Job completed successfully" in log for log in logs)
    # the jobs ran under SLURM: submitit recorded the SLURM job environment
    assert all(re.search(r"JobEnvironment\(job_id=\d+_\d", log) for log in logs)


def test_ddp_job_runs_one_slurm_task_per_device(slurm: dict[str, str], tmp_path: Path) -> None:
    """trainer=ddp_cpu (devices=2) -> tasks_per_node=2; Lightning's SLURMEnvironment makes them ranks."""
    sweep = tmp_path / "sweep"
    res = vae_sweep(
        sweep,
        "trainer=ddp_cpu",
        "callbacks.ddp_sync_check=null",
        *SLURM,
        env=slurm,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    (job,) = job_ids(sweep)
    outs = {
        int(p.name.split("_")[1]): p.read_text() + p.with_suffix(".err").read_text()
        for p in (sweep / ".submitit" / job).glob("*_log.out")
    }
    assert sorted(outs) == [0, 1]  # two SLURM tasks
    for rank, text in outs.items():
        assert f"GLOBAL_RANK: {rank}, MEMBER: {rank + 1}/2" in text, text[-2000:]
    metrics = json.loads((sweep / "0" / "metrics.json").read_text())
    # 6 optimizer steps, each on a batch per rank; written once, by rank 0
    assert metrics["global_step"] == 6
    assert steps(sweep / "0") == list(range(6))


def long_vae_sweep(sweep: Path, slurm: dict[str, str], max_steps: int, *extra: str) -> subprocess.Popen:
    """Submit one VAE training of ``max_steps`` steps through hydra/launcher=slurm (in the background)."""
    args = [
        "-m",
        "model=vae",
        *QUIET,
        *TINY["vae"],
        f"trainer.max_steps={max_steps}",
        "trainer.max_epochs=100",
        "data.num_train=4096",  # 112 batches an epoch: a signal lands mid-epoch
        "trainer.limit_train_batches=1.0",  # debug=fast (in QUIET) would cut epochs to 6 batches
        "+logger.csv.flush_logs_every_n_steps=1",
        *SLURM,
        f"hydra.sweep.dir={sweep}",
        *extra,
    ]
    tests = str(Path(__file__).parent)  # signal_helpers, for callbacks given in ``extra``
    pythonpath = os.pathsep.join(p for p in (tests, os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "WANDB_MODE": "offline", "PYTHONPATH": pythonpath, **slurm}
    return subprocess.Popen(
        [sys.executable, "-m", "genbench.train", *args],
        cwd=PROJECT_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def wait_until_training(hydra: subprocess.Popen, run: Path, min_steps: int = 3, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and hydra.poll() is None:
        if (run / "csv" / "metrics.csv").is_file() and len(steps(run)) >= min_steps:
            return
        time.sleep(0.2)
    pytest.fail(f"the job never started training:\n{hydra.communicate(timeout=60)[0][-3000:]}")


def release_when_requeued(job: str, timeout: float = 90) -> None:
    """Requeued jobs are held ~cred_expire seconds (BeginTime): release it once it is pending again."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and squeue("-t", "all", "-j", job, "-o", "%T") != ["PENDING"]:
        time.sleep(0.3)
    state = squeue("-t", "all", "-j", job, "-o", "%T")
    assert state == ["PENDING"], f"the job was not requeued (state {state})"
    subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], check=True, timeout=30)


def job_log(sweep: Path, job: str) -> str:
    return "".join(p.read_text() for p in (sweep / ".submitit" / job).glob(f"{job}_0_log.*"))


def finish(hydra: subprocess.Popen, timeout: float = 240) -> str:
    try:
        out, _ = hydra.communicate(timeout=timeout)
    finally:
        if hydra.poll() is None:
            hydra.kill()
    assert hydra.returncode == 0, out[-3000:]
    return out


@pytest.mark.parametrize("signal_name", ["USR2", "TERM"])
def test_requeued_job_resumes_from_its_checkpoint(signal_name: str, slurm: dict[str, str], tmp_path: Path) -> None:
    """USR2 is the time-limit path (what --signal=USR2@signal_delay_s delivers before the limit):
    the training saves last.ckpt at the next step and requeues through submitit. TERM is a bare
    SIGTERM to a running job (``scancel --signal=TERM``): it saves and requeues itself with
    scontrol. Either way the rerun (SLURM_RESTART_COUNT=1) continues from that step, logging each
    step once."""
    sweep, max_steps = tmp_path / "sweep", 80
    run = sweep / "0"
    hydra = long_vae_sweep(sweep, slurm, max_steps)
    try:
        wait_until_training(hydra, run)
        (job,) = job_ids(sweep)
        subprocess.run(["scancel", f"--signal={signal_name}", job], check=True, timeout=30)
        release_when_requeued(job)
    finally:
        finish(hydra)

    log = job_log(sweep, job)
    saved = int(re.search(r"Saved \S+last\.ckpt at step (\d+); requeueing", log).group(1))
    assert "Requeued job" in log and "SLURM restart 1 of this job" in log
    kept = int(re.search(r"kept \d+ rows before step (\d+)", log).group(1))
    assert 0 < kept == saved < max_steps  # caught mid-training, resumed from exactly that step
    assert "Job completed successfully" in log and "SLURM restart 2" not in log
    # no step lost, none logged twice: the CSV log is one uninterrupted run's
    assert steps(run) == list(range(max_steps))
    assert sorted(p.name for p in (run / "checkpoints").glob("last*")) == ["last.ckpt"]
    final = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert final["global_step"] == max_steps
    assert json.loads((run / "metrics.json").read_text())["global_step"] == max_steps


def test_preemption_by_a_higher_priority_job_requeues_and_resumes_exactly(
    slurm: dict[str, str], tmp_path: Path
) -> None:
    """A real preemption: a job of the high-priority partition "urgent" that needs the whole node
    preempts the training running in "debug" (PreemptMode=REQUEUE): SLURM sends SIGTERM, the
    training saves last.ckpt at the next step and stops, SLURM requeues it, and the rerun ends with
    the same weights and the same per-step losses as an uninterrupted run of the same job."""
    max_steps = 100
    reference = tmp_path / "reference"
    finish(long_vae_sweep(reference, slurm, max_steps))

    sweep = tmp_path / "sweep"
    run = sweep / "0"
    # 0.5 s a step (sleep only: the same numbers): ~50 s of job, for the scheduler's preemption pass
    slow = "+callbacks.slow={_target_: signal_helpers.SlowDown, seconds: 0.5}"
    hydra = long_vae_sweep(sweep, slurm, max_steps, slow)
    try:
        wait_until_training(hydra, run)
        (job,) = job_ids(sweep)
        urgent = subprocess.run(
            [
                "sbatch",
                "--parsable",
                "-p",
                "urgent",
                "--exclusive",
                "-o",
                str(tmp_path / "urgent.out"),
                "--wrap",
                "sleep 2; echo urgent job ran",
            ],
            check=True,
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout.strip()
        release_when_requeued(job)
    finally:
        finish(hydra)

    log = job_log(sweep, job)
    # While SLURM preempts, squeue may still say RUNNING (the job then also asks for its own
    # requeue, which SLURM's requeue makes moot) or COMPLETING (it just stops): requeued once either way.
    saved = int(re.search(r"SIGTERM: Saved \S+last\.ckpt at step (\d+); (stopping|requeueing)", log).group(1))
    assert 0 < saved < max_steps and "SLURM restart 1 of this job" in log and "SLURM restart 2" not in log
    assert "Job completed successfully" in log
    assert urgent and (tmp_path / "urgent.out").read_text().strip() == "urgent job ran"  # the preemptor ran
    assert steps(run) == list(range(max_steps))  # every step once
    got = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    want = torch.load(reference / "0" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert got["global_step"] == want["global_step"] == max_steps
    assert all(torch.equal(got["state_dict"][k], v) for k, v in want["state_dict"].items())


def test_bad_requests_are_refused_before_submission(slurm: dict[str, str], tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    name = f"refused-{uuid.uuid4().hex[:8]}"  # look only at this test's jobs: others may come and go
    res = vae_sweep(
        sweep,
        "seed=1,2",
        *SLURM,
        "hydra.launcher.partition=no_such_partition",
        f"hydra.launcher.name={name}",
        tiny=False,
        env=slurm,
        timeout=120,
    )
    assert res.returncode == 1
    errors = [line for line in res.stderr.splitlines() if line.startswith("genbench: error:")]
    assert len(errors) == 1 and "no partition 'no_such_partition'" in errors[0] and "debug" in errors[0]
    # nothing was submitted: no submitit folder, and no job of that name in any state
    assert not (sweep / ".submitit").exists() and squeue("-t", "all", "--name", name, "-o", "%i") == []

    from test_sweeps import compose_with_hydra

    for overrides, message in (
        (["trainer=gpu"], r"1 GPU\(s\) per node but nodes of the default partition have at most 0"),
        (["hydra.launcher.partition=debug", "hydra.launcher.mem_gb=4096"], "mem_gb=4096 is more than"),
        (["trainer=ddp_cpu", "trainer.devices=8"], "CPUs per node"),
    ):
        cfg = compose_with_hydra(["hydra/launcher=slurm", "data=synthetic", *overrides])
        with pytest.raises(GenbenchError, match=message):
            check_launcher(cfg)
    check_launcher(
        compose_with_hydra(
            ["hydra/launcher=slurm", "data=synthetic", "hydra.launcher.partition=debug", "hydra.launcher.mem_gb=1"]
        )
    )


def test_a_job_looks_dead_only_after_the_grace_period_without_a_sign_of_life() -> None:
    """The launcher's rule: a requeue in progress (PREEMPTED, REQUEUED, PENDING) is alive, a final
    state or a job squeue no longer lists is suspect, and only a job suspect for the whole grace
    period is lost; squeue not answering (None) proves nothing either way."""
    from genbench.cluster.launcher import JobWatch

    watch, grace = JobWatch("7_0"), 10.0
    timeline: list[tuple[float, dict[str, str] | None, bool]] = [
        (0.0, {"7_0": "RUNNING"}, False),
        (1.0, {"7_0": "PREEMPTED"}, False),
        (2.0, {"7_0": "FAILED"}, False),  # suspect from here
        (11.0, {"7_0": "FAILED"}, False),  # 9 s: not yet
        (11.5, {"7_0": "REQUEUED"}, False),  # alive again: the clock restarts
        (13.0, {"7_0": "PENDING"}, False),
        (20.0, {}, False),  # gone from squeue: suspect from here
        (29.0, None, False),  # squeue did not answer
        (30.0, {}, True),  # 10 s gone
    ]
    for now, states, lost in timeline:
        watch.observe(states, now)
        assert watch.lost(now, grace) is lost, (now, states)
        assert not watch.lost(now, None)  # lost_job_grace_s=null: wait forever, as the plain launcher
    assert watch.state == "PENDING"  # the last state squeue reported


def python_of_job(job: str) -> int:
    """The pid of the job's training process (submitit's ``python -m submitit.core._submit``), from
    ``scontrol listpids``, which lists the processes of every step of the job on this node."""
    out = subprocess.run(["scontrol", "listpids", job], capture_output=True, text=True, timeout=30, check=True)
    for line in out.stdout.splitlines()[1:]:
        pid = line.split()[0]
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        # the python itself, not the batch step's srun whose arguments name the same module
        if b"submitit.core._submit" in cmdline and Path(cmdline[0].decode()).name.startswith("python"):
            return int(pid)
    pytest.fail(f"no training process in job {job}:\n{out.stdout}")


def test_a_job_killed_without_a_result_fails_the_sweep_instead_of_hanging(
    slurm: dict[str, str], tmp_path: Path
) -> None:
    """The training process of a running job is SIGKILLed, as the kernel's OOM killer does it: the
    process cannot catch the signal, so no checkpoint, no requeue and no result pickle; srun
    reports "task 0: Killed", the batch script ends and SLURM marks the job FAILED (after MinJobAge
    squeue forgets it; there is no sacct here). (``scancel --signal=KILL`` would be SLURM's own kill
    of the steps, a cancellation rather than a death of the job's own.) The plain submitit launcher
    waits for the result forever; genbench's launcher sees the job gone for lost_job_grace_s and
    ends the multirun with status 1 and one line naming the job and its log."""
    import signal

    sweep = tmp_path / "sweep"
    hydra = long_vae_sweep(sweep, slurm, 5000, "hydra.launcher.lost_job_grace_s=10")
    job = None
    try:
        wait_until_training(hydra, sweep / "0")
        (job,) = job_ids(sweep)
        os.kill(python_of_job(job), signal.SIGKILL)
        killed = time.monotonic()
        out, _ = hydra.communicate(timeout=150)
        waited = time.monotonic() - killed
    finally:
        if hydra.poll() is None:
            hydra.kill()
            hydra.communicate()
        if job is not None:
            subprocess.run(["scancel", job], capture_output=True, timeout=30)

    assert hydra.returncode == 1, out[-3000:]
    assert 10 <= waited < 120, waited  # no sooner than the grace period, and not forever
    lines = [line for line in out.splitlines() if f"SLURM job {job} " in line]
    assert len(lines) == 1, out[-3000:]
    logs = sweep / ".submitit" / job
    assert lines[0].startswith("genbench: error:") and "ended without a result (state FAILED)" in lines[0]
    assert str(logs / f"{job}_0_log.err") in lines[0] and str(logs / f"{job}_0_log.out") in lines[0]
    assert "task 0: Killed" in job_log(sweep, job)
    assert not list(logs.glob("*_result.pkl"))  # it really ended without a result


def test_two_sweeps_on_one_optuna_study_split_its_trials(slurm: dict[str, str], tmp_path: Path) -> None:
    """Two `genbench-train -m hparams_search=vae_optuna hydra/launcher=slurm` processes, started together
    on the same stored study (the SQLite file under the shared paths.log_dir), claim its trials
    under a lock: the study ends with exactly n_trials finished trials between them, each trial run
    once (one SLURM job, one run directory, the value it returned), none proposing another's
    hyperparameters, and both sweeps report the same best trial of the whole study."""
    import optuna
    import yaml

    from test_sweeps import optuna_args

    n_trials, log_dir = 4, tmp_path / "out"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "WANDB_MODE": "offline", **slurm}
    sweeps = [tmp_path / "sweep_a", tmp_path / "sweep_b"]
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "genbench.train", "-m", *optuna_args(log_dir, sweep, n_trials), *SLURM],
            cwd=PROJECT_ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for sweep in sweeps
    ]
    outs = [finish(p, timeout=600) for p in procs]

    study = optuna.load_study(study_name="vae", storage=f"sqlite:///{log_dir / 'optuna' / 'vae.db'}")
    trials = study.get_trials()
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * n_trials, outs
    assert [t.number for t in trials] == list(range(n_trials))
    # each trial is one job of one sweep: its run directory returned the value the study holds
    runs = [p for sweep in sweeps for p in sweep.iterdir() if p.is_dir() and p.name.isdigit()]
    assert len(runs) == n_trials
    by_params = {}
    for run in runs:
        overrides = dict(o.split("=", 1) for o in yaml.safe_load((run / ".hydra" / "overrides.yaml").read_text()))
        by_params[overrides["model.optimizer.lr"]] = json.loads((run / "metrics.json").read_text())["val/neg_elbo"]
    assert len(by_params) == n_trials  # no two trials drew the same learning rate
    assert sorted(by_params.values()) == pytest.approx(sorted(t.value for t in trials))
    owners = {t.system_attrs["genbench_sweep"]["pid"] for t in trials}
    assert owners == {p.pid for p in procs}  # both sweeps ran trials
    for sweep in sweeps:
        results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
        assert results["best_value"] == pytest.approx(min(t.value for t in trials))


def test_which_trials_of_a_shared_study_hold_a_slot() -> None:
    """The claim rule of several sweeps on one study: finished trials and trials running in a live
    sweep hold a slot; a running trial of a dead sweep (a dead pid on this host, or a heartbeat older
    than STALE_AFTER_S from another host) or one no genbench sweep claimed frees its slot."""
    import socket

    import optuna

    from genbench.cluster.optuna_sweeper import HEARTBEAT_ATTR, OWNER_ATTR, STALE_AFTER_S, holds_slot

    dead = subprocess.Popen(["true"])
    dead.wait()
    here, now = socket.gethostname(), time.time()
    study = optuna.create_study()
    cases = {  # (owner, heartbeat age in s) -> holds a slot
        "finished": (None, None, True),
        "unclaimed": (None, None, False),
        "alive here": ({"host": here, "pid": os.getpid()}, 1.0, True),
        "dead pid here": ({"host": here, "pid": dead.pid}, 1.0, False),
        "alive elsewhere": ({"host": "other-node", "pid": dead.pid}, STALE_AFTER_S - 10, True),
        "silent elsewhere": ({"host": "other-node", "pid": os.getpid()}, STALE_AFTER_S + 10, False),
    }
    for name, (owner, age, _) in cases.items():
        trial = study.ask()
        study.set_user_attr(str(trial.number), name)
        if owner is not None:
            study._storage.set_trial_system_attr(trial._trial_id, OWNER_ATTR, owner)
            study._storage.set_trial_system_attr(trial._trial_id, HEARTBEAT_ATTR, now - age)
        if name == "finished":
            study.tell(trial, 1.0)
    for trial in study.get_trials():
        name = study.user_attrs[str(trial.number)]
        assert holds_slot(trial, now, host=here) is cases[name][2], name
