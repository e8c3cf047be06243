"""Lightning callbacks: sample grids, a guard against non-finite losses, a DDP replica check."""

from genbench.callbacks.budget import TrainingBudget
from genbench.callbacks.ddp_sync import DDPSyncCheck
from genbench.callbacks.finite_guard import FiniteLossGuard
from genbench.callbacks.sample_grid import SampleGrid

__all__ = ["DDPSyncCheck", "FiniteLossGuard", "SampleGrid", "TrainingBudget"]
