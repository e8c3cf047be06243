"""Reverse-process samplers. Each is a small object: (model_fn, x_T, generator, prediction) -> x_0.

``model_fn(x_t, t)`` is any callable returning the network's raw output, and ``prediction`` says
what that output is ("eps", "x0" or "v", :data:`~genbench.diffusion.schedule.PREDICTIONS`): a
property of the model, which passes it in, so one sampler serves networks trained on any target.
The sampler owns the maths of the schedule and nothing of the network. Given the same x_T and the
same ``generator`` state, a sampler is deterministic (DDIM with eta=0 needs no generator at all).

The protocol generic code may rely on (the callbacks and the API use nothing else):
``bind(schedule)`` (done by the model that samples), ``num_steps``, ``nfe_per_step`` and ``nfe``
(network evaluations: the cost), ``deterministic`` (x_0 is a function of x_T alone), ``label``,
``describe()``, and ``step(i, output, x, t, generator, prediction)`` returning
``(x_prev, x0_pred)`` like diffusers' schedulers (``prev_sample``, ``pred_original_sample``).
Every sampler also carries ``guidance``, the classifier-free guidance scale a conditional model
samples with (:mod:`genbench.diffusion.guidance`; the model combines its branches into ``model_fn``).
"""

import math
from collections.abc import Callable
from typing import Any

import torch
from rich.progress import Progress

from genbench import GenbenchError
from genbench.diffusion.guidance import check_guidance, guidance_label, guidance_record
from genbench.diffusion.schedule import NoiseSchedule, _extract, check_prediction, to_x0_eps
from genbench.reproducibility import randn
from genbench.stopping import check_stop

#: ``model_fn(x_t, t)``: the network's raw output, read according to the ``prediction`` type
ModelFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class Sampler:
    """Base class: subclasses define ``timesteps`` (the visited t's, descending) and ``step``.

    ``__call__`` first calls ``prepare`` (once per call: subclasses precompute what depends only
    on the schedule there), then ``step(i, ...)`` for each visited timestep.
    """

    name = "sampler"
    clip_x0 = True
    #: network evaluations per step (1 for DDIM and ancestral; a 2nd-order solver would say 2)
    nfe_per_step: int = 1
    #: whether the sample is a function of x_T alone (no fresh noise per step)
    deterministic: bool = False

    def __init__(self, schedule: NoiseSchedule | None = None, guidance: float = 0.0) -> None:
        self.schedule = schedule
        #: the classifier-free guidance scale w of a conditional model (``sampler.guidance``; 0: none)
        self.guidance = check_guidance(guidance)

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
    def nfe(self) -> int:
        """Network evaluations per sample: what sampling costs, comparable across samplers whose
        steps cost different numbers of evaluations. These are sequential network calls: with
        guidance each call evaluates a batch of 2n (both branches), and the count is the same."""
        return self.num_steps * self.nfe_per_step

    @property
    def label(self) -> str:
        """A short name for tables and metric records, e.g. ``ddim-50`` or ``edm_heun-35``: the
        network evaluations are what set both the cost and the quality, so they are part of the name
        (for a one-evaluation step, the number of steps), and so is a guidance scale (``ddim-50-w2``)."""
        return guidance_label(f"{self.name}-{self.nfe}", self.guidance)

    def describe(self) -> dict[str, Any]:
        """What drew the samples, recorded with the metrics; subclasses add their own settings."""
        return {"name": self.name, "steps": self.num_steps, "nfe": self.nfe, **guidance_record(self.guidance)}

    def timesteps(self) -> list[int]:
        raise NotImplementedError

    def prepare(self, timesteps: list[int], dtype: torch.dtype, device: torch.device) -> None:
        """Precompute per-step quantities for ``timesteps`` in ``dtype`` on ``device`` (default: none)."""

    def _x0(self, xt: torch.Tensor, t: torch.Tensor, output: torch.Tensor, prediction: str) -> torch.Tensor:
        x0, _ = self.schedule.to_x0_eps(xt, t, output, prediction)
        return x0.clamp(-1, 1) if self.clip_x0 else x0

    @torch.no_grad()
    def __call__(
        self,
        model_fn: ModelFn,
        x_T: torch.Tensor,
        generator: torch.Generator | None = None,
        progress: bool = False,
        prediction: str = "eps",
    ) -> torch.Tensor:
        """x_0 in [-1, 1] from x_T, ``model_fn``'s output read as ``prediction``."""
        self._require_schedule()
        check_prediction(prediction)
        ts = self.timesteps()
        self.prepare(ts, x_T.dtype, x_T.device)
        x = x_T
        with Progress(transient=True, disable=not progress) as bar:
            task = bar.add_task(f"{self.name} sampling", total=len(ts))
            for i, t in enumerate(ts):
                check_stop()  # a SIGTERM takes effect within one network evaluation
                # whole timesteps as integers; solvers between noise levels visit fractional ones
                dtype = torch.long if isinstance(t, int) else x.dtype
                tt = torch.full((x.shape[0],), t, device=x.device, dtype=dtype)
                x, _ = self.step(i, model_fn(x, tt), x, tt, generator, prediction)
                bar.advance(task)
        return x.clamp(-1, 1)

    def step(
        self,
        i: int,
        output: torch.Tensor,
        x: torch.Tensor,
        t: torch.Tensor,
        generator: torch.Generator | None,
        prediction: str = "eps",
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Step ``i`` of ``timesteps()``: from x_t (t = timesteps()[i]) to the next visited
        timestep, or to x_0 after the last one. Returns ``(x_prev, x0)``: the x_0 the step used
        (clipped when ``clip_x0``) comes back too, as diffusers' schedulers return it, for
        progress views and for solvers that reuse it."""
        raise NotImplementedError


class AncestralSampler(Sampler):
    """DDPM's ancestral sampling: T steps of p(x_{t-1}|x_t) = N(mu_theta, sigma_t^2 I).

    ``variance="beta_tilde"`` uses the posterior variance (the lower bound of Ho et al.),
    ``"beta"`` the upper bound sigma_t^2 = beta_t.
    """

    name = "ancestral"

    def __init__(
        self, schedule: NoiseSchedule | None = None, variance: str = "beta_tilde", guidance: float = 0.0
    ) -> None:
        super().__init__(schedule, guidance)
        if variance not in ("beta_tilde", "beta"):
            raise GenbenchError(f"Unknown ancestral variance '{variance}': use beta_tilde or beta.")
        self.variance = variance

    def describe(self) -> dict[str, Any]:  # noqa: D102
        return {**super().describe(), "variance": self.variance}

    def timesteps(self) -> list[int]:
        return list(range(self._require_schedule().timesteps - 1, -1, -1))

    def step(self, i, output, x, t, generator, prediction="eps"):  # noqa: D102
        s = self.schedule
        x0 = self._x0(x, t, output, prediction)
        mean = s.posterior_mean(x0, x, t)
        if i == s.timesteps - 1:  # t = 0: the mean is the sample
            return mean, x0
        log_var = s.posterior_log_var_clipped if self.variance == "beta_tilde" else torch.log(s.betas)
        noise = randn(x.shape, generator, device=x.device, dtype=x.dtype)
        return mean + torch.exp(0.5 * _extract(log_var, t, x.ndim)) * noise, x0


class DDIMSampler(Sampler):
    """DDIM (Song et al., 2021) over ``steps`` evenly spaced timesteps; ``eta=0`` is deterministic,
    ``eta=1`` matches DDPM's posterior noise level on the same sub-sequence.

    The per-step coefficients are computed once per call in float64 (:meth:`coefficients`) and
    only then cast: at run time in float32, 1 - abar_prev - sigma^2 cancels (the first step of a
    10-step cosine schedule with eta=1 loses its direction term, ~2.8e-4, entirely).
    """

    name = "ddim"

    def __init__(
        self, schedule: NoiseSchedule | None = None, steps: int = 50, eta: float = 0.0, guidance: float = 0.0
    ) -> None:
        super().__init__(schedule, guidance)
        if steps < 1:
            raise GenbenchError(f"DDIM needs at least one step, got sampler.steps={steps}.")
        self.steps = steps
        self.eta = eta
        self._coefs: dict[str, torch.Tensor] = {}

    @property
    def num_steps(self) -> int:
        """``steps``, known without a schedule (``timesteps()`` visits exactly that many)."""
        return self.steps

    @property
    def deterministic(self) -> bool:
        """eta = 0 draws no noise: x_0 is a function of x_T (what decoding a latent needs)."""
        return self.eta == 0

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

    def step(self, i, output, x, t, generator, prediction="eps"):  # noqa: D102
        c = {k: v[i] for k, v in self._coefs.items()}
        # the float64-derived coefficients, not the schedule's buffers (for eps: the same arithmetic as before)
        x0, _ = to_x0_eps(x, output, prediction, c["sqrt_ab"], c["sqrt_one_minus_ab"])
        if self.clip_x0:
            x0 = x0.clamp(-1, 1)
        if i == len(self._coefs["dir"]) - 1:
            return x0, x0
        # Recompute eps from the clipped x0 so the direction stays consistent with it.
        eps = (x - c["sqrt_ab"] * x0) / c["sqrt_one_minus_ab"]
        x_prev = c["sqrt_ab_prev"] * x0 + c["dir"] * eps
        if self.eta > 0:
            x_prev = x_prev + c["sigma"] * randn(x.shape, generator, device=x.device, dtype=x.dtype)
        return x_prev, x0


#: how a few-step solver spreads its timesteps over [0, T-1], as diffusers names the choices
#: (Lin et al., 2024, table 2): "linspace" and "trailing" start at T-1, "leading" at a lower t
SPACINGS = ("linspace", "leading", "trailing")


def spaced_timesteps(T: int, n: int, spacing: str) -> torch.Tensor:
    """``n`` timesteps in [0, T-1], descending (float64, not rounded), spaced as diffusers' schedulers
    space them: "linspace" from T-1 to 0 inclusive, "leading" multiples of T // n from 0 up,
    "trailing" T-1 down in steps of T / n."""
    if spacing == "linspace":
        return torch.linspace(0, T - 1, n, dtype=torch.float64).flip(0)
    if spacing == "leading":
        return (torch.arange(n, dtype=torch.float64) * (T // n)).flip(0)
    return torch.arange(T, 0, -T / n, dtype=torch.float64).round() - 1


def _check_spacing(spacing: str) -> str:
    if spacing not in SPACINGS:
        raise GenbenchError(f"Unknown timestep spacing '{spacing}': use sampler.spacing=linspace, leading or trailing.")
    return spacing


def _check_steps(name: str, steps: int) -> int:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise GenbenchError(f"The {name} sampler needs sampler.steps >= 1, got {steps!r}.")
    return steps


class DPMSolverSampler(Sampler):
    """DPM-Solver++ (Lu et al., 2022), multistep, order 1 or 2 ("2M"): the probability-flow ODE
    solved in log-SNR time lambda = log(alpha / sigma) with the network read as an x_0 predictor.
    The exact linear part of the ODE is integrated in closed form and the x_0 term extrapolated
    linearly from the last two steps, so each step costs one network evaluation.

    Matches diffusers' ``DPMSolverMultistepScheduler(algorithm_type="dpmsolver++", solver_order=2,
    solver_type="midpoint", final_sigmas_type="zero", lower_order_final=True)`` step for step
    (``tests/test_samplers.py``): the same ``spacing`` of ``steps`` integer timesteps, a first-order
    first step, and a last step to noise level 0 (its x_0 prediction). ``clip_x0`` clamps every
    x_0 prediction to [-1, 1] (diffusers' ``thresholding`` with ``sample_max_value=1``), as DDIM
    here does. Coefficients in float64, cast once per call.
    """

    name = "dpmpp_2m"
    deterministic = True

    def __init__(
        self,
        schedule: NoiseSchedule | None = None,
        steps: int = 10,
        order: int = 2,
        spacing: str = "leading",
        clip_x0: bool = True,
        guidance: float = 0.0,
    ) -> None:
        super().__init__(schedule, guidance)
        self.steps = _check_steps(self.name, steps)
        if order not in (1, 2):
            raise GenbenchError(f"DPM-Solver++ is implemented for sampler.order=1 or 2, got {order!r}.")
        self.order = order
        self.spacing = _check_spacing(spacing)
        self.clip_x0 = bool(clip_x0)
        self._coefs: dict[str, torch.Tensor] = {}
        self._prev_x0: torch.Tensor | None = None

    @property
    def num_steps(self) -> int:
        return self.steps

    def describe(self) -> dict[str, Any]:  # noqa: D102
        return {**super().describe(), "order": self.order, "spacing": self.spacing, "clip_x0": self.clip_x0}

    def timesteps(self) -> list[int]:
        """``steps`` integer timesteps, descending, as diffusers' ``set_timesteps`` spaces them."""
        T, n = self._require_schedule().timesteps, self.steps
        if self.spacing == "trailing":
            ts = spaced_timesteps(T, n, self.spacing)
        else:  # n + 1 points down to t = 0, which is left out: the last step goes to noise level 0
            ts = spaced_timesteps(T, n + 1, self.spacing)[:-1]
        ts = [int(v) for v in ts.round().tolist()]
        if len(set(ts)) != len(ts) or len(ts) != n:
            raise GenbenchError(
                f"{n} {self.spacing}-spaced steps do not fit the schedule's T={T} (timesteps repeat): "
                "use fewer sampler.steps or another sampler.spacing."
            )
        return ts

    def prepare(self, timesteps: list[int], dtype: torch.dtype, device: torch.device) -> None:  # noqa: D102
        sigma = self._require_schedule().sigmas_float64[torch.tensor(timesteps)]
        sigma = torch.cat([sigma, torch.zeros(1, dtype=torch.float64)])  # the last step lands on x_0
        alpha = 1 / (1 + sigma**2).sqrt()
        sig = sigma * alpha  # the VP noise scale sqrt(1 - abar)
        lam = alpha.log() - sig.log()  # +inf at the end: exp(-h) = 0 there
        self._coefs = {
            "alpha": alpha.to(device=device, dtype=dtype),
            "sigma": sig.to(device=device, dtype=dtype),
            "lambda": lam,  # float64, read per step as Python floats
        }
        self._prev_x0 = None

    def step(self, i, output, x, t, generator, prediction="eps"):  # noqa: D102
        a, s, lam = self._coefs["alpha"], self._coefs["sigma"], self._coefs["lambda"]
        x0, _ = to_x0_eps(x, output, prediction, a[i], s[i])
        if self.clip_x0:
            x0 = x0.clamp(-1, 1)
        prev, self._prev_x0 = self._prev_x0, x0
        if i == len(a) - 2:  # the last step goes to noise level 0: the sample is its x_0 prediction
            return x0, x0
        h = float(lam[i + 1] - lam[i])
        x_prev = (s[i + 1] / s[i]) * x - a[i + 1] * math.expm1(-h) * x0
        if self.order == 2 and prev is not None:
            r0 = float(lam[i] - lam[i - 1]) / h
            x_prev = x_prev - 0.5 * a[i + 1] * math.expm1(-h) * (x0 - prev) / r0
        return x_prev, x0


class EDMHeunSampler(Sampler):
    """Heun's second-order method on the probability-flow ODE dx/dsigma = eps(x, sigma) in the
    variance-exploding view x / sqrt(abar) = x_0 + sigma eps (Karras et al., 2022, "EDM", algorithm
    1 with S_churn = 0), on the noise levels of Karras et al. (rho = 7, from sigma at t = T-1 down to
    sigma at t = 0) or, with ``karras=False``, those of the ``spacing``'s timesteps. ``steps`` noise
    levels cost 2 x steps - 1 network evaluations: every step but the last (to noise level 0, an
    Euler step that lands on x_0) evaluates the network twice. The network sees fractional
    timesteps (:meth:`NoiseSchedule.sigma_to_t`).

    Matches diffusers' ``HeunDiscreteScheduler(use_karras_sigmas=karras, timestep_spacing=spacing,
    clip_sample=clip_x0)`` step for step (``tests/test_samplers.py``), evaluation by evaluation:
    ``timesteps()`` lists the 2 x steps - 1 evaluations and ``step`` alternates Euler predictions
    and Heun corrections. Between evaluations the state is kept as x_t (the network's input), so the
    generic sampling loop drives it like any other sampler.
    """

    name = "edm_heun"
    deterministic = True

    def __init__(
        self,
        schedule: NoiseSchedule | None = None,
        steps: int = 10,
        karras: bool = True,
        rho: float = 7.0,
        spacing: str = "linspace",
        clip_x0: bool = True,
        guidance: float = 0.0,
    ) -> None:
        super().__init__(schedule, guidance)
        self.steps = _check_steps(self.name, steps)
        self.karras = bool(karras)
        self.rho = float(rho)
        self.spacing = _check_spacing(spacing)
        self.clip_x0 = bool(clip_x0)
        self._state: tuple[torch.Tensor, torch.Tensor] | None = None

    @property
    def num_steps(self) -> int:
        return self.steps

    @property
    def nfe(self) -> int:
        """Two evaluations per step, one for the last (an Euler step to x_0)."""
        return 2 * self.steps - 1

    def describe(self) -> dict[str, Any]:  # noqa: D102
        return {**super().describe(), "karras": self.karras, "rho": self.rho, "spacing": self.spacing,
                "clip_x0": self.clip_x0}  # fmt: skip

    def noise_levels(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(sigmas, timesteps), float64: the ``steps`` noise levels, descending, then 0, and the
        (fractional) timestep of each nonzero one, as diffusers' ``set_timesteps`` makes them."""
        schedule = self._require_schedule()
        T, n = schedule.timesteps, self.steps
        ts = spaced_timesteps(T, n, self.spacing)
        table = schedule.sigmas_float64
        # sigma at the spaced timesteps, interpolated linearly as diffusers does (np.interp)
        low = ts.floor().long().clamp(0, T - 1)
        high = (low + 1).clamp(max=T - 1)
        sigmas = table[low] + (ts - low) * (table[high] - table[low])
        if self.karras:
            ramp = torch.linspace(0, 1, n, dtype=torch.float64)
            hi, lo = float(sigmas[0]) ** (1 / self.rho), float(sigmas[-1]) ** (1 / self.rho)
            sigmas = (hi + ramp * (lo - hi)) ** self.rho
            ts = schedule.sigma_to_t(sigmas)
        return torch.cat([sigmas, torch.zeros(1, dtype=torch.float64)]), ts

    def timesteps(self) -> list[float]:
        """The timestep of every network evaluation: t_0, then each later level's twice (the Heun
        correction of the step that reached it, then the Euler step that leaves it)."""
        _, ts = self.noise_levels()
        return [float(ts[0])] + [float(t) for t in ts[1:] for _ in range(2)]

    def prepare(self, timesteps: list[float], dtype: torch.dtype, device: torch.device) -> None:  # noqa: D102
        sigmas, _ = self.noise_levels()
        self._sigmas = [float(v) for v in sigmas]
        self._state = None

    def _x0_and_scale(self, x, output, sigma: float, prediction: str) -> tuple[torch.Tensor, float]:
        """x_0 from the network's output at x_t (noise level sigma), and sqrt(1 + sigma^2), the
        factor from x_t to the variance-exploding state x_t / sqrt(abar)."""
        scale = math.sqrt(1 + sigma**2)
        x0, _ = to_x0_eps(x, output, prediction, 1 / scale, sigma / scale)
        return (x0.clamp(-1, 1) if self.clip_x0 else x0), scale

    def step(self, i, output, x, t, generator, prediction="eps"):  # noqa: D102
        k = (i + 1) // 2  # the level this evaluation is at
        sigma = self._sigmas[k]
        x0, scale = self._x0_and_scale(x, output, sigma, prediction)
        xs = x * scale
        if i % 2 == 0:  # Euler from level k to k + 1 (to x_0 itself when that is noise level 0)
            nxt = self._sigmas[k + 1]
            if nxt == 0:
                return x0, x0
            d = (xs - x0) / sigma
            self._state = (d, xs)
            return (xs + d * (nxt - sigma)) / math.sqrt(1 + nxt**2), x0
        # Heun's correction of the step from level k - 1, with the slope at level k averaged in
        d_prev, xs_prev = self._state
        self._state = None
        d = 0.5 * (d_prev + (xs - x0) / sigma)
        return (xs_prev + d * (sigma - self._sigmas[k - 1])) / scale, x0
