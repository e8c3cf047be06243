"""The forward (noising) process of DDPM: betas, cumulative alphas, q(x_t|x_0) and the posterior.

Everything is a buffer of a small ``nn.Module`` so it moves with ``.to(device)`` and is saved in
checkpoints (a resumed run cannot silently switch schedules). Computed in float64, stored float32.
"""

import math

import torch
from torch import nn

from genbench import GenbenchError


def linear_betas(timesteps: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """Ho et al. (2020): betas linear in t, scaled here so that any T keeps the same endpoints."""
    return torch.linspace(beta_start, beta_end, timesteps, dtype=torch.float64)


def cosine_betas(timesteps: int, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """Nichol & Dhariwal (2021): alpha_bar(t) = cos^2(((t/T + s)/(1 + s)) * pi/2), betas clipped."""
    steps = torch.arange(timesteps + 1, dtype=torch.float64) / timesteps
    f = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
    alpha_bar = f / f[0]
    return (1 - alpha_bar[1:] / alpha_bar[:-1]).clamp(max=max_beta)


def _extract(values: torch.Tensor, t: torch.Tensor, ndim: int) -> torch.Tensor:
    """values[t] reshaped to broadcast over a batch of images."""
    return values.gather(0, t).view(-1, *([1] * (ndim - 1)))


class NoiseSchedule(nn.Module):
    def __init__(
        self,
        timesteps: int = 1000,
        kind: str = "linear",
        beta_start: float = 1e-4,
        beta_end: float = 0.02,
    ) -> None:
        super().__init__()
        if kind == "linear":
            betas = linear_betas(timesteps, beta_start, beta_end)
        elif kind == "cosine":
            betas = cosine_betas(timesteps)
        else:
            raise GenbenchError(f"Unknown noise schedule '{kind}': use model.schedule.kind=linear or cosine.")
        self.timesteps = timesteps
        self.kind = kind
        alphas = 1.0 - betas
        alpha_bar = torch.cumprod(alphas, 0)
        alpha_bar_prev = torch.cat([torch.ones(1, dtype=torch.float64), alpha_bar[:-1]])
        # beta-tilde: variance of q(x_{t-1} | x_t, x_0); zero at t=0.
        posterior_var = betas * (1 - alpha_bar_prev) / (1 - alpha_bar)
        buffers = {
            "betas": betas,
            "alpha_bar": alpha_bar,
            "alpha_bar_prev": alpha_bar_prev,
            "sqrt_alpha_bar": alpha_bar.sqrt(),
            "sqrt_one_minus_alpha_bar": (1 - alpha_bar).sqrt(),
            "posterior_var": posterior_var,
            # log of beta-tilde with the t=0 entry replaced (it is 0), as in the reference code.
            "posterior_log_var_clipped": torch.log(torch.cat([posterior_var[1:2], posterior_var[1:]])),
            "posterior_coef_x0": betas * alpha_bar_prev.sqrt() / (1 - alpha_bar),
            "posterior_coef_xt": (1 - alpha_bar_prev) * alphas.sqrt() / (1 - alpha_bar),
        }
        for name, value in buffers.items():
            self.register_buffer(name, value.float(), persistent=False)

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Sample x_t ~ q(x_t | x_0) = N(sqrt(alpha_bar_t) x_0, (1 - alpha_bar_t) I) in closed form."""
        return (
            _extract(self.sqrt_alpha_bar, t, x0.ndim) * x0 + _extract(self.sqrt_one_minus_alpha_bar, t, x0.ndim) * noise
        )

    def predict_x0(self, xt: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """Invert q_sample given the predicted noise."""
        return (xt - _extract(self.sqrt_one_minus_alpha_bar, t, xt.ndim) * eps) / _extract(
            self.sqrt_alpha_bar, t, xt.ndim
        )

    def posterior_mean(self, x0: torch.Tensor, xt: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Mean of q(x_{t-1} | x_t, x_0)."""
        return _extract(self.posterior_coef_x0, t, xt.ndim) * x0 + _extract(self.posterior_coef_xt, t, xt.ndim) * xt

    def sample_timesteps(self, n: int, device: torch.device) -> torch.Tensor:
        return torch.randint(0, self.timesteps, (n,), device=device)
