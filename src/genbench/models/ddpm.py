"""DDPM (Ho et al., 2020): a network learns to predict the noise added by q(x_t | x_0).

The module combines three separate objects: the network (any ``net(x_t, t)``), the
``NoiseSchedule`` and a ``Sampler``. It trains on the simple objective
E_{t, x_0, eps} ||eps - eps_theta(sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps, t)||^2 and samples
with an EMA copy of the network. ``prediction`` (default "eps") says what the network outputs;
"x0" or "v" change the regression target to match, and the samplers read the output accordingly.
``loss_weighting="min_snr"`` weights each example's error by min-SNR-gamma (Hang et al., 2023).
With ``conditional=true`` the network also takes a class, trained with label dropout, and samples
with classifier-free guidance (``sampler.guidance``; :mod:`genbench.models.ema_regression`).

Its likelihood has two bounds: the variational bound of Ho et al. (``vlb``, the headline) and, with
``likelihood.ode=true``, the bound through its probability-flow ODE (``ode``), which is the
deterministic samplers' model and on the same scale as flow matching's.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from genbench import GenbenchError
from genbench.diffusion import DDIMSampler, NoiseSchedule, Sampler
from genbench.diffusion.schedule import _extract, check_prediction, to_x0_eps
from genbench.distributions import LikelihoodConfig, discretized_gaussian_log_likelihood, normal_kl
from genbench.flow.likelihood import ode_nll_bound
from genbench.models.base import OptimizerFactory, SchedulerFactory
from genbench.models.ema_regression import CONDITIONING_RULES, EMARegressionModel
from genbench.registry import FamilySpec
from genbench.schema import UNET_RULES, Rule, choice, integer, number

#: where DDPM checkpoints keep ``NoiseSchedule.config()``
SCHEDULE_KEY = "genbench_schedule"


class DDPM(EMARegressionModel):
    family = "ddpm"

    def __init__(
        self,
        net: nn.Module,
        schedule: NoiseSchedule,
        sampler: Sampler,
        optimizer: OptimizerFactory,
        scheduler: SchedulerFactory = None,
        ema_decay: float = 0.999,
        channels: int = 1,
        image_size: int = 32,
        sample_batch_size: int = 256,
        channels_last: bool | str = False,
        compile: bool | dict[str, Any] | None = False,  # the config key model.compile
        prediction: str = "eps",
        loss_weighting: str = "uniform",
        min_snr_gamma: float = 5.0,
        conditional: bool = False,
        num_classes: int | None = None,
        label_dropout: float = 0.1,
    ) -> None:
        super().__init__(
            net,
            optimizer,
            scheduler,
            ema_decay,
            channels,
            image_size,
            sample_batch_size,
            channels_last,
            compile,
            conditional,
            num_classes,
            label_dropout,
        )
        self.save_hyperparameters(ignore=["net", "schedule", "sampler", "optimizer", "scheduler"])
        #: what the network outputs ("eps", "x0" or "v"): its training target, passed to every sampler
        self.prediction = check_prediction(prediction)
        self.schedule = schedule
        self.loss_weighting = loss_weighting
        self.min_snr_gamma = float(min_snr_gamma)
        schedule.loss_weights(torch.zeros(1, dtype=torch.long), prediction, loss_weighting, self.min_snr_gamma)
        self.sampler = self.prepare_sampler(sampler)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Also record the noise schedule: its buffers are not in the state dict, and the weights
        only make sense under the schedule they were trained with."""
        super().on_save_checkpoint(checkpoint)
        checkpoint[SCHEDULE_KEY] = self.schedule.config()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Refuse to resume (or load) under a different schedule than the checkpoint's, with one
        line saying which overrides restore it. Checkpoints from before the schedule was recorded
        carry none and load unchecked."""
        super().on_load_checkpoint(checkpoint)
        saved = checkpoint.get(SCHEDULE_KEY)
        if saved is not None:
            self.schedule.check_matches(saved, source="The checkpoint")

    def diffusion_loss(
        self,
        net: nn.Module,
        x0: torch.Tensor,
        generator: torch.Generator | None = None,
        labels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The MSE to the ``prediction`` target (the noise by default) at uniformly drawn timesteps,
        each example's mean squared error weighted by ``loss_weighting`` (uniform: plain MSE); a
        conditional network sees the classes ``labels`` (None: the null class)."""
        n = x0.shape[0]
        if generator is None:
            t = self.schedule.sample_timesteps(n, x0.device)
            noise = torch.randn_like(x0)
        else:
            t = torch.randint(0, self.schedule.timesteps, (n,), generator=generator, device=generator.device)
            t = t.to(x0.device)
            noise = torch.randn(x0.shape, generator=generator, device=generator.device).to(x0.device)
        target = self.schedule.prediction_target(x0, noise, t, self.prediction)
        output = self.network(net, labels)(self.schedule.q_sample(x0, t, noise), t)
        if self.loss_weighting == "uniform":
            return F.mse_loss(output, target)
        per_example = F.mse_loss(output, target, reduction="none").flatten(1).mean(1)
        weights = self.schedule.loss_weights(t, self.prediction, self.loss_weighting, self.min_snr_gamma)
        return (weights.to(per_example.dtype) * per_example).mean()

    regression_loss = diffusion_loss

    def _sample_batch(
        self,
        n: int,
        generator: torch.Generator | None,
        sampler: Sampler | None = None,
        use_ema: bool = True,
        progress: bool = False,
        labels: torch.Tensor | None = None,
        guidance: float | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        """``n`` samples of the classes ``labels`` (a conditional model), guided with ``guidance``
        (default: the sampler's ``guidance``)."""
        sampler = self.sampler if sampler is None else self.prepare_sampler(sampler)
        fn = self.network(self.ema.shadow if use_ema else self.net, labels, self.guidance_scale(sampler, guidance))
        x_T = self.randn(n, *self.image_shape, generator=generator)
        return sampler(fn, x_T, generator=generator, progress=progress, prediction=self.prediction)

    def prepare_sampler(self, sampler: Sampler) -> Sampler:
        """``sampler`` bound to this model's noise schedule (in place; returned for chaining).

        Callers (callbacks, the API) hand the DDPM unbound samplers built from conf/sampler and
        let it do this, so nothing generic needs to know that a schedule exists."""
        if not isinstance(sampler, Sampler):
            name = getattr(sampler, "name", type(sampler).__name__)
            raise GenbenchError(
                f"Sampler '{name}' cannot sample a diffusion model: it reads the network as a velocity field. "
                "Use a diffusion sampler: sampler=ddim, dpmpp_2m, edm_heun or ancestral."
            )
        return sampler.bind(self.schedule)

    @property
    def latent_shape(self) -> tuple[int, ...]:
        """x_T: DDIM with eta=0 maps it to an image deterministically (Song et al., 2021, sec. 5)."""
        return self.image_shape

    def deterministic_sampler(self, sampler: Sampler | None = None) -> Sampler:
        """The sampler that decodes x_T: ``sampler`` if it is deterministic (DDIM with eta=0), else
        the model's own when it is, else DDIM eta=0 with 50 steps (at most T). Anything with fresh
        noise per step (ancestral, eta > 0) would not be a function of x_T, and is refused."""
        if sampler is None:
            if self.sampler.deterministic:
                return self.sampler
            return DDIMSampler(self.schedule, steps=min(50, self.schedule.timesteps), eta=0.0)
        if not sampler.deterministic:
            eta = getattr(sampler, "eta", None)
            raise GenbenchError(
                f"Decoding x_T needs a deterministic sampler, got {sampler.name}"
                f"{f' with eta={eta}' if eta is not None else ''}: use sampler=ddim sampler.eta=0."
            )
        return self.prepare_sampler(sampler)

    def _decode_batch(
        self, z: torch.Tensor, sampler: Sampler | None = None, use_ema: bool = True, **kwargs: Any
    ) -> torch.Tensor:
        """x_T -> image; a conditional model decodes with its unconditional branch (the null class)."""
        net = self.ema.shadow if use_ema else self.net
        sampler = self.deterministic_sampler(sampler)
        fn = self.network(net, None, 0.0)
        return sampler(fn, z, prediction=self.prediction)

    # --- likelihood in bits/dim (genbench.metrics.likelihood) --------------------------------
    @property
    def reverse_variance(self) -> str:
        """sigma_t^2 of p(x_{t-1}|x_t) in the bound: the configured ancestral sampler's choice
        (``beta_tilde`` or ``beta``), ``beta_tilde`` for any other sampler (DDIM has none)."""
        return getattr(self.sampler, "variance", "beta_tilde")

    def reverse_log_variance(self) -> torch.Tensor:
        """log sigma_t^2 for t = 0..T-1, as in Ho et al.'s code: beta-tilde clipped at t=0 to
        beta-tilde_1 ("fixedsmall"), or beta_t with beta-tilde_1 at t=0 ("fixedlarge")."""
        s = self.schedule
        if self.reverse_variance == "beta":
            return torch.log(torch.cat([s.posterior_var[1:2], s.betas[1:]]))
        return s.posterior_log_var_clipped

    def vlb_prior(self, x0: torch.Tensor) -> torch.Tensor:
        """L_T = KL(q(x_T|x_0) || N(0, I)) per image (nats): no network, nearly 0 for a good schedule."""
        s, last = self.schedule, self.schedule.timesteps - 1
        mean = s.sqrt_alpha_bar[last].double() * x0.double()
        logvar = torch.log1p(-s.alpha_bar_float64[last]).to(x0.device)
        return normal_kl(mean, logvar.expand_as(mean), 0.0, 0.0).flatten(1).sum(1)

    def vlb_term(
        self,
        x0: torch.Tensor,
        t: torch.Tensor,
        noise: torch.Tensor,
        net: nn.Module | None = None,
        labels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The bound's term at timestep index t (0-based, one per image), per image in nats, with
        x_t = q_sample(x_0, t, noise): for t >= 1, L_{t} = KL(q(x_{t-1}|x_t, x_0) || p(x_{t-1}|x_t));
        for t = 0, L_0 = -log p(x_0|x_1) under the discretised Gaussian decoder. p's mean comes from the
        network's output via the clipped x_0 prediction (as the samplers do), its variance is
        :meth:`reverse_log_variance`. ``net`` defaults to the EMA weights that sampling uses; a
        conditional model's is given the classes ``labels`` (a term of the bound on -log p(x|y))."""
        s = self.schedule
        net = self.ema.shadow if net is None else net
        xt = s.q_sample(x0, t, noise)
        x0_pred, _ = s.to_x0_eps(xt, t, self.network(net, labels)(xt, t), self.prediction)
        x0_pred = x0_pred.clamp(-1, 1)
        model_mean = s.posterior_mean(x0_pred, xt, t).double()
        model_logvar = _extract(self.reverse_log_variance(), t, x0.ndim).double()
        true_mean = s.posterior_mean(x0, xt, t).double()
        true_logvar = _extract(s.posterior_log_var_clipped, t, x0.ndim).double()
        kl = normal_kl(true_mean, true_logvar.expand_as(true_mean), model_mean, model_logvar).flatten(1).sum(1)
        decoder_nll = -discretized_gaussian_log_likelihood(x0, model_mean, 0.5 * model_logvar).flatten(1).sum(1)
        return torch.where(t == 0, decoder_nll, kl)

    def likelihood_description(self, cfg: LikelihoodConfig) -> str:
        """The bounds' settings in a few words."""
        T = self.schedule.timesteps
        which = f"all {T}" if cfg.timesteps >= T else f"{cfg.timesteps} of {T}"
        text = f"DDPM variational bound (EMA weights, sigma^2={self.reverse_variance}), {which} timesteps per image"
        if cfg.ode:
            text += f"; probability-flow ODE bound (Heun {cfg.ode_steps} steps, Hutchinson divergence, 1 probe)"
        return text

    def ode_velocity(self, net: nn.Module, x: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
        """The probability-flow ODE as a flow from noise (tau = 0) to data (tau = 1), in the
        coordinates x_t the network reads: log sigma runs linearly in tau from sigma at t = T-1 to
        sigma at t = 0 (sigma = sqrt((1 - abar) / abar), fractional t between trained ones by
        :meth:`NoiseSchedule.sigma_to_t`). With dx_sigma / dsigma = eps for x_sigma = x_t / sqrt(abar)
        (the deterministic samplers' ODE) and x_t = x_sigma / sqrt(1 + sigma^2):

            dx_t / dtau = log(sigma_min / sigma_max) * (sqrt(1 - abar) eps - (1 - abar) x_t).

        The flow carries N(0, I) (x_T's law, up to abar_{T-1} ~ 4e-5) to a density over images, so
        :func:`genbench.flow.likelihood.ode_log_likelihood` bounds its NLL as it does flow matching's."""
        table = self.schedule.sigmas_float64
        log_min, log_max = float(table[0].log()), float(table[-1].log())
        sigma = (log_max + tau.double() * (log_min - log_max)).exp()
        t = self.schedule.sigma_to_t(sigma).to(device=x.device, dtype=x.dtype)
        one_minus_ab = (sigma**2 / (1 + sigma**2)).to(device=x.device, dtype=x.dtype).view(-1, *([1] * (x.ndim - 1)))
        sqrt_ab, sqrt_one_minus_ab = (1 - one_minus_ab).sqrt(), one_minus_ab.sqrt()
        _, eps = to_x0_eps(x, net(x, t), self.prediction, sqrt_ab, sqrt_one_minus_ab)
        return (log_min - log_max) * (sqrt_one_minus_ab * eps - one_minus_ab * x)

    def likelihood_bounds(
        self,
        x: torch.Tensor,
        cfg: LikelihoodConfig,
        generator: torch.Generator | None = None,
        labels: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """``vlb`` per image (nats): L_T + sum over t of :meth:`vlb_term` (Ho et al., 2020, eq. 5).
        A conditional model bounds -log p(x|y) at the classes ``labels`` (required; unguided: w = 0),
        to which :func:`genbench.metrics.likelihood.evaluate_likelihood` adds log K.

        With ``cfg.timesteps`` = k < T each image gets k distinct timesteps drawn uniformly (without
        replacement, so k = T is the exact sum) and the sum is estimated as T * their mean: unbiased,
        and its Monte-Carlo noise is part of the per-image spread the standard error is computed from.
        Draw order from ``generator`` (part of the contract, the tests rely on it): the timesteps
        (one permutation per image) when k < T, then for each j < k a noise tensor shaped like x."""
        self.check_likelihood_labels(labels)
        T, n = self.schedule.timesteps, x.shape[0]
        k = min(cfg.timesteps, T)
        if k == T:
            ts = torch.arange(T).expand(n, T)
        else:
            device = generator.device if generator is not None else "cpu"
            ts = torch.stack([torch.randperm(T, generator=generator, device=device)[:k] for _ in range(n)])
        ts = ts.to(x.device)
        total = torch.zeros(n, dtype=torch.float64, device=x.device)
        for j in range(k):
            noise = self.randn(*x.shape, generator=generator).to(x.dtype)
            total += self.vlb_term(x, ts[:, j].contiguous(), noise, labels=labels)
        bounds = {"vlb": self.vlb_prior(x) + total * (T / k)}
        if cfg.ode:
            net = self.network(self.ema.shadow, labels)
            velocity = lambda z, tau: self.ode_velocity(net, z, tau)  # noqa: E731
            bounds["ode"] = ode_nll_bound(velocity, x, cfg.ode_steps, generator)
        return bounds


#: the DDPM as a genbench family (genbench.registry): what generic code knows of it
SPEC = FamilySpec(
    name=DDPM.family,
    model=DDPM,
    title="DDPM",
    order=2,
    colour="tab:green",
    likelihood="bound",
    deterministic_sampler=True,  # its default sampler, DDIM with eta=0
    conditional=True,
    guidance=True,
    prediction="eps",
    samplers=True,
    default_sampler="ddim",
    cpu_bf16_speedup=1.42,  # measured on an Intel Xeon with AMX-BF16 (docs/performance.md)
    tiny_overrides=(
        "model.net.base_channels=8",
        "model.net.channel_mults=[1,2]",
        "model.schedule.timesteps=100",
        "model.sampler.steps=4",
    ),
    schema_rules=(
        *UNET_RULES,
        *CONDITIONING_RULES,
        Rule("model.ema_decay", number(0, 1, hi_open=True), "0.999"),
        Rule("model.schedule.timesteps", integer(1), "1000"),
        Rule("model.schedule.kind", choice("linear", "cosine"), "linear"),
        Rule("model.schedule.beta_*", number(0, 1, lo_open=True, hi_open=True), "0.02"),
        Rule("model.loss_weighting", choice("uniform", "min_snr"), "min_snr"),
        Rule("model.min_snr_gamma", number(0, lo_open=True), "5.0"),
    ),
    menu=(
        ("model.prediction", "prediction"),
        ("model.loss_weighting", "loss weighting"),
        ("model.schedule.kind", "schedule"),
        ("model.ema_decay", "EMA"),
        ("model.net.base_channels", "UNet width"),
        ("model.optimizer.lr", "lr"),
        ("model.conditional", "conditional"),
    ),
)
