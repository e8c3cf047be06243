"""genbench's SLURM launcher where Hydra looks for launchers.

Hydra instantiates a launcher only from a class defined in a module of the ``hydra_plugins``
namespace package (``Plugins._instantiate`` refuses any other ``_target_``), so
``conf/hydra/launcher/slurm.yaml`` names this subclass; the implementation lives in
:mod:`genbench.cluster.launcher`. ``src/hydra_plugins`` has no ``__init__.py``: it joins the
namespace package of the installed Hydra plugins.

Hydra imports every module of that namespace at the start of every Hydra app, so this one must
import without the ``slurm`` extra (submitit, hydra-submitit-launcher): then it defines a stand-in
of the same name, and ``hydra/launcher=slurm`` stops with one line naming the extra.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from genbench.extras import has_extra

if has_extra("slurm"):
    from genbench.cluster import launcher as _launcher

    class GenbenchSlurmLauncher(_launcher.GenbenchSlurmLauncher):
        """:class:`genbench.cluster.launcher.GenbenchSlurmLauncher`, registered as a Hydra plugin."""

else:
    from hydra.core.utils import JobReturn
    from hydra.plugins.launcher import Launcher

    from genbench.errors import user_errors
    from genbench.extras import missing_extra, require_extra

    class GenbenchSlurmLauncher(Launcher):  # type: ignore[no-redef]
        """Stand-in while the ``slurm`` extra is missing: building it ends the run with one line.
        (``genbench.cluster.LauncherPreflight`` normally says so first, before any launcher is built.)"""

        def __init__(self, **params: Any) -> None:
            with user_errors():
                require_extra("slurm", "hydra/launcher=slurm")  # raises, naming the module that is missing
                raise missing_extra("slurm", "hydra/launcher=slurm")

        def setup(self, **kwargs: Any) -> None:  # noqa: D102 - never reached
            raise NotImplementedError

        def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:  # noqa: D102
            raise NotImplementedError


__all__ = ["GenbenchSlurmLauncher"]
