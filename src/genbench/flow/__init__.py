"""Flow matching, in separate pieces as in facebookresearch/flow_matching: the probability path
(:mod:`~genbench.flow.paths`: where a training pair sits at time t and the velocity to regress),
the time distribution training draws t from, and the ODE solvers that sample
(:mod:`~genbench.flow.solvers`: Euler, Heun, adaptive Dormand-Prince), and the likelihood through
the ODE (:mod:`~genbench.flow.likelihood`). Nothing here knows about
Lightning, Hydra or the network; the LightningModule is ``genbench.models.flow_matching``."""

from genbench.flow.paths import CondOTPath, TimeSampler
from genbench.flow.solvers import AdaptiveSolver, EulerSolver, HeunSolver, ODESolver

__all__ = ["AdaptiveSolver", "CondOTPath", "EulerSolver", "HeunSolver", "ODESolver", "TimeSampler"]
