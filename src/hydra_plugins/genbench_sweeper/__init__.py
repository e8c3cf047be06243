"""genbench's resumable Optuna sweeper where Hydra looks for sweepers.

Hydra instantiates a sweeper only from a class defined in a module of the ``hydra_plugins``
namespace package (``Plugins._instantiate`` refuses any other ``_target_``), so
``conf/hparams_search/*_optuna.yaml`` name this subclass; the implementation lives in
:mod:`genbench.cluster.optuna_sweeper`.

Hydra imports every module of that namespace at the start of every Hydra app, so this one must
import without the ``optuna`` extra (optuna, hydra-optuna-sweeper). Then it defines a stand-in of
the same name, and registers stand-ins for the configs hydra-optuna-sweeper would register
(``hydra/sweeper: optuna`` and its samplers), so that ``hparams_search=*_optuna`` composes and
stops with one line naming the extra instead of "Could not find 'hydra/sweeper/optuna'".
"""

from __future__ import annotations

from typing import Any

from genbench.extras import has_extra

if has_extra("optuna"):
    from genbench.cluster import optuna_sweeper as _optuna_sweeper

    class ResumableOptunaSweeper(_optuna_sweeper.ResumableOptunaSweeper):
        """:class:`genbench.cluster.optuna_sweeper.ResumableOptunaSweeper`, registered as a Hydra plugin."""

else:
    from hydra.core.config_store import ConfigStore
    from hydra.plugins.sweeper import Sweeper

    from genbench.errors import user_errors
    from genbench.extras import missing_extra, require_extra

    class ResumableOptunaSweeper(Sweeper):  # type: ignore[no-redef]
        """Stand-in while the ``optuna`` extra is missing: building it ends the run with one line."""

        def __init__(self, **params: Any) -> None:
            with user_errors():
                require_extra(
                    "optuna", "hparams_search (the Optuna sweeper)"
                )  # raises, naming the module that is missing
                raise missing_extra("optuna", "hparams_search (the Optuna sweeper)")

        def setup(self, **kwargs: Any) -> None:  # noqa: D102 - never reached
            raise NotImplementedError

        def sweep(self, arguments: list[str]) -> Any:  # noqa: D102
            raise NotImplementedError

    # the group entries hydra-optuna-sweeper registers (hydra_plugins.hydra_optuna_sweeper.config), as
    # plain nodes that accept any keys: the search configs override them and set this sweeper
    _store = ConfigStore.instance()
    _store.store(
        group="hydra/sweeper",
        name="optuna",
        node={"defaults": [{"sampler": "tpe"}], "_target_": f"{__name__}.ResumableOptunaSweeper"},
        provider="genbench",
    )
    for _sampler in ("tpe", "random", "cmaes", "nsgaii", "motpe", "grid"):
        _store.store(group="hydra/sweeper/sampler", name=_sampler, node={}, provider="genbench")


__all__ = ["ResumableOptunaSweeper"]
