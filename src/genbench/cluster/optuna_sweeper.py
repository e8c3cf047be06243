"""An Optuna sweeper whose study outlives the process and can be shared: a killed search resumes
where it stopped, and several searches (two SLURM jobs, two machines) on one study split its trials.

Hydra's Optuna sweeper keeps the study wherever ``hydra.sweeper.storage`` says; genbench's
``hparams_search`` configs point it at a SQLite file under the outputs, so every finished trial is
on disk the moment it is told to the study. The stock sweeper, though, runs ``n_trials`` *new*
trials on every invocation, so re-running a killed 20-trial search would run 20 more, and two
searches on one study would run 40. This sweeper reads ``n_trials`` as the size of the whole
study instead. Before each batch of ``n_jobs`` trials it *claims* them: under a lock, it counts the
trials that hold a slot (finished -- complete, pruned or failed -- or running in a live sweep) and
asks the study only for the slots that are left, so two sweeps never run more than ``n_trials``
between them and never the same trial. A sweep that finds no slot left while another sweep's
trials still run waits for them (taking over the slot of one whose sweep died), so every sweep on
the study ends with the study complete and reports its best trial. Re-running a finished search
just reports its best trial again; raise ``hydra.sweeper.n_trials`` to extend it.

Which running trial is alive: each claimed trial records its sweep's host, pid and a heartbeat
(refreshed every ``HEARTBEAT_S``). A trial of a sweep on this host whose pid is gone is dead at
once (a killed search re-run at once gets its slots back); on another host, a heartbeat older than
``STALE_AFTER_S`` means dead. A dead trial stays ``RUNNING`` in the storage (optuna 2.10 cannot
take a trial back) and its slot is run again. A RUNNING trial without these marks (another tool's)
holds no slot, as before.

The lock is a file (:func:`genbench.io.file_lock`, safe on NFS): next to a SQLite database, or
``<paths.log_dir>/optuna/<study>.lock`` for a server database, which sweeps on several machines
must then see on a shared filesystem. Each sweep also draws its trials with the sampler re-seeded
from ``sampler.seed`` plus the trial's number, so two sweeps started with the same seed do not
propose the same hyperparameters, and one sweep stays reproducible.
"""

from __future__ import annotations

import functools
import logging
import os
import socket
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import optuna
from hydra.utils import instantiate
from hydra_plugins.hydra_optuna_sweeper._impl import OptunaSweeperImpl, create_params_from_overrides
from hydra_plugins.hydra_optuna_sweeper.optuna_sweeper import OptunaSweeper
from omegaconf import OmegaConf

from genbench.io import _pid_alive, file_lock

log = logging.getLogger("genbench")

#: trial states that used up one of the study's ``n_trials`` (RUNNING and WAITING did not finish)
FINISHED_STATES = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.FAIL)
#: trial system attributes: the sweep that claimed the trial ({"host", "pid"}) and its last heartbeat (time.time())
OWNER_ATTR = "genbench_sweep"
HEARTBEAT_ATTR = "genbench_heartbeat"
#: how often a sweep refreshes the heartbeat of its running trials, and after how long without one a
#: running trial of a sweep on another host counts as abandoned (clocks of the hosts must agree to
#: within a fraction of this)
HEARTBEAT_S = 30.0
STALE_AFTER_S = 180.0
#: how often a sweep with no slot left looks whether the other sweeps' trials have finished
WAIT_POLL_S = 2.0


def sqlite_path(storage: str) -> Path | None:
    """The database file of a ``sqlite:///<path>`` URL (None for other URLs and in-memory SQLite)."""
    prefix = "sqlite:///"
    if not storage.startswith(prefix) or storage[len(prefix) :] in ("", ":memory:"):
        return None
    return Path(storage[len(prefix) :])


def init_rdb_storage(storage: str) -> None:
    """Create the study tables of a database URL and stamp their schema version, committed.

    optuna 2.10 (the newest that hydra-optuna-sweeper 1.3 accepts) predates SQLAlchemy 2: it
    stamps the schema version on a connection that SQLAlchemy 2 never commits, so opening a fresh
    database fails with a bare ``AssertionError`` in ``get_current_version``. Doing that one step
    once on an autocommit engine leaves a database that optuna's ordinary, transactional storage
    then opens as usual (a database that is already set up is left as it is)."""
    try:
        optuna.storages.RDBStorage(storage, engine_kwargs={"isolation_level": "AUTOCOMMIT"})
    except Exception:  # set up at the same moment by a process outside genbench's lock: it is done now
        time.sleep(1.0)
        optuna.storages.RDBStorage(storage, engine_kwargs={"isolation_level": "AUTOCOMMIT"})


def ensure_rdb_storage(storage: str) -> None:
    """:func:`init_rdb_storage` after creating the folder of a SQLite file (SQLite does not create
    it): what opening a study's storage for the first time needs (callers that share a database
    with other processes hold its lock around this)."""
    db = sqlite_path(storage)
    if db is not None:
        db.parent.mkdir(parents=True, exist_ok=True)
    init_rdb_storage(storage)


def finished_trials(storage: str, study_name: str | None) -> int:
    """How many trials of ``study_name`` in ``storage`` have finished (0 when there is no such study)."""
    if study_name is None:
        return 0
    try:
        study = optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:  # optuna 2.x: no study of that name in this storage yet
        return 0
    return len(study.get_trials(deepcopy=False, states=FINISHED_STATES))


def holds_slot(trial: optuna.trial.FrozenTrial, now: float, host: str | None = None) -> bool:
    """Whether ``trial`` uses up one of the study's ``n_trials``: finished, or running in a sweep that
    is still alive (see the module docstring). ``host`` defaults to this machine's name."""
    if trial.state in FINISHED_STATES:
        return True
    if trial.state != optuna.trial.TrialState.RUNNING:
        return False
    owner = trial.system_attrs.get(OWNER_ATTR)
    if not isinstance(owner, dict):
        return False  # not claimed by a genbench sweep: nothing says it is alive
    if owner.get("host") == (host or socket.gethostname()) and not _pid_alive(int(owner.get("pid", -1))):
        return False
    beat = trial.system_attrs.get(HEARTBEAT_ATTR)
    return isinstance(beat, (int, float)) and now - beat <= STALE_AFTER_S


def claim_lock_path(storage: str, study_name: str, log_dir: str | Path) -> Path:
    """The lock file that serialises claims on one study: beside a SQLite file, else under the log dir."""
    db = sqlite_path(storage)
    if db is not None:
        return db.with_name(f"{db.name}.{study_name}.lock")
    return Path(log_dir) / "optuna" / f"{study_name}.lock"


@contextmanager
def heartbeat(study: optuna.Study, running: set[int]) -> Iterator[None]:
    """Refresh the heartbeat of the trials (ids) in ``running`` every ``HEARTBEAT_S`` in a thread."""
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(HEARTBEAT_S):
            for trial_id in list(running):
                try:
                    study._storage.set_trial_system_attr(trial_id, HEARTBEAT_ATTR, time.time())
                except Exception as e:  # finished meanwhile, or the database is busy: try again next time
                    log.debug("Heartbeat of trial %d not recorded: %s", trial_id, e)

    thread = threading.Thread(target=beat, name="genbench-optuna-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)


class _ResumableImpl(OptunaSweeperImpl):
    """The stock sweep, with ``n_trials`` counted over the whole stored study and trials claimed under
    a lock (see the module docstring)."""

    def sweep(self, arguments: list[str]) -> None:
        if isinstance(self.storage, str):
            # under the claim lock: two sweeps creating one fresh database at once would both stamp
            # its schema version, and the second fails on the first's row
            with file_lock(self._lock_path(), what=f"the Optuna study {self.study_name!r}"):
                ensure_rdb_storage(self.storage)
                done = finished_trials(self.storage, self.study_name)
            if done:
                log.info(
                    "Resuming Optuna study %r in %s: %d of %d trials finished, %d to run.",
                    self.study_name,
                    self.storage,
                    done,
                    self.n_trials,
                    max(0, self.n_trials - done),
                )
        if not isinstance(self.storage, str) or self.study_name is None:
            super().sweep(arguments)  # an in-memory study belongs to this process alone
            return
        self._claiming_sweep(arguments)

    def _lock_path(self) -> Path:
        log_dir = OmegaConf.select(self.config, "paths.log_dir", default="outputs") if self.config else "outputs"
        return claim_lock_path(str(self.storage), self.study_name or "no_name", log_dir)

    def _sampler_for(self, number: int) -> Any:
        """The configured sampler re-seeded with ``seed + number`` (the configured one where it has no seed)."""
        cfg = OmegaConf.select(self.config, "hydra.sweeper.sampler") if self.config is not None else None
        if cfg is None or cfg.get("seed") is None or isinstance(self.sampler, functools.partial):
            return self.sampler
        return instantiate(cfg, seed=int(cfg.seed) + number)

    def _claim(self, study: optuna.Study, lock: Path, want: int) -> tuple[list[optuna.Trial], int]:
        """Ask the study for up to ``want`` trials, no more than the free slots; returns them and
        how many slots are finished."""
        with file_lock(lock, what=f"the trial count of Optuna study {self.study_name!r}"):
            now = time.time()
            trials = study.get_trials(deepcopy=False)
            held = sum(holds_slot(t, now) for t in trials)
            finished = sum(t.state in FINISHED_STATES for t in trials)
            claimed = []
            for _ in range(max(0, min(want, self.n_trials - held))):
                study.sampler = self._sampler_for(len(trials) + len(claimed))
                trial = study.ask()
                study._storage.set_trial_system_attr(
                    trial._trial_id, OWNER_ATTR, {"host": socket.gethostname(), "pid": os.getpid()}
                )
                study._storage.set_trial_system_attr(trial._trial_id, HEARTBEAT_ATTR, time.time())
                claimed.append(trial)
        return claimed, finished

    def _claiming_sweep(self, arguments: list[str]) -> None:
        """OptunaSweeperImpl.sweep of hydra-optuna-sweeper 1.3.0 (pinned), step for step, except
        that each batch is claimed (:meth:`_claim`) instead of counted down in this process alone;
        the loop is one block in the middle of that method, so the method is repeated here."""
        assert self.config is not None and self.launcher is not None and self.job_idx is not None

        self._process_searchspace_config()
        params_conf = self._parse_sweeper_params_config()
        params_conf.extend(arguments)
        is_grid_sampler = (
            isinstance(self.sampler, functools.partial) and self.sampler.func == optuna.samplers.GridSampler
        )
        search_space_distributions, fixed_params = create_params_from_overrides(params_conf)
        if self.search_space_distributions:
            search_space_distributions = {**self.search_space_distributions, **search_space_distributions}
        if is_grid_sampler:
            grid = {name: self._to_grid_sampler_choices(d) for name, d in search_space_distributions.items()}
            self.sampler = self.sampler(grid)
            size = 1
            for v in grid.values():
                size *= len(v)
            self.n_trials = min(self.n_trials, size)
            log.info(f"Updating num of trials to {self.n_trials} due to using GridSampler.")
        for name in fixed_params:
            search_space_distributions.pop(name, None)
        directions = self._get_directions()

        study = optuna.create_study(
            study_name=self.study_name,
            storage=self.storage,
            sampler=self.sampler,
            directions=directions,
            load_if_exists=True,
        )
        log.info(f"Study name: {study.study_name}")
        log.info(f"Storage: {self.storage}")
        log.info(f"Sampler: {type(self.sampler).__name__}")
        log.info(f"Directions: {directions}")

        lock = self._lock_path()
        running: set[int] = set()
        waiting = False
        with heartbeat(study, running):
            while True:
                trials, finished = self._claim(study, lock, self.n_jobs)
                if not trials:
                    if finished >= self.n_trials:
                        break
                    if not waiting:  # the last slots are running in other sweeps: their results complete the study
                        log.info(
                            "Optuna study %r: %d of %d trials finished, the rest run in other sweeps; waiting for them.",
                            self.study_name,
                            finished,
                            self.n_trials,
                        )
                        waiting = True
                    time.sleep(WAIT_POLL_S)
                    continue
                waiting = False
                running.update(t._trial_id for t in trials)
                overrides = self._configure_trials(trials, search_space_distributions, fixed_params)
                returns = self.launcher.launch(overrides, initial_job_idx=self.job_idx)
                self.job_idx += len(returns)
                failures = []
                for trial, ret in zip(trials, returns, strict=True):
                    running.discard(trial._trial_id)
                    values: list[float] | None = None
                    try:
                        values = self._values(ret, len(directions))
                        study.tell(trial=trial, state=optuna.trial.TrialState.COMPLETE, values=values)
                    except Exception as e:
                        study.tell(trial=trial, state=optuna.trial.TrialState.FAIL, values=values)
                        log.warning(f"Failed experiment: {e}")
                        failures.append(e)
                if len(failures) / len(returns) > self.max_failure_rate:
                    log.error(
                        f"Failed {failures} times out of {len(returns)} with max_failure_rate={self.max_failure_rate}."
                    )
                    for ret in returns:
                        _ = ret.return_value  # delegate raising to JobReturn, with actual traceback

        if len(directions) < 2:
            best = study.best_trial
            results: dict[str, Any] = {"name": "optuna", "best_params": best.params, "best_value": best.value}
            log.info(f"Best parameters: {best.params}")
            log.info(f"Best value: {best.value}")
        else:
            front = study.best_trials
            results = {"name": "optuna", "solutions": [{"params": t.params, "values": t.values} for t in front]}
            log.info(f"Number of Pareto solutions: {len(front)}")
            for t in front:
                log.info(f"    Values: {t.values}, Params: {t.params}")
        OmegaConf.save(OmegaConf.create(results), f"{self.config.hydra.sweep.dir}/optimization_results.yaml")

    @staticmethod
    def _values(ret: Any, n_directions: int) -> list[float]:
        """The objective value(s) a job returned, as the stock sweeper reads them (ValueError otherwise)."""
        if n_directions == 1:
            try:
                return [float(ret.return_value)]
            except (ValueError, TypeError):
                raise ValueError(f"Return value must be float-castable. Got '{ret.return_value}'.").with_traceback(
                    sys.exc_info()[2]
                ) from None
        try:
            values = [float(v) for v in ret.return_value]
        except (ValueError, TypeError):
            raise ValueError(
                f"Return value must be a list or tuple of float-castable values. Got '{ret.return_value}'."
            ).with_traceback(sys.exc_info()[2]) from None
        if len(values) != n_directions:
            raise ValueError(
                "The number of the values and the number of the objectives are mismatched. "
                f"Expect {n_directions}, but actually {len(values)}."
            )
        return values


class ResumableOptunaSweeper(OptunaSweeper):
    """Hydra's ``OptunaSweeper`` with ``n_trials`` counted over the whole stored study (see module doc)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.sweeper = _ResumableImpl(**kwargs)
