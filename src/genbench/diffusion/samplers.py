"""Reverse-process samplers. Each is a small object: (eps_model, x_T, generator) -> x_0.

``eps_model(x_t, t)`` is any callable predicting the noise; the sampler owns the maths of the
schedule and nothing of the network. Given the same x_T and the same ``generator`` state, a
sampler is deterministic (DDIM with eta=0 needs no generator at all).
"""

from collections.abc import Callable

import torch
from rich.progress import Progress

from genbench import GenbenchError
from genbench.diffusion.schedule import NoiseSchedule, _extract

EpsModel = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _randn_like(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Noise drawn on the generator's device (so a CPU generator gives the same noise whatever
    device the model is on), then moved to x's device."""
    device = generator.device if generator is not None else x.device
    return torch.randn(x.shape, generator=generator, device=device, dtype=x.dtype).to(x.device)


class Sampler:
    """Base class: subclasses define ``timesteps`` (the visited t's, descending) and ``step``."""

    name = "sampler"
    clip_x0 = True

    def __init__(self, schedule: NoiseSchedule | None = None) -> None:
        self.schedule = schedule

    def bind(self, schedule: NoiseSchedule) -> "Sampler":
        self.schedule = schedule
        return self

    @property
    def num_steps(self) -> int:
        return len(self.timesteps())

    def timesteps(self) -> list[int]:
        raise NotImplementedError

    def _x0(self, xt: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        x0 = self.schedule.predict_x0(xt, t, eps)
        return x0.clamp(-1, 1) if self.clip_x0 else x0

    @torch.no_grad()
    def __call__(
        self,
        eps_model: EpsModel,
        x_T: torch.Tensor,
        generator: torch.Generator | None = None,
        progress: bool = False,
    ) -> torch.Tensor:
        if self.schedule is None:
            raise GenbenchError("Sampler has no noise schedule: call sampler.bind(schedule) first.")
        ts = self.timesteps()
        x = x_T
        with Progress(transient=True, disable=not progress) as bar:
            task = bar.add_task(f"{self.name} sampling", total=len(ts))
            for i, t in enumerate(ts):
                t_prev = ts[i + 1] if i + 1 < len(ts) else -1
                tt = torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)
                x = self.step(eps_model(x, tt), x, tt, t_prev, generator)
                bar.advance(task)
        return x.clamp(-1, 1)

    def step(
        self, eps: torch.Tensor, x: torch.Tensor, t: torch.Tensor, t_prev: int, generator: torch.Generator | None
    ) -> torch.Tensor:
        raise NotImplementedError


class AncestralSampler(Sampler):
    """DDPM's ancestral sampling: T steps of p(x_{t-1}|x_t) = N(mu_theta, sigma_t^2 I).

    ``variance="beta_tilde"`` uses the posterior variance (the lower bound of Ho et al.),
    ``"beta"`` the upper bound sigma_t^2 = beta_t.
    """

    name = "ancestral"

    def __init__(self, schedule: NoiseSchedule | None = None, variance: str = "beta_tilde") -> None:
        super().__init__(schedule)
        if variance not in ("beta_tilde", "beta"):
            raise GenbenchError(f"Unknown ancestral variance '{variance}': use beta_tilde or beta.")
        self.variance = variance

    def timesteps(self) -> list[int]:
        return list(range(self.schedule.timesteps - 1, -1, -1))

    def step(self, eps, x, t, t_prev, generator):  # noqa: D102
        s = self.schedule
        mean = s.posterior_mean(self._x0(x, t, eps), x, t)
        if t_prev < 0:
            return mean
        log_var = s.posterior_log_var_clipped if self.variance == "beta_tilde" else torch.log(s.betas)
        return mean + torch.exp(0.5 * _extract(log_var, t, x.ndim)) * _randn_like(x, generator)


class DDIMSampler(Sampler):
    """DDIM (Song et al., 2021) over ``steps`` evenly spaced timesteps; ``eta=0`` is deterministic,
    ``eta=1`` matches DDPM's posterior noise level on the same sub-sequence."""

    name = "ddim"

    def __init__(self, schedule: NoiseSchedule | None = None, steps: int = 50, eta: float = 0.0) -> None:
        super().__init__(schedule)
        if steps < 1:
            raise GenbenchError(f"DDIM needs at least one step, got sampler.steps={steps}.")
        self.steps = steps
        self.eta = eta

    def timesteps(self) -> list[int]:
        T = self.schedule.timesteps
        if self.steps > T:
            raise GenbenchError(f"DDIM steps ({self.steps}) cannot exceed the schedule's T={T}.")
        # Evenly spaced from T-1 down to 0 (both ends included; one step starts at T-1).
        return sorted({int(round(v)) for v in torch.linspace(T - 1, 0, self.steps).tolist()}, reverse=True)

    def step(self, eps, x, t, t_prev, generator):  # noqa: D102
        s = self.schedule
        x0 = self._x0(x, t, eps)
        # Recompute eps from the clipped x0 so the direction stays consistent with it.
        eps = (x - _extract(s.sqrt_alpha_bar, t, x.ndim) * x0) / _extract(s.sqrt_one_minus_alpha_bar, t, x.ndim)
        ab_t = _extract(s.alpha_bar, t, x.ndim)
        if t_prev < 0:
            return x0
        ab_prev = _extract(s.alpha_bar, torch.full_like(t, t_prev), x.ndim)
        sigma = self.eta * torch.sqrt((1 - ab_prev) / (1 - ab_t) * (1 - ab_t / ab_prev))
        x_prev = ab_prev.sqrt() * x0 + torch.sqrt((1 - ab_prev - sigma**2).clamp(min=0)) * eps
        if self.eta > 0:
            x_prev = x_prev + sigma * _randn_like(x, generator)
        return x_prev
