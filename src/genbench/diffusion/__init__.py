"""Noise schedules and samplers for DDPM/DDIM, independent of any network."""

from genbench.diffusion.samplers import AncestralSampler, DDIMSampler, DPMSolverSampler, EDMHeunSampler, Sampler
from genbench.diffusion.schedule import PREDICTIONS, NoiseSchedule, to_x0_eps

__all__ = [
    "PREDICTIONS",
    "AncestralSampler",
    "DDIMSampler",
    "DPMSolverSampler",
    "EDMHeunSampler",
    "NoiseSchedule",
    "Sampler",
    "to_x0_eps",
]
