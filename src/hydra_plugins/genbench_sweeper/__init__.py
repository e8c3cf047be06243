"""genbench's resumable Optuna sweeper where Hydra looks for sweepers.

Hydra instantiates a sweeper only from a class defined in a module of the ``hydra_plugins``
namespace package (``Plugins._instantiate`` refuses any other ``_target_``), so
``conf/hparams_search/*_optuna.yaml`` name this subclass; the implementation lives in
:mod:`genbench.cluster.optuna_sweeper`.
"""

from genbench.cluster import optuna_sweeper as _optuna_sweeper


class ResumableOptunaSweeper(_optuna_sweeper.ResumableOptunaSweeper):
    """:class:`genbench.cluster.optuna_sweeper.ResumableOptunaSweeper`, registered as a Hydra plugin."""


__all__ = ["ResumableOptunaSweeper"]
