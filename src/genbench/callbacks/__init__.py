"""Lightning callbacks: sample grids and a guard against non-finite losses."""

from genbench.callbacks.finite_guard import FiniteLossGuard
from genbench.callbacks.sample_grid import SampleGrid

__all__ = ["FiniteLossGuard", "SampleGrid"]
