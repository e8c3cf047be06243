"""Running genbench on a cluster, so that ``models/`` and ``nets/`` never learn about a scheduler.

* :mod:`~genbench.cluster.resources`: the training config turned into a SLURM request (resolvers
  of ``conf/hydra/launcher/*.yaml``);
* :mod:`~genbench.cluster.preflight`: checks of that request before anything is submitted;
* :mod:`~genbench.cluster.launcher`: the SLURM launcher, which reports jobs that ended without a
  result instead of waiting for them forever;
* :mod:`~genbench.cluster.optuna_sweeper`: the Optuna sweeper of ``hparams_search``, whose study
  is stored on disk and counted as a whole, so a killed search resumes;
* :mod:`~genbench.cluster.environment`: what a run does differently inside a SLURM job (the
  requeue decision, Lightning's SLURM environment without its own auto-requeue, the restart count).

The save-and-requeue mechanism itself is a Lightning callback, :class:`genbench.callbacks.ResumeCheckpoint`
(and :func:`genbench.callbacks.resume.cluster_callbacks` adds it inside a SLURM job); ``callbacks/``
imports ``cluster/``, never the other way round.
"""

from __future__ import annotations

from typing import Any

from genbench.cluster.environment import cluster_plugins, in_slurm_job, slurm_restart_count
from genbench.cluster.preflight import LauncherPreflight, check_launcher, check_partition

#: names of :mod:`~genbench.cluster.launcher`, imported on first use: that module subclasses
#: hydra-submitit-launcher's launcher, which only the ``slurm`` extra installs (the rest of this
#: package, which every training run imports, needs no extra).
_LAUNCHER_NAMES = ("GenbenchSlurmLauncher", "SlurmJobsLost")


def __getattr__(name: str) -> Any:
    if name in _LAUNCHER_NAMES:
        from genbench.cluster import launcher

        return getattr(launcher, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "GenbenchSlurmLauncher",
    "LauncherPreflight",
    "SlurmJobsLost",
    "check_launcher",
    "check_partition",
    "cluster_plugins",
    "in_slurm_job",
    "slurm_restart_count",
]
