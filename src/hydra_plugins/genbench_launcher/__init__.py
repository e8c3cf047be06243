"""genbench's SLURM launcher where Hydra looks for launchers.

Hydra instantiates a launcher only from a class defined in a module of the ``hydra_plugins``
namespace package (``Plugins._instantiate`` refuses any other ``_target_``), so
``conf/hydra/launcher/slurm.yaml`` names this subclass; the implementation lives in
:mod:`genbench.cluster.launcher`. ``src/hydra_plugins`` has no ``__init__.py``: it joins the
namespace package of the installed Hydra plugins.
"""

from genbench.cluster import launcher as _launcher


class GenbenchSlurmLauncher(_launcher.GenbenchSlurmLauncher):
    """:class:`genbench.cluster.launcher.GenbenchSlurmLauncher`, registered as a Hydra plugin."""


__all__ = ["GenbenchSlurmLauncher"]
