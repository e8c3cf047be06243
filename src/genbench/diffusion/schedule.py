"""The forward (noising) process of DDPM: betas, cumulative alphas, q(x_t|x_0) and the posterior.

Every derived quantity is a buffer of a small ``nn.Module`` so it moves with ``.to(device)``.
The buffers are non-persistent: they are a pure function of the schedule's defining config
(:meth:`NoiseSchedule.config`), so they are recomputed on construction rather than stored, and
checkpoints written before a buffer was added still load. What *is* saved is that config: the DDPM
writes it into every checkpoint and refuses to resume under a different one, so a resumed run
cannot silently switch schedules. Computed in float64, stored float32.
"""

import math
from typing import Any

import torch
from torch import nn

from genbench import GenbenchError

#: the T the DDPM paper's beta range (1e-4..0.02) was chosen for; other T are rescaled to it
REFERENCE_TIMESTEPS = 1000


def linear_betas(
    timesteps: int, beta_start: float = 1e-4, beta_end: float = 0.02, max_beta: float = 0.999
) -> torch.Tensor:
    """Ho et al. (2020): betas linear in t. ``beta_start``/``beta_end`` are the values for
    T=1000; other T scale both by 1000/T, as improved-diffusion (Nichol & Dhariwal, 2021) does,
    so that alpha_bar_T stays near zero (~4e-5 for the defaults) whatever T: without it a short
    schedule never reaches the N(0, I) the samplers start from. T=1000 is unchanged.

    A scaled beta >= 1 would erase the image in one step (alpha_bar = 0, x_0 unrecoverable), so
    that is an error naming the smallest usable T; betas just below 1 are capped at ``max_beta``
    like the cosine schedule's.
    """
    scale = REFERENCE_TIMESTEPS / timesteps
    start, end = beta_start * scale, beta_end * scale
    if max(start, end) >= 1:
        min_t = math.floor(REFERENCE_TIMESTEPS * max(beta_start, beta_end)) + 1
        raise GenbenchError(
            f"A linear noise schedule with timesteps={timesteps} scales its betas by 1000/T to "
            f"{start:g}..{end:g}, and a beta >= 1 destroys the image in one step: use "
            f"model.schedule.timesteps>={min_t}, a smaller model.schedule.beta_end, or model.schedule.kind=cosine."
        )
    return torch.linspace(start, end, timesteps, dtype=torch.float64).clamp(max=max_beta)


def cosine_betas(timesteps: int, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """Nichol & Dhariwal (2021): alpha_bar(t) = cos^2(((t/T + s)/(1 + s)) * pi/2), betas clipped."""
    steps = torch.arange(timesteps + 1, dtype=torch.float64) / timesteps
    f = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
    alpha_bar = f / f[0]
    return (1 - alpha_bar[1:] / alpha_bar[:-1]).clamp(max=max_beta)


#: what a diffusion network can be trained to predict from x_t: the noise, the clean image, or
#: v = sqrt(abar) eps - sqrt(1 - abar) x_0 (Salimans & Ho, 2022); a property of the model
PREDICTIONS = ("eps", "x0", "v")


def check_prediction(prediction: str) -> str:
    """``prediction`` if it is one of :data:`PREDICTIONS`, else a one-line error naming them."""
    if prediction not in PREDICTIONS:
        raise GenbenchError(f"Unknown prediction type '{prediction}': use model.prediction=eps, x0 or v.")
    return prediction


def to_x0_eps(
    x_t: torch.Tensor,
    output: torch.Tensor,
    prediction: str,
    sqrt_ab: torch.Tensor | float,
    sqrt_one_minus_ab: torch.Tensor | float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(x_0, eps) from a network's ``output`` at x_t = sqrt_ab x_0 + sqrt_one_minus_ab eps.

    The one place that knows what each prediction type means, so a sampler works with any of them.
    The coefficients are arguments (broadcastable to x_t) because DDIM brings its own, computed in
    float64 (``DDIMSampler.coefficients``), while :meth:`NoiseSchedule.to_x0_eps` takes the
    schedule's buffers. For "eps" the arithmetic is exactly :meth:`NoiseSchedule.predict_x0`'s, so
    switching to this function changes no sample by a bit. For "v", x_0 = sqrt_ab x_t -
    sqrt_one_minus_ab v and eps = sqrt_one_minus_ab x_t + sqrt_ab v (using abar + (1 - abar) = 1).
    """
    if prediction == "eps":
        return (x_t - sqrt_one_minus_ab * output) / sqrt_ab, output
    if prediction == "x0":
        return output, (x_t - sqrt_ab * output) / sqrt_one_minus_ab
    if prediction == "v":
        return sqrt_ab * x_t - sqrt_one_minus_ab * output, sqrt_one_minus_ab * x_t + sqrt_ab * output
    check_prediction(prediction)
    raise AssertionError("unreachable")  # pragma: no cover


def _extract(values: torch.Tensor, t: torch.Tensor, ndim: int) -> torch.Tensor:
    """values[t] reshaped to broadcast over a batch of images."""
    return values.gather(0, t).view(-1, *([1] * (ndim - 1)))


def _normalized(config: dict[str, Any]) -> dict[str, Any]:
    """A saved config in :meth:`NoiseSchedule.config`'s form (plain types, betas None unless linear)."""
    linear = config.get("kind") == "linear"
    return {
        "kind": config.get("kind"),
        "timesteps": int(config["timesteps"]) if config.get("timesteps") is not None else None,
        "beta_start": float(config["beta_start"]) if linear and config.get("beta_start") is not None else None,
        "beta_end": float(config["beta_end"]) if linear and config.get("beta_end") is not None else None,
    }


def _describe(config: dict[str, Any]) -> str:
    """'linear T=1000, betas 0.0001..0.02' or 'cosine T=100', for error messages."""
    text = f"{config['kind']} T={config['timesteps']}"
    if config.get("beta_start") is not None:
        text += f", betas {config['beta_start']}..{config['beta_end']}"
    return text


class NoiseSchedule(nn.Module):
    """The forward process for ``timesteps`` steps of a ``kind`` ("linear" or "cosine") schedule.

    ``alpha_bar_float64`` keeps a float64 CPU copy of alpha_bar (a plain attribute, not a buffer)
    for samplers that derive their own coefficients: differences of float32 alpha_bars cancel.
    """

    def __init__(
        self,
        timesteps: int = 1000,
        kind: str = "linear",
        beta_start: float = 1e-4,
        beta_end: float = 0.02,
    ) -> None:
        super().__init__()
        if timesteps < 1:
            raise GenbenchError(f"A noise schedule needs at least one step, got model.schedule.timesteps={timesteps}.")
        if kind == "linear":
            betas = linear_betas(timesteps, beta_start, beta_end)
        elif kind == "cosine":
            betas = cosine_betas(timesteps)
        else:
            raise GenbenchError(f"Unknown noise schedule '{kind}': use model.schedule.kind=linear or cosine.")
        self.timesteps = timesteps
        self.kind = kind
        self.beta_start = beta_start
        self.beta_end = beta_end
        alphas = 1.0 - betas
        alpha_bar = torch.cumprod(alphas, 0)
        self.alpha_bar_float64 = alpha_bar
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

    def config(self) -> dict[str, Any]:
        """What defines this schedule (the buffers follow from it): saved in DDPM checkpoints.

        The beta range only defines a linear schedule, so a cosine one records it as None: a
        different (unused) beta_end must not make a checkpoint look incompatible."""
        linear = self.kind == "linear"
        return {
            "kind": self.kind,
            "timesteps": self.timesteps,
            "beta_start": self.beta_start if linear else None,
            "beta_end": self.beta_end if linear else None,
        }

    def check_matches(self, saved: dict[str, Any], source: str = "The checkpoint") -> None:
        """Raise a one-line GenbenchError if ``saved`` (another schedule's :meth:`config`) differs
        from this schedule: weights trained for one schedule predict the wrong noise under another,
        and resuming would silently continue training on a different objective."""
        saved = _normalized(saved)
        if saved == self.config():
            return
        flags = " ".join(f"model.schedule.{k}={v}" for k, v in saved.items() if v is not None)
        raise GenbenchError(
            f"{source} was trained with the {_describe(saved)} noise schedule but this run uses "
            f"{_describe(self.config())}: resume with {flags}, or start a new run (no ckpt_path, a new hydra.run.dir)."
        )

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

    def to_x0_eps(
        self, x_t: torch.Tensor, t: torch.Tensor, output: torch.Tensor, prediction: str = "eps"
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(x_0, eps) from a network's ``output`` at (x_t, t) under this schedule (see :func:`to_x0_eps`)."""
        return to_x0_eps(
            x_t,
            output,
            prediction,
            _extract(self.sqrt_alpha_bar, t, x_t.ndim),
            _extract(self.sqrt_one_minus_alpha_bar, t, x_t.ndim),
        )

    def prediction_target(
        self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor, prediction: str = "eps"
    ) -> torch.Tensor:
        """What a network of this ``prediction`` type should output for x_t = q_sample(x0, t, noise):
        the training target, and the inverse of :meth:`to_x0_eps`. For "eps" it is ``noise`` itself,
        so the default DDPM objective is unchanged."""
        if prediction == "eps":
            return noise
        if prediction == "x0":
            return x0
        if prediction == "v":
            return (
                _extract(self.sqrt_alpha_bar, t, x0.ndim) * noise
                - _extract(self.sqrt_one_minus_alpha_bar, t, x0.ndim) * x0
            )
        check_prediction(prediction)
        raise AssertionError("unreachable")  # pragma: no cover

    def posterior_mean(self, x0: torch.Tensor, xt: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Mean of q(x_{t-1} | x_t, x_0)."""
        return _extract(self.posterior_coef_x0, t, xt.ndim) * x0 + _extract(self.posterior_coef_xt, t, xt.ndim) * xt

    def sample_timesteps(self, n: int, device: torch.device) -> torch.Tensor:
        return torch.randint(0, self.timesteps, (n,), device=device)

    # --- the continuous-time view: noise level sigma = sqrt((1 - abar) / abar) --------------------
    # Solvers that step between noise levels (EDM/Karras sampling) and the probability-flow ODE need
    # the schedule at fractional timesteps. Like diffusers' schedulers and k-diffusion, genbench
    # interpolates log sigma linearly between the trained timesteps; :meth:`sigma_to_t` and
    # :meth:`t_to_sigma` are exact inverses of each other on [0, T-1].
    @property
    def sigmas_float64(self) -> torch.Tensor:
        """sigma_t = sqrt((1 - abar_t) / abar_t) for t = 0..T-1 (float64, CPU, increasing): the noise
        level of x_t / sqrt(abar_t) = x_0 + sigma_t eps, the variance-exploding view of x_t."""
        ab = self.alpha_bar_float64
        return ((1 - ab) / ab).sqrt()

    def sigma_to_t(self, sigma: torch.Tensor) -> torch.Tensor:
        """The fractional timestep whose noise level is ``sigma`` (float64): log sigma interpolated
        linearly between the two trained timesteps around it, clamped to [0, T-1] (diffusers'
        ``_sigma_to_t``)."""
        log_sigmas = self.sigmas_float64.log()
        log_sigma = sigma.double().clamp(min=1e-10).log()
        low = (torch.searchsorted(log_sigmas, log_sigma, right=True) - 1).clamp(0, len(log_sigmas) - 2)
        lo, hi = log_sigmas[low], log_sigmas[low + 1]
        w = ((log_sigma - lo) / (hi - lo)).clamp(0, 1)
        return low.double() + w

    def t_to_sigma(self, t: torch.Tensor) -> torch.Tensor:
        """The noise level at fractional timesteps ``t`` in [0, T-1] (float64): the inverse of
        :meth:`sigma_to_t`; at whole t, exactly :attr:`sigmas_float64`."""
        log_sigmas = self.sigmas_float64.log()
        t = t.double().clamp(0, self.timesteps - 1)
        low = t.floor().long().clamp(max=max(self.timesteps - 2, 0))
        w = t - low
        high = (low + 1).clamp(max=self.timesteps - 1)
        return ((1 - w) * log_sigmas[low] + w * log_sigmas[high]).exp()

    def loss_weights(self, t: torch.Tensor, prediction: str, weighting: str, gamma: float = 5.0) -> torch.Tensor:
        """Per-example weights of the regression loss at timesteps ``t``, for a network trained on
        ``prediction``: ``"uniform"`` (all ones: the simple objective of Ho et al.) or ``"min_snr"``
        (Hang et al., 2023): weight the x_0 error by min(SNR_t, gamma) with SNR_t = abar_t / (1 -
        abar_t), which for an eps target is min(SNR, gamma) / SNR, for v min(SNR, gamma) / (SNR + 1)
        and for x_0 min(SNR, gamma) itself (an eps or v error is the x_0 error scaled by SNR or
        SNR + 1). Large-SNR (almost clean) steps stop dominating the gradient."""
        if weighting == "uniform":
            return torch.ones(t.shape, device=t.device)
        if weighting != "min_snr":
            raise GenbenchError(f"Unknown loss weighting '{weighting}': use model.loss_weighting=uniform or min_snr.")
        ab = self.alpha_bar.gather(0, t)
        snr = ab / (1 - ab)
        clipped = snr.clamp(max=gamma)
        check_prediction(prediction)
        return {"eps": clipped / snr, "v": clipped / (snr + 1), "x0": clipped}[prediction]
