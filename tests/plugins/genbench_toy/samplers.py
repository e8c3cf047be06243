"""A toy sampler from outside genbench: DDIM over quadratically spaced timesteps (the spacing Song
et al. (2021) used for CIFAR-10: denser near t = 0, where the image's details form). It reuses
DDIM's float64 coefficients and step; only the visited timesteps differ."""

from __future__ import annotations

from genbench.diffusion import DDIMSampler


class QuadraticDDIMSampler(DDIMSampler):
    """``steps`` timesteps t_i = round((T - 1) * (i / (steps - 1))^2), visited from T - 1 down to 0."""

    name = "ddim_quad"

    def timesteps(self) -> list[int]:
        T = self._require_schedule().timesteps
        n = max(self.steps - 1, 1)
        visited = {round((T - 1) * (i / n) ** 2) for i in range(self.steps)} | {T - 1}
        return sorted(visited, reverse=True)
