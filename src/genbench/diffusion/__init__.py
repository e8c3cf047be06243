"""Noise schedules and samplers for DDPM/DDIM, independent of any network."""

from genbench.diffusion.samplers import AncestralSampler, DDIMSampler, Sampler
from genbench.diffusion.schedule import NoiseSchedule

__all__ = ["AncestralSampler", "DDIMSampler", "NoiseSchedule", "Sampler"]
