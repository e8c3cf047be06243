"""Reverse-process samplers. Each is a small object: (eps_model, x_T, generator) -> x_0.

``eps_model(x_t, t)`` is any callable predicting the noise; the sampler owns the maths of the
schedule and nothing of the network. Given the same x_T and the same ``generator`` state, a
sampler is deterministic (DDIM with eta=0 needs no generator at all).
"""

from collections.abc import Callable
from typing import Any

import torch
from rich.progress import Progress

from genbench import GenbenchError
from genbench.diffusion.schedule import NoiseSchedule, _extract
from genbench.reproducibility import randn
from genbench.stopping import check_stop

EpsModel = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class Sampler:
    """Base class: subclasses define ``timesteps`` (the visited t's, descending) and ``step``.

    ``__call__`` first calls ``prepare`` (once per call: subclasses precompute what depends only
    on the schedule there), then ``step(i, ...)`` for each visited timestep.
    """

    name = "sampler"
    clip_x0 = True

    def __init__(self, schedule: NoiseSchedule | None = None) -> None:
        self.schedule = schedule

    def bind(self, schedule: NoiseSchedule) -> "Sampler":
        self.schedule = schedule
        return self

    def _require_schedule(self) -> NoiseSchedule:
        if self.schedule is None:
            raise GenbenchError(f"The {self.name} sampler has no noise schedule: call sampler.bind(schedule) first.")
        return self.schedule

    @property
    def num_steps(self) -> int:
        """Network evaluations per sample (needs a bound schedule unless a subclass knows it)."""
        self._require_schedule()
        return len(self.timesteps())

    @property
    def label(self) -> str:
        """A short name for tables and metric records, e.g. ``ddim-50`` or ``ancestral-1000``: the
        number of steps is what sets both the cost and the quality, so it is part of the name."""
        return f"{self.name}-{self.num_steps}"

    def describe(self) -> dict[str, Any]:
        """What drew the samples, recorded with the metrics; subclasses add their own settings."""
        return {"name": self.name, "steps": self.num_steps}

    def timesteps(self) -> list[int]:
        raise NotImplementedError

    def prepare(self, timesteps: list[int], dtype: torch.dtype, device: torch.device) -> None:
        """Precompute per-step quantities for ``timesteps`` in ``dtype`` on ``device`` (default: none)."""

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
        self._require_schedule()
        ts = self.timesteps()
        self.prepare(ts, x_T.dtype, x_T.device)
        x = x_T
        with Progress(transient=True, disable=not progress) as bar:
            task = bar.add_task(f"{self.name} sampling", total=len(ts))
            for i, t in enumerate(ts):
                check_stop()  # a SIGTERM takes effect within one network evaluation
                tt = torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)
                x = self.step(i, eps_model(x, tt), x, tt, generator)
                bar.advance(task)
        return x.clamp(-1, 1)

    def step(
        self, i: int, eps: torch.Tensor, x: torch.Tensor, t: torch.Tensor, generator: torch.Generator | None
    ) -> torch.Tensor:
        """Step ``i`` of ``timesteps()``: from x_t (t = timesteps()[i]) to the next visited
        timestep, or to x_0 after the last one."""
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

    def describe(self) -> dict[str, Any]:  # noqa: D102
        return {**super().describe(), "variance": self.variance}

    def timesteps(self) -> list[int]:
        return list(range(self._require_schedule().timesteps - 1, -1, -1))

    def step(self, i, eps, x, t, generator):  # noqa: D102
        s = self.schedule
        mean = s.posterior_mean(self._x0(x, t, eps), x, t)
        if i == s.timesteps - 1:  # t = 0: the mean is the sample
            return mean
        log_var = s.posterior_log_var_clipped if self.variance == "beta_tilde" else torch.log(s.betas)
        noise = randn(x.shape, generator, device=x.device, dtype=x.dtype)
        return mean + torch.exp(0.5 * _extract(log_var, t, x.ndim)) * noise


class DDIMSampler(Sampler):
    """DDIM (Song et al., 2021) over ``steps`` evenly spaced timesteps; ``eta=0`` is deterministic,
    ``eta=1`` matches DDPM's posterior noise level on the same sub-sequence.

    The per-step coefficients are computed once per call in float64 (:meth:`coefficients`) and
    only then cast: at run time in float32, 1 - abar_prev - sigma^2 cancels (the first step of a
    10-step cosine schedule with eta=1 loses its direction term, ~2.8e-4, entirely).
    """

    name = "ddim"

    def __init__(self, schedule: NoiseSchedule | None = None, steps: int = 50, eta: float = 0.0) -> None:
        super().__init__(schedule)
        if steps < 1:
            raise GenbenchError(f"DDIM needs at least one step, got sampler.steps={steps}.")
        self.steps = steps
        self.eta = eta
        self._coefs: dict[str, torch.Tensor] = {}

    @property
    def num_steps(self) -> int:
        """``steps``, known without a schedule (``timesteps()`` visits exactly that many)."""
        return self.steps

    def describe(self) -> dict[str, Any]:  # noqa: D102
        return {**super().describe(), "eta": self.eta}

    def timesteps(self) -> list[int]:
        T = self._require_schedule().timesteps
        if self.steps > T:
            raise GenbenchError(f"DDIM steps ({self.steps}) cannot exceed the schedule's T={T}.")
        # Evenly spaced from T-1 down to 0 (both ends included; one step starts at T-1).
        return sorted({int(round(v)) for v in torch.linspace(T - 1, 0, self.steps).tolist()}, reverse=True)

    def coefficients(self, timesteps: list[int] | None = None) -> dict[str, torch.Tensor]:
        """float64 per-step coefficients, entry i for step i of ``timesteps`` (default ``timesteps()``):

        ``sqrt_ab``/``sqrt_one_minus_ab`` (x_0 and eps from x_t), ``sqrt_ab_prev`` (x_0's weight in
        x_prev), ``dir`` = sqrt(1 - abar_prev - sigma^2) (eps's weight) and ``sigma`` (the fresh
        noise's). After the last step x_prev is x_0 (abar_prev = 1, dir = sigma = 0).

        dir^2 is expanded as (1 - abar_prev) / (1 - abar_t) * [(1 - eta^2)(1 - abar_t)
        + eta^2 abar_t (1 - abar_prev) / abar_prev]: for 0 <= eta <= 1 a sum of non-negative terms,
        so nothing cancels even when abar_t ~ 1e-9.
        """
        schedule = self._require_schedule()
        ab_all = schedule.alpha_bar_float64
        ts = torch.tensor(self.timesteps() if timesteps is None else timesteps)
        ab = ab_all[ts]
        ab_prev = torch.cat([ab_all[ts[1:]], torch.ones(1, dtype=torch.float64)])
        eta2 = float(self.eta) ** 2
        sigma2 = eta2 * (1 - ab_prev) * (ab_prev - ab) / ((1 - ab) * ab_prev)
        dir2 = (1 - ab_prev) / (1 - ab) * ((1 - eta2) * (1 - ab) + eta2 * ab * (1 - ab_prev) / ab_prev)
        return {
            "sqrt_ab": ab.sqrt(),
            "sqrt_one_minus_ab": (1 - ab).sqrt(),
            "sqrt_ab_prev": ab_prev.sqrt(),
            "dir": dir2.clamp(min=0).sqrt(),
            "sigma": sigma2.clamp(min=0).sqrt(),
        }

    def prepare(self, timesteps: list[int], dtype: torch.dtype, device: torch.device) -> None:  # noqa: D102
        self._coefs = {k: v.to(device=device, dtype=dtype) for k, v in self.coefficients(timesteps).items()}

    def step(self, i, eps, x, t, generator):  # noqa: D102
        c = {k: v[i] for k, v in self._coefs.items()}
        x0 = (x - c["sqrt_one_minus_ab"] * eps) / c["sqrt_ab"]
        if self.clip_x0:
            x0 = x0.clamp(-1, 1)
        if i == len(self._coefs["dir"]) - 1:
            return x0
        # Recompute eps from the clipped x0 so the direction stays consistent with it.
        eps = (x - c["sqrt_ab"] * x0) / c["sqrt_one_minus_ab"]
        x_prev = c["sqrt_ab_prev"] * x0 + c["dir"] * eps
        if self.eta > 0:
            x_prev = x_prev + c["sigma"] * randn(x.shape, generator, device=x.device, dtype=x.dtype)
        return x_prev
