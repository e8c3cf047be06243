"""ODE solvers that sample a flow: integrate dx/dt = v(x, t) from noise at t = 0 to data at t = 1.

They answer the same sampler protocol as the diffusion samplers (``genbench.diffusion.samplers``):
``num_steps``, ``nfe_per_step`` and ``nfe`` (network evaluations: the cost), ``deterministic``,
``label``, ``describe()``, ``guidance`` (the classifier-free guidance scale a conditional model
samples with: :mod:`genbench.diffusion.guidance`), and ``step(...)`` returning ``(x_next, x1_pred)``,
the next state and the data endpoint the velocity points at (as diffusers' schedulers return the
predicted x0).
Every solver here is deterministic: the sample is a function of the starting noise alone, so a
flow model's latent interpolations decode with any of them.

The adaptive solver is the Dormand-Prince 5(4) pair with the usual step-size control (Hairer,
Norsett & Wanner, II.4): its NFE is what the tolerance costs on this model, known after a call.
genbench implements these few lines itself rather than adding torchdiffeq (the same method as its
``dopri5``) as a dependency: the step count and NFE must be observable per call, and the
fixed-step solvers must share one protocol with the diffusion samplers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from rich.progress import Progress

from genbench.diffusion.guidance import check_guidance, guidance_label, guidance_record
from genbench.errors import GenbenchError
from genbench.stopping import check_stop

#: ``velocity_fn(x, t)``: the velocity at states ``x`` and times ``t`` (one per image)
VelocityFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class ODESolver:
    """Base class of fixed-step solvers: ``steps`` equal steps from t = 0 to t = 1."""

    name = "ode"
    nfe_per_step = 1
    deterministic = True
    #: what the network must predict for this solver (checked by the model that samples)
    prediction = "velocity"

    def __init__(self, steps: int = 10, guidance: float = 0.0) -> None:
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise GenbenchError(f"An ODE solver needs sampler.steps >= 1, got {steps!r}.")
        self.steps = steps
        #: the classifier-free guidance scale w of a conditional model (``sampler.guidance``; 0: none)
        self.guidance = check_guidance(guidance)

    @property
    def num_steps(self) -> int:
        return self.steps

    @property
    def nfe(self) -> int:
        """Network evaluations per sample, as sequential calls (a guided call evaluates 2n at once)."""
        return self.num_steps * self.nfe_per_step

    @property
    def label(self) -> str:
        """A short name for tables: the solver and its NFE (what sets cost and quality), and the
        guidance scale when there is one (``euler-20-w2``)."""
        return guidance_label(f"{self.name}-{self.nfe}", self.guidance)

    def describe(self) -> dict[str, Any]:
        """What drew the samples, recorded with the metrics."""
        return {"name": self.name, "steps": self.num_steps, "nfe": self.nfe, **guidance_record(self.guidance)}

    def times(self, device: torch.device | None = None) -> torch.Tensor:
        """The step boundaries 0 = t_0 < ... < t_steps = 1 (float64)."""
        return torch.linspace(0.0, 1.0, self.steps + 1, dtype=torch.float64, device=device)

    def step(self, velocity_fn: VelocityFn, x: torch.Tensor, t: float, dt: float) -> tuple[torch.Tensor, torch.Tensor]:
        """One step from (x, t) to t + dt: ``(x_next, x1_pred)``."""
        raise NotImplementedError

    @staticmethod
    def _call(velocity_fn: VelocityFn, x: torch.Tensor, t: float) -> torch.Tensor:
        return velocity_fn(x, torch.full((x.shape[0],), t, device=x.device, dtype=x.dtype))

    @torch.no_grad()
    def __call__(
        self,
        velocity_fn: VelocityFn,
        x0: torch.Tensor,
        generator: torch.Generator | None = None,
        progress: bool = False,
    ) -> torch.Tensor:
        """The state at t = 1 from noise ``x0`` at t = 0 (``generator`` unused: deterministic)."""
        ts = self.times().tolist()
        x = x0
        with Progress(transient=True, disable=not progress) as bar:
            task = bar.add_task(f"{self.name} sampling", total=len(ts) - 1)
            for t, t_next in zip(ts[:-1], ts[1:], strict=True):
                check_stop()  # a SIGTERM takes effect within one step
                x, _ = self.step(velocity_fn, x, t, t_next - t)
                bar.advance(task)
        return x


class EulerSolver(ODESolver):
    """x_{t+dt} = x_t + dt v(x_t, t): first order, one evaluation per step."""

    name = "euler"

    def step(self, velocity_fn, x, t, dt):  # noqa: D102
        v = self._call(velocity_fn, x, t)
        return x + dt * v, x + (1 - t) * v


class HeunSolver(ODESolver):
    """Heun's method (explicit trapezoid, second order): an Euler predictor, then the average of the
    velocities at both ends. Two evaluations per step, as in EDM's sampler (Karras et al., 2022),
    which also saves the second one at the last step when its endpoint is the data: here t = 1 is
    reached exactly and the correction is kept, so every step costs 2."""

    name = "heun"
    nfe_per_step = 2

    def step(self, velocity_fn, x, t, dt):  # noqa: D102
        v = self._call(velocity_fn, x, t)
        x_euler = x + dt * v
        v_next = self._call(velocity_fn, x_euler, t + dt)
        return x + dt * 0.5 * (v + v_next), x + (1 - t) * v


# Dormand-Prince 5(4) tableau (FSAL): nodes c, stage weights a, 5th-order b and the error weights
_C = (0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0)
_A = (
    (),
    (1 / 5,),
    (3 / 40, 9 / 40),
    (44 / 45, -56 / 15, 32 / 9),
    (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
    (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
    (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84),
)
_B = (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0.0)
_B_LOW = (5179 / 57600, 0.0, 7571 / 16695, 393 / 640, -92097 / 339200, 187 / 2100, 1 / 40)


class AdaptiveSolver(ODESolver):
    """Dormand-Prince 5(4) with error control: a step is accepted when the scaled RMS error
    ||err / (atol + rtol max(|x|, |x_new|))|| <= 1, and the next step size follows
    h * clip(0.9 err^(-1/5), 0.2, 10). ``nfe``/``num_steps`` are those of the last call (None
    before one): six evaluations per attempted step plus the first (the last stage of an accepted
    step is the next step's first, FSAL). The error is measured over the whole batch, so every
    image takes the same steps and a batch is one tensor throughout."""

    name = "dopri5"

    def __init__(
        self,
        rtol: float = 1e-3,
        atol: float = 1e-3,
        max_steps: int = 200,
        first_step: float = 0.1,
        guidance: float = 0.0,
    ) -> None:
        super().__init__(steps=1, guidance=guidance)
        if not (rtol > 0 and atol > 0):
            raise GenbenchError(f"dopri5 needs rtol > 0 and atol > 0, got rtol={rtol}, atol={atol}.")
        self.rtol, self.atol, self.max_steps, self.first_step = float(rtol), float(atol), int(max_steps), first_step
        self._nfe: int | None = None
        self._steps: int | None = None

    @property
    def num_steps(self) -> int | None:  # type: ignore[override]
        return self._steps

    @property
    def nfe(self) -> int | None:  # type: ignore[override]
        return self._nfe

    @property
    def label(self) -> str:
        return guidance_label(f"{self.name}-tol{self.rtol:g}", self.guidance)

    def describe(self) -> dict[str, Any]:  # noqa: D102
        return {**super().describe(), "rtol": self.rtol, "atol": self.atol}

    @torch.no_grad()
    def __call__(self, velocity_fn, x0, generator=None, progress=False):  # noqa: D102
        x, t, h = x0, 0.0, float(self.first_step)
        k1 = self._call(velocity_fn, x, t)
        nfe, accepted = 1, 0
        while t < 1.0 - 1e-12:
            check_stop()
            if accepted + 1 > self.max_steps:
                raise GenbenchError(
                    f"dopri5 took more than max_steps={self.max_steps} steps (rtol={self.rtol}): loosen the "
                    "tolerance (sampler.rtol) or raise sampler.max_steps."
                )
            h = min(h, 1.0 - t)
            x_new, ks = self._stages(velocity_fn, x, t, h, k1, fsal=True)
            nfe += 6
            err = h * sum((b - bl) * k for b, bl, k in zip(_B, _B_LOW, ks, strict=True) if b != bl)
            scale = self.atol + self.rtol * torch.maximum(x.abs(), x_new.abs())
            ratio = float((err / scale).pow(2).mean().sqrt())
            if ratio <= 1.0:
                x, t, k1, accepted = x_new, t + h, ks[6], accepted + 1
            h = h * min(10.0, max(0.2, 0.9 * (ratio if ratio > 0 else 1e-10) ** -0.2))
        self._nfe, self._steps = nfe, accepted
        return x

    def _stages(
        self, velocity_fn: VelocityFn, x: torch.Tensor, t: float, h: float, k1: torch.Tensor, fsal: bool
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The 5th-order solution of one step of size ``h`` and the stage velocities k1..k6, plus
        k7 at that solution when ``fsal`` (the error estimate needs it, and it is the next k1)."""
        ks = [k1]
        for i in range(1, 7):
            xi = x + h * sum(a * k for a, k in zip(_A[i], ks, strict=False) if a)
            if i < 6 or fsal:
                ks.append(self._call(velocity_fn, xi, t + _C[i] * h))
        return xi, ks  # the last stage's point is the 5th-order solution (its weights are _B)

    def step(self, velocity_fn, x, t, dt):  # noqa: D102
        """One Dormand-Prince step of size ``dt`` without error control (6 evaluations)."""
        k1 = self._call(velocity_fn, x, t)
        x_new, _ = self._stages(velocity_fn, x, t, dt, k1, fsal=False)
        return x_new, x + (1 - t) * k1
