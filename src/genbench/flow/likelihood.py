"""Log-likelihood of data under a flow, through its ODE (the instantaneous change of variables,
Chen et al., 2018; FFJORD, Grathwohl et al., 2019).

A flow dx/dt = v(x, t) carries the noise density p_0 = N(0, I) at t = 0 to the model's density p_1
at t = 1, and along a trajectory d log p_t(x_t) / dt = -div v(x_t, t). So for data x1, integrating
the ODE backwards to its noise x0 while accumulating the divergence gives

    log p_1(x1) = log N(x0; 0, I) - \\int_0^1 div v(x_t, t) dt.

The integral uses Heun's method (second order) with ``steps`` equal steps; the divergence is exact
(one backward pass per dimension: affordable for tiny images and tests) or Hutchinson's estimate
eps^T (dv/dx) eps with one Rademacher probe per image, held fixed along the trajectory (unbiased;
exact when the Jacobian is diagonal). For 8-bit images the density is turned into a bound on the
discrete likelihood by uniform dequantisation (:func:`dequantised_nll`), on the same bits/dim scale
as the other families' bounds.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from genbench.distributions import HALF_BIN
from genbench.errors import GenbenchError

VelocityFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def divergence(
    velocity_fn: VelocityFn, x: torch.Tensor, t: torch.Tensor, probe: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(v(x, t), div_x v(x, t) per image): Hutchinson's estimate with ``probe`` (same shape as x),
    or the exact trace of the Jacobian when ``probe`` is None."""
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        v = velocity_fn(x, t)
        if probe is not None:
            (vjp,) = torch.autograd.grad(v, x, probe)
            return v.detach(), (vjp * probe).flatten(1).sum(1)
        flat_v = v.flatten(1)
        div = torch.zeros(x.shape[0], dtype=v.dtype, device=v.device)
        for d in range(flat_v.shape[1]):
            (grad,) = torch.autograd.grad(flat_v[:, d].sum(), x, retain_graph=d + 1 < flat_v.shape[1])
            div = div + grad.flatten(1)[:, d]
        return v.detach(), div


def ode_log_likelihood(
    velocity_fn: VelocityFn,
    x1: torch.Tensor,
    steps: int = 20,
    exact: bool = False,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """log p_1(x1) per image (nats, float64) under the flow of ``velocity_fn``, by Heun's method with
    ``steps`` steps from t = 1 back to t = 0 (2 x ``steps`` velocity and divergence evaluations)."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise GenbenchError(f"The ODE likelihood needs steps >= 1, got {steps!r}.")
    probe = None
    if not exact:
        gdev = generator.device if generator is not None else torch.device("cpu")
        signs = torch.randint(0, 2, x1.shape, generator=generator, device=gdev)
        probe = (2 * signs - 1).to(device=x1.device, dtype=x1.dtype)
    n = x1.shape[0]
    x = x1
    change = torch.zeros(n, dtype=torch.float64, device=x1.device)  # \int_1^t div dt, t going down
    dt = -1.0 / steps
    for i in range(steps):
        t = 1.0 + i * dt
        tt = torch.full((n,), t, device=x.device, dtype=x.dtype)
        v1, div1 = divergence(velocity_fn, x, tt, probe)
        x_euler = x + dt * v1
        v2, div2 = divergence(velocity_fn, x_euler, tt + dt, probe)
        x = x + dt * 0.5 * (v1 + v2)
        change = change + dt * 0.5 * (div1 + div2).double()
    dims = x[0].numel()
    log_p0 = -0.5 * x.double().flatten(1).pow(2).sum(1) - 0.5 * dims * math.log(2 * math.pi)
    # change = \int_1^0 div dt = -\int_0^1 div dt
    return log_p0 + change


def dequantised_nll(
    log_density: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """An upper bound on -log P(x) in nats per image for 8-bit images ``x`` in [-1, 1] (the level
    centres): x + u with u uniform over the level's bin of width 2/255 (the same bins as the
    discretised likelihoods), so -log P(x) <= -log p(x + u) - D log(2/255) in expectation over u
    (Theis et al., 2016; Ho et al., 2019)."""
    gdev = generator.device if generator is not None else torch.device("cpu")
    u = torch.rand(x.shape, generator=generator, device=gdev).to(device=x.device, dtype=x.dtype)
    dims = x[0].numel()
    return -log_density(x + (2 * u - 1) * HALF_BIN) - dims * math.log(2 * HALF_BIN)


def ode_nll_bound(
    velocity_fn: VelocityFn, x: torch.Tensor, steps: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """-log P(x) bound in nats per 8-bit image through the ODE of ``velocity_fn`` (Heun, ``steps``
    steps, Hutchinson divergence) with uniform dequantisation: the ODE bound of every family that
    has one (flow matching's, the DDPM's probability-flow ODE)."""

    def log_density(y: torch.Tensor) -> torch.Tensor:
        return ode_log_likelihood(velocity_fn, y, steps=steps, generator=generator)

    return dequantised_nll(log_density, x, generator)


__all__ = ["dequantised_nll", "divergence", "ode_log_likelihood", "ode_nll_bound"]
