"""Noise schedules and samplers for DDPM/DDIM, independent of any network."""

from genbench.diffusion.guidance import classifier_free_guidance
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
    "classifier_free_guidance",
    "to_x0_eps",
]
