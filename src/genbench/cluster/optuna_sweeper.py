"""An Optuna sweeper whose study outlives the process: a killed search resumes where it stopped.

Hydra's Optuna sweeper keeps the study wherever ``hydra.sweeper.storage`` says; genbench's
``hparams_search`` configs point it at a SQLite file under the outputs, so every finished trial is
on disk the moment it is told to the study. The stock sweeper, though, runs ``n_trials`` *new*
trials on every invocation, so re-running a killed 20-trial search would run 20 more. This sweeper
reads ``n_trials`` as the size of the whole study instead: it counts the trials already finished
in the storage (complete, pruned or failed) and runs only the rest, so re-running the same
command finishes the search, and re-running a finished one just reports its best trial again.
Raise ``hydra.sweeper.n_trials`` to extend a finished study.

A trial that was running when the process was killed stays ``RUNNING`` in the storage: it is not
counted as finished (so its slot is run again), and it is not marked failed here either, because
with a shared server database it may be another worker's trial that is still alive.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import optuna
from hydra_plugins.hydra_optuna_sweeper._impl import OptunaSweeperImpl
from hydra_plugins.hydra_optuna_sweeper.optuna_sweeper import OptunaSweeper

log = logging.getLogger("genbench")

#: trial states that used up one of the study's ``n_trials`` (RUNNING and WAITING did not finish)
FINISHED_STATES = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.FAIL)


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
    optuna.storages.RDBStorage(storage, engine_kwargs={"isolation_level": "AUTOCOMMIT"})


def finished_trials(storage: str, study_name: str | None) -> int:
    """How many trials of ``study_name`` in ``storage`` have finished (0 when there is no such study)."""
    if study_name is None:
        return 0
    try:
        study = optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:  # optuna 2.x: no study of that name in this storage yet
        return 0
    return len(study.get_trials(deepcopy=False, states=FINISHED_STATES))


class _ResumableImpl(OptunaSweeperImpl):
    """The stock sweep, with ``n_trials`` reduced by the trials the stored study already finished."""

    def sweep(self, arguments: list[str]) -> None:
        if isinstance(self.storage, str):
            db = sqlite_path(self.storage)
            if db is not None:  # SQLite does not create the folder of its file
                db.parent.mkdir(parents=True, exist_ok=True)
            init_rdb_storage(self.storage)
            done = finished_trials(self.storage, self.study_name)
            if done:
                remaining = max(0, self.n_trials - done)
                log.info(
                    "Resuming Optuna study %r in %s: %d of %d trials finished, %d to run.",
                    self.study_name,
                    self.storage,
                    done,
                    self.n_trials,
                    remaining,
                )
                self.n_trials = remaining
        super().sweep(arguments)


class ResumableOptunaSweeper(OptunaSweeper):
    """Hydra's ``OptunaSweeper`` with ``n_trials`` counted over the whole stored study (see module doc)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.sweeper = _ResumableImpl(**kwargs)
