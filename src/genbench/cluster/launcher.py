"""The SLURM launcher of ``hydra/launcher=slurm``: hydra-submitit-launcher's, with a wait that notices dead jobs.

hydra-submitit-launcher waits on ``[job.results()[0] for job in jobs]``, and submitit decides a job
is over when its result pickle exists or when ``sacct`` reports a final state. Without SLURM
accounting (``sacct`` fails: submitit logs "Bypassing sacct error" and keeps the state UNKNOWN,
which it counts as unfinished), a job that dies without writing its result -- its python SIGKILLed,
killed for memory, its node lost -- is waited for forever: the submitting ``genbench-train -m`` hangs.

:class:`GenbenchSlurmLauncher` submits exactly as that launcher does and returns the same results
for the jobs that finish, but it waits on all jobs at once and asks ``squeue -t all`` (which knows
jobs until ``MinJobAge`` after they end, with or without accounting) whether each job is still
alive. A job without a result that ``squeue`` no longer lists, or lists in a final state
(FAILED, CANCELLED, OUT_OF_MEMORY, TIMEOUT, NODE_FAIL...), for longer than ``lost_job_grace_s``
is *lost*: its Hydra job return is FAILED with a :class:`SlurmJobsLost` that names the job, its
state if known and its log files, one line per lost job. The sweep waits for the other jobs, keeps
their results, and then Hydra's sweeper ends the multirun with that message and status 1 (the
Optuna sweeper records the trial as failed first). PENDING, REQUEUED, PREEMPTED (the moment before
a requeue), COMPLETING and every state this module does not know count as alive, and the grace
period covers the seconds a requeue takes, so a requeued job is never taken for a dead one.

Hydra instantiates launchers only from the ``hydra_plugins`` namespace, so the class Hydra sees is
``hydra_plugins.genbench_launcher.GenbenchSlurmLauncher``, a subclass of the one here.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from hydra.errors import CompactHydraException
from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher
from omegaconf import OmegaConf

log = logging.getLogger("genbench.cluster")

#: default of ``hydra.launcher.lost_job_grace_s``: longer than a requeue takes (SLURM requeues a
#: preempted job in seconds; a requeued job is PENDING, hence alive, right after) and than a slow
#: shared filesystem takes to show a result pickle written just before the job ended.
DEFAULT_LOST_JOB_GRACE_S = 60.0

#: states after which a job runs no more unless SLURM requeues it (``squeue``/``sacct`` %T names).
#: COMPLETED is one: a job that completed without its result pickle lost it. PREEMPTED is not: with
#: ``PreemptMode=REQUEUE`` it is the moment before PENDING, and one that stays PREEMPTED (CANCEL
#: mode) ends up unlisted, hence lost, anyway.
FINAL_STATES = frozenset(
    {
        "BOOT_FAIL",
        "CANCELLED",
        "COMPLETED",
        "DEADLINE",
        "FAILED",
        "NODE_FAIL",
        "OUT_OF_MEMORY",
        "REVOKED",
        "TIMEOUT",
    }
)

#: how long one squeue/sacct call may take; a controller that does not answer tells nothing about the jobs
SQUEUE_TIMEOUT_S = 30


class SlurmJobsLost(CompactHydraException):
    """Jobs of a multirun that ended without a result. A CompactHydraException, so Hydra prints
    the message (one ``genbench: error:`` line per lost job) instead of a traceback and exits
    with status 1: the traceback would only show the launcher's waiting loop."""


def squeue_states(job_ids: Iterable[str]) -> dict[str, str] | None:
    """The state of each listed job as ``squeue -t all`` reports it (array tasks as ``<array>_<task>``).

    A job missing from the dict is unknown to squeue (ended more than ``MinJobAge`` ago). None when
    squeue cannot answer (not installed, controller down, timeout): nothing can be concluded then.
    """
    base = sorted({job_id.split("_")[0] for job_id in job_ids})
    if not base or shutil.which("squeue") is None:
        return None
    cmd = ["squeue", "-h", "-r", "-t", "all", "-j", ",".join(base), "-o", "%i|%T"]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=SQUEUE_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        # every id unknown: squeue fails with "Invalid job id specified" (one known id is enough to succeed)
        return {} if "invalid job id" in out.stderr.lower() else None
    states: dict[str, str] = {}
    for line in out.stdout.splitlines():
        job_id, _, state = line.strip().partition("|")
        if job_id and state:
            states[job_id] = state.strip().upper()
    return states


def sacct_state(job_id: str) -> str | None:
    """The job's final state from accounting, where there is accounting (None otherwise): for a
    job that squeue has already forgotten, so the report can still say OUT_OF_MEMORY or FAILED."""
    if shutil.which("sacct") is None:
        return None
    try:
        out = subprocess.run(
            ["sacct", "-n", "-X", "-P", "-j", job_id, "-o", "State"],
            capture_output=True,
            text=True,
            timeout=SQUEUE_TIMEOUT_S,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    words = out.stdout.split() if out.returncode == 0 else []
    return words[0].upper() if words else None  # "CANCELLED by 0" -> CANCELLED


@dataclass
class JobWatch:
    """What the waiting loop knows about one submitted job: since when it has looked dead.

    ``suspect_since`` is the first time squeue did not list the job or listed it in a final state
    (None while it looks alive); any sign of life resets it, and the job is lost once it has looked
    dead for the grace period without interruption.
    """

    job_id: str
    suspect_since: float | None = None
    state: str | None = None

    def observe(self, states: dict[str, str] | None, now: float) -> None:
        """Take in one squeue answer (None: squeue did not answer, which proves nothing either way)."""
        if states is None:
            return
        state = states.get(self.job_id)
        if state is not None:
            self.state = state
        if state is None or state in FINAL_STATES:
            if self.suspect_since is None:
                self.suspect_since = now
        else:
            self.suspect_since = None

    def lost(self, now: float, grace_s: float | None) -> bool:
        return grace_s is not None and self.suspect_since is not None and now - self.suspect_since >= grace_s


def _has_results(job: Any) -> bool:
    """Whether every task of the job has written its result pickle (what ``job.results()`` reads)."""
    folder = Path(job.paths.folder)
    with contextlib.suppress(OSError):  # as submitit does: refreshes a network filesystem's attribute cache
        folder.chmod(folder.stat().st_mode)
    return all(job.task(k).paths.result_pickle.exists() for k in range(job.num_tasks))


def lost_job_line(job: Any, watch: JobWatch, job_num: int, sweep_dir: str) -> str:
    """One line that says which job ended without a result, how SLURM last saw it and where its logs are."""
    paths = job.task(0).paths
    if watch.state is not None:
        how = f"state {watch.state}"
    else:
        known = sacct_state(job.job_id)
        how = f"state {known}" if known else "no longer known to squeue, state unknown"
    return (
        f"genbench: error: SLURM job {job.job_id} (run {sweep_dir}/{job_num}) ended without a result ({how}): "
        f"see its logs {paths.stderr} and {paths.stdout}"
    )


def wait_for_jobs(
    jobs: Sequence[Any],
    grace_s: float | None,
    *,
    check_every_s: float = 1.0,
    states: Callable[[Iterable[str]], dict[str, str] | None] = squeue_states,
) -> tuple[list[Any], dict[int, JobWatch]]:
    """Wait until every job has either written its results or is lost; never longer.

    Returns the jobs' results (``job.results()[0]``, as hydra-submitit-launcher returns them; None
    for a lost job) and the lost jobs' watches by index. Result pickles are looked at every
    ``check_every_s``, squeue is asked (about all jobs at once) every quarter of the grace period
    (between 2 and 30 s). An exception of a job's own (submitit's FailedJobError) is raised as
    before, once the other jobs are over, so none is left unwatched.
    """
    results: list[Any] = [None] * len(jobs)
    watches = {i: JobWatch(job.job_id) for i, job in enumerate(jobs)}
    pending = set(watches)
    lost: dict[int, JobWatch] = {}
    errors: dict[int, BaseException] = {}
    ask_every_s = min(30.0, max(2.0, (grace_s or 120.0) / 4))
    last_asked = float("-inf")
    warned = False
    while pending:
        for i in sorted(pending):
            if _has_results(jobs[i]):
                try:
                    results[i] = jobs[i].results()[0]
                except Exception as e:  # submitit's FailedJobError: raised below, after the others
                    errors[i] = e
                pending.discard(i)
        now = time.monotonic()
        if pending and now - last_asked >= ask_every_s:
            answer = states(jobs[i].job_id for i in pending)
            last_asked = now
            if answer is None and not warned:
                warned = True
                log.warning(
                    "squeue does not answer: cannot tell whether the jobs are alive; waiting for their results."
                )
            for i in sorted(pending):
                watches[i].observe(answer, now)
                # the result may have landed since the pickles were looked at: only a job without one is lost
                if watches[i].lost(now, grace_s) and not _has_results(jobs[i]):
                    lost[i] = watches[i]
                    pending.discard(i)
                    if pending:
                        log.warning(
                            "SLURM job %s ended without a result (state %s); waiting for the %d other job(s).",
                            jobs[i].job_id,
                            watches[i].state or "unknown",
                            len(pending),
                        )
        if pending:
            time.sleep(check_every_s)
    if errors:
        raise errors[min(errors)]
    return results, lost


class GenbenchSlurmLauncher(SlurmLauncher):
    """hydra-submitit-launcher's SlurmLauncher that reports jobs which ended without a result instead of
    waiting for them forever (see the module docstring).

    ``lost_job_grace_s`` (``hydra.launcher.lost_job_grace_s``, default 60; null waits forever as the
    plain launcher does) is how long a job must look dead before it counts as lost. Every other key
    is the plain launcher's.
    """

    def __init__(self, lost_job_grace_s: float | None = DEFAULT_LOST_JOB_GRACE_S, **params: Any) -> None:
        super().__init__(**params)
        self.lost_job_grace_s = None if lost_job_grace_s is None else float(lost_job_grace_s)

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        """BaseSubmititLauncher.launch of hydra-submitit-launcher 1.2.0 (pinned), step for step, up to
        the wait: that is one list comprehension at the end of the method, so the method is repeated
        here rather than patched."""
        import submitit

        assert self.config is not None
        assert len(job_overrides) > 0
        init_params = {"folder": self.params["submitit_folder"]}
        specific_init_keys = {"max_num_timeout"}
        init_params.update(**{f"{self._EXECUTOR}_{x}": y for x, y in self.params.items() if x in specific_init_keys})
        init_keys = specific_init_keys | {"submitit_folder"}
        executor = submitit.AutoExecutor(cluster=self._EXECUTOR, **init_params)
        baseparams = set(OmegaConf.structured(BaseQueueConf).keys())
        params = {
            x if x in baseparams else f"{self._EXECUTOR}_{x}": y for x, y in self.params.items() if x not in init_keys
        }
        executor.update_parameters(**params)

        log.info(f"Submitit '{self._EXECUTOR}' sweep output dir : {self.config.hydra.sweep.dir}")
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        if "mode" in self.config.hydra.sweep:
            os.chmod(sweep_dir, mode=int(str(self.config.hydra.sweep.mode), 8))

        job_params: list[Any] = []
        for idx, overrides in enumerate(job_overrides):
            idx = initial_job_idx + idx
            log.info(f"\t#{idx} : {' '.join(filter_overrides(overrides))}")
            job_params.append((list(overrides), "hydra.sweep.dir", idx, f"job_id_for_{idx}", Singleton.get_state()))

        jobs = executor.map_array(self, *zip(*job_params, strict=True))
        results, lost = wait_for_jobs(jobs, self.lost_job_grace_s)
        if not lost:
            return results
        error = SlurmJobsLost(
            "\n".join(
                lost_job_line(jobs[i], watch, initial_job_idx + i, str(sweep_dir)) for i, watch in sorted(lost.items())
            )
        )
        for i in lost:
            ret = JobReturn(overrides=list(job_overrides[i]), status=JobStatus.FAILED)
            ret.return_value = error
            results[i] = ret
        return results
