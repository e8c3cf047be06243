"""Likelihood in bits/dim (genbench.distributions, genbench.metrics.likelihood) against hand-computable cases.

The discretised likelihoods are checked against exact CDF differences in 1000-digit arithmetic
(mpmath), the KLs against torch.distributions, the DDPM bound term by term against the paper's
formulas written out here from alpha_bar, and the VAE/DDPM bounds on tiny networks.
"""

from __future__ import annotations

import math

import mpmath
import pytest
import torch

from conftest import FAST, compose_train, tiny
from genbench import GenbenchError
from genbench.config import build
from genbench.data.synthetic import make_shapes
from genbench.distributions import (
    LikelihoodConfig,
    discretized_gaussian_log_likelihood,
    discretized_logistic_log_likelihood,
    logmeanexp,
    nats_to_bits_per_dim,
    normal_kl,
)
from genbench.metrics.likelihood import NO_LIKELIHOOD, evaluate_likelihood

LEVELS = torch.arange(256, dtype=torch.float64) / 127.5 - 1  # the 8-bit grid on [-1, 1]


@pytest.fixture(autouse=True)
def _one_thread():
    """The tiny networks run ~50x faster on one thread than on two on a busy 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def build_model(family: str, *overrides: str):
    return build(compose_train([*FAST, *tiny(family), *overrides]).model, "model")


def images(n: int, seed: int = 3) -> torch.Tensor:
    return make_shapes(n, 32, 1, seed)[0]


# --- the pure functions ----------------------------------------------------------------------
class UniformModel:
    """1/256 for every level of every pixel: exactly 8 bits/dim."""

    image_shape = (1, 32, 32)
    training = False

    def eval(self):
        return self

    def train(self, mode: bool = True):
        return self

    def likelihood_description(self, cfg: LikelihoodConfig) -> str:
        return "uniform"

    def likelihood_bounds(self, x, cfg, generator):
        return {"exact": torch.full((x.shape[0],), x[0].numel() * math.log(256), dtype=torch.float64)}


def test_a_uniform_model_over_256_levels_scores_exactly_8_bits_per_dim() -> None:
    assert nats_to_bits_per_dim(3 * 32 * 32 * math.log(256), 3 * 32 * 32) == pytest.approx(8.0, abs=1e-12)
    r = evaluate_likelihood(UniformModel(), images(10), LikelihoodConfig(num_images=7, batch_size=3))
    assert r["bpd"] == pytest.approx(8.0, abs=1e-12) and r["bpd_exact"] == r["bpd"]
    assert r["bpd_se"] == pytest.approx(0.0, abs=1e-12)
    assert r["likelihood_images"] == 7 and r["likelihood"] == "uniform"


def exact_bin_log_prob(cdf, level: int, mean: float, scale: float) -> float:
    """log P(level) from the distribution's CDF in 1000-digit arithmetic (no cancellation even
    where both CDFs are 1 - 1e-600)."""
    with mpmath.workdps(1000):
        x = mpmath.mpf(level) / mpmath.mpf("127.5") - 1
        lo = mpmath.mpf(-math.inf) if level == 0 else (x - mpmath.mpf(1) / 255 - mean) / scale
        hi = mpmath.mpf(math.inf) if level == 255 else (x + mpmath.mpf(1) / 255 - mean) / scale
        return float(mpmath.log(cdf(hi) - cdf(lo)))


def _logistic_cdf(z):
    return 1 / (1 + mpmath.exp(-z)) if z != -math.inf else mpmath.mpf(0)


@pytest.mark.parametrize(
    ("fn", "cdf"),
    [(discretized_gaussian_log_likelihood, mpmath.ncdf), (discretized_logistic_log_likelihood, _logistic_cdf)],
    ids=["gaussian", "logistic"],
)
def test_discretized_likelihood_matches_exact_cdf_differences(fn, cdf) -> None:
    # Edges (0, 255), the mode, near and far tails (P down to ~exp(-1000)), wide and narrow scales.
    cases = [(0, 0.0, 0.5), (255, 0.0, 0.5), (0, -1.2, 0.01), (255, 0.9, 0.03), (128, 0.0039, 0.001),
             (200, -0.3, 0.05), (10, 0.8, 0.02), (250, -0.9, 0.05), (77, 0.1, 30.0), (3, 0.0, 1e-4)]  # fmt: skip
    for level, mean, scale in cases:
        got = float(fn(LEVELS[level], torch.tensor(mean), torch.tensor(math.log(scale))))
        want = exact_bin_log_prob(cdf, level, mean, scale)
        assert got == pytest.approx(want, rel=1e-6, abs=1e-9), (level, mean, scale)


@pytest.mark.parametrize("fn", [discretized_gaussian_log_likelihood, discretized_logistic_log_likelihood])
def test_discretized_probabilities_of_the_256_levels_sum_to_one(fn) -> None:
    for mean, scale in [(0.0, 1.0), (-0.95, 0.02), (0.3, 1e-3), (1.5, 0.2), (0.0, 100.0)]:
        logp = fn(LEVELS, torch.tensor(mean), torch.tensor(math.log(scale)))
        assert float(logp.exp().sum()) == pytest.approx(1.0, abs=1e-9)


def test_normal_kl_matches_torch_distributions() -> None:
    m1, m2, lv1, lv2 = (torch.randn(4, 6, dtype=torch.float64) for _ in range(4))
    want = torch.distributions.kl_divergence(
        torch.distributions.Normal(m1, (0.5 * lv1).exp()), torch.distributions.Normal(m2, (0.5 * lv2).exp())
    )
    torch.testing.assert_close(normal_kl(m1, lv1, m2, lv2), want)
    assert float(normal_kl(m1, lv1, m1, lv1).abs().max()) < 1e-12


def test_logmeanexp_is_stable_and_exact() -> None:
    x = torch.tensor([[1000.0, 1000.0 + math.log(3)], [-5.0, -5.0]], dtype=torch.float64)
    torch.testing.assert_close(logmeanexp(x, 1), torch.tensor([1000 + math.log(2), -5.0], dtype=torch.float64))


def test_config_rejects_unknown_keys_and_bad_values() -> None:
    assert LikelihoodConfig.from_mapping({"iwae_k": 5}).iwae_k == 5
    with pytest.raises(GenbenchError, match="iwae_K"):
        LikelihoodConfig.from_mapping({"iwae_K": 5})
    with pytest.raises(GenbenchError, match="likelihood.timesteps"):
        LikelihoodConfig(timesteps=0)


# --- families --------------------------------------------------------------------------------
def test_gan_and_non_discretised_vae_report_no_likelihood() -> None:
    assert evaluate_likelihood(build_model("gan"), images(4)) == {"likelihood": NO_LIKELIHOOD}
    assert build_model("vae").likelihood == "discretized_logistic"  # the default has bits/dim
    r = evaluate_likelihood(build_model("vae", "model.likelihood=bernoulli"), images(4))
    assert set(r) == {"likelihood"} and "model.likelihood=discretized_logistic" in r["likelihood"]
    with pytest.raises(GenbenchError, match="uint8"):
        evaluate_likelihood(build_model("ddpm"), images(4).float())


def vae_bounds(vae, x, k: int, seed: int = 0) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        return vae.likelihood_bounds(x, LikelihoodConfig(iwae_k=k), torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("likelihood", ["discretized_logistic", "discretized_gaussian"])
def test_vae_iwae_equals_elbo_for_one_sample_and_is_never_worse(likelihood: str) -> None:
    vae = build_model("vae", f"model.likelihood={likelihood}", "model.sigma=null").eval()
    x = images(6).float() / 127.5 - 1
    one = vae_bounds(vae, x, 1)
    torch.testing.assert_close(one["iwae"], one["elbo"], rtol=0, atol=1e-9)
    many = vae_bounds(vae, x, 20)
    assert bool((many["iwae"] <= many["elbo"] + 1e-9).all())
    assert float((many["elbo"] - many["iwae"]).min()) > 0  # strictly tighter with K > 1
    # The sampled ELBO estimates the ELBO with the closed-form KL (elbo_terms) without bias.
    with torch.no_grad():
        closed = torch.stack([vae.elbo_terms(x, torch.Generator().manual_seed(s))["neg_elbo"] for s in range(50)])
    sampled = vae_bounds(vae, x, 400)["elbo"].mean()
    assert float(sampled) == pytest.approx(float(closed.mean()), rel=0.02)


def test_ddpm_vlb_terms_match_the_paper_formulas() -> None:
    ddpm = build_model("ddpm").eval()
    ab = ddpm.schedule.alpha_bar_float64
    x0 = (images(3).double() / 127.5 - 1).float()
    Normal = torch.distributions.Normal
    for t in [0, 1, 37, 99]:
        noise = torch.randn_like(x0)
        tt = torch.full((3,), t)
        got = ddpm.vlb_term(x0, tt, noise)
        # Ho et al. (2020) eqs. 4, 6, 7, 11 from alpha_bar, in float64.
        ab_t, ab_prev = ab[t], (ab[t - 1] if t > 0 else torch.tensor(1.0, dtype=torch.float64))
        beta_t = 1 - ab_t / ab_prev
        xt = ab_t.sqrt() * x0.double() + (1 - ab_t).sqrt() * noise.double()
        with torch.no_grad():
            eps = ddpm.ema.shadow(xt.float(), tt).double()
        x0_hat = ((xt - (1 - ab_t).sqrt() * eps) / ab_t.sqrt()).clamp(-1, 1)

        def mu(x_start, ab_t=ab_t, ab_prev=ab_prev, beta_t=beta_t, xt=xt):
            return (
                ab_prev.sqrt() * beta_t / (1 - ab_t) * x_start + (1 - beta_t).sqrt() * (1 - ab_prev) / (1 - ab_t) * xt
            )

        beta_tilde_1 = (1 - ab[0]) / (1 - ab[1]) * (1 - ab[1] / ab[0])
        if t == 0:  # the discretised Gaussian decoder with sigma^2 = beta_tilde_1 (clipped, as Ho et al.)
            want = -discretized_gaussian_log_likelihood(x0, mu(x0_hat), 0.5 * beta_tilde_1.log()).flatten(1).sum(1)
        else:
            sd = ((1 - ab_prev) / (1 - ab_t) * beta_t).sqrt()
            want = torch.distributions.kl_divergence(Normal(mu(x0.double()), sd), Normal(mu(x0_hat), sd))
            want = want.flatten(1).sum(1)
        torch.testing.assert_close(got.double(), want.double(), rtol=2e-3, atol=2e-3)
    prior = Normal(ab[-1].sqrt() * x0.double(), (1 - ab[-1]).sqrt())
    want_prior = torch.distributions.kl_divergence(prior, Normal(0.0, 1.0)).flatten(1).sum(1)
    torch.testing.assert_close(ddpm.vlb_prior(x0), want_prior)


def test_ddpm_vlb_over_all_timesteps_is_the_sum_of_its_terms() -> None:
    ddpm = build_model("ddpm", "model.schedule.timesteps=10", "model.schedule.kind=cosine").eval()
    T = ddpm.schedule.timesteps
    x0 = images(2).float() / 127.5 - 1
    with torch.no_grad():
        got = ddpm.likelihood_bounds(x0, LikelihoodConfig(timesteps=T), torch.Generator().manual_seed(5))["vlb"]
        g = torch.Generator().manual_seed(5)  # the documented draw order: one noise tensor per t, ascending
        want = ddpm.vlb_prior(x0).clone()
        for t in range(T):
            want += ddpm.vlb_term(x0, torch.full((2,), t), torch.randn(x0.shape, generator=g))
    torch.testing.assert_close(got, want)
    assert ddpm.likelihood_description(LikelihoodConfig(timesteps=10 * T)).endswith(f"all {T} timesteps per image")


def test_ddpm_monte_carlo_estimate_is_unbiased() -> None:
    """T * the mean of k < T sampled terms averages to the full sum (cosine schedule, T=10)."""
    ddpm = build_model("ddpm", "model.schedule.timesteps=10", "model.schedule.kind=cosine").eval()
    x0 = images(2).float() / 127.5 - 1
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        full = torch.stack([ddpm.likelihood_bounds(x0, LikelihoodConfig(timesteps=10), g)["vlb"] for _ in range(3)])
        mc = torch.stack([ddpm.likelihood_bounds(x0, LikelihoodConfig(timesteps=3), g)["vlb"] for _ in range(30)])
    se = math.sqrt(float(mc.mean(1).var()) / len(mc) + float(full.mean(1).var()) / len(full))
    assert abs(float(mc.mean() - full.mean())) < 4 * se
    assert float(mc.mean(1).std()) > float(full.mean(1).std())  # sampling t adds variance


@pytest.mark.parametrize("family", ["vae", "ddpm"])
def test_bound_decreases_during_a_short_training(family: str) -> None:
    overrides = {
        "vae": ["model.likelihood=discretized_logistic", "model.sigma=null", "model.optimizer.lr=3e-3"],
        "ddpm": ["model.ema_decay=0", "model.optimizer.lr=3e-3"],
    }[family]
    model = build_model(family, *overrides)
    train = images(64, seed=1).float() / 127.5 - 1
    test = images(16, seed=2)
    # the same seed before and after: the same z / (t, noise) draws, so the difference is the training's
    cfg = LikelihoodConfig(num_images=16, iwae_k=4, timesteps=10, batch_size=16)
    before = evaluate_likelihood(model, test, cfg, torch.Generator().manual_seed(0))
    opt = model.configure_optimizers()
    model.train()
    for step in range(30):
        batch = train[(step % 4) * 16 : (step % 4 + 1) * 16]
        loss = model.elbo_terms(batch)["loss"] if family == "vae" else model.diffusion_loss(model.net, batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if family == "ddpm":
            model.ema.update(model.net)
    after = evaluate_likelihood(model, test, cfg, torch.Generator().manual_seed(0))
    print(family, before["bpd"], after["bpd"])
    assert after["bpd"] < before["bpd"] - 0.5, (before, after)
    assert 0 < after["bpd"] < 16


@pytest.mark.parametrize(
    ("likelihood", "key"), [("discretized_logistic", "val/bpd"), ("bernoulli", "val/neg_elbo_bits")]
)
def test_vae_logs_bits_per_dim_only_for_a_discretised_likelihood(likelihood: str, key: str) -> None:
    import pytorch_lightning as pl
    from torch.utils.data import DataLoader, TensorDataset

    vae = build_model("vae", f"model.likelihood={likelihood}")
    x = images(8).float() / 127.5 - 1
    trainer = pl.Trainer(
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    logged = trainer.validate(vae, DataLoader(TensorDataset(x, torch.zeros(8)), batch_size=8), verbose=False)[0]
    assert key in logged
    other = ({"val/bpd", "val/neg_elbo_bits"} - {key}).pop()
    assert other not in logged
    dims = 32 * 32
    assert logged[key] == pytest.approx(logged["val/neg_elbo"] / (dims * math.log(2)), rel=1e-5)


def test_float32_training_loss_matches_the_float64_likelihood() -> None:
    """The VAE's loss computes the discretised likelihood in float32 for speed; the evaluation in float64."""
    from genbench.models.vae import discretized_nll

    x = images(4).float() / 127.5 - 1
    mean = (x + 0.05 * torch.randn_like(x)).clamp(-1.2, 1.2)
    for name in ("discretized_logistic", "discretized_gaussian"):
        for scale in (0.01, 0.1, 1.0):
            log_scale = torch.tensor(math.log(scale))
            exact = -discretized_logistic_log_likelihood(x, mean, log_scale)
            if name == "discretized_gaussian":
                exact = -discretized_gaussian_log_likelihood(x, mean, log_scale)
            torch.testing.assert_close(
                discretized_nll(name, mean, x, log_scale).double(), exact.flatten(1).sum(1), rtol=1e-4, atol=1e-2
            )


# --- the DDPM's probability-flow ODE bound --------------------------------------------------------
def _gaussian_eps(schedule, mu: float, s: float):
    """E[eps | x_t] for data N(mu, s^2) per dimension, at fractional timesteps: the optimal network.
    x_t ~ N(sqrt(abar) mu, abar s^2 + 1 - abar), so eps* = sqrt(1 - abar) (x_t - sqrt(abar) mu) / var."""

    def eps(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        sigma = schedule.t_to_sigma(t.double()).view(-1, *([1] * (x.ndim - 1))).to(x)
        ab = 1 / (1 + sigma**2)
        var = ab * s**2 + 1 - ab
        return (1 - ab).sqrt() * (x - ab.sqrt() * mu) / var

    return eps


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_ddpm_ode_log_likelihood_of_gaussian_data_is_the_gaussian_log_density(kind: str) -> None:
    """With the optimal eps of Gaussian data, the DDPM's probability-flow ODE carries N(0, I) to the
    data's law at t = 0, N(sqrt(abar_0) mu, abar_0 s^2 + 1 - abar_0): its log-likelihood must be that
    Gaussian's log-density (the prior's mismatch, abar_{T-1} ~ 4e-5 of the data, is below the tolerance)."""
    from genbench.flow.likelihood import ode_log_likelihood

    ddpm = build_model("ddpm", f"model.schedule.kind={kind}", "model.schedule.timesteps=1000")
    mu, s = 0.4, 0.3
    ab0 = float(ddpm.schedule.alpha_bar_float64[0])
    mean, std = math.sqrt(ab0) * mu, math.sqrt(ab0 * s**2 + 1 - ab0)
    x = mean + std * torch.randn(6, 1, 2, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    expected = torch.distributions.Normal(mean, std).log_prob(x).flatten(1).sum(1)
    eps = _gaussian_eps(ddpm.schedule, mu, s)
    for exact in (True, False):  # Hutchinson is exact here too: the Jacobian is diagonal
        got = ode_log_likelihood(lambda z, tau: ddpm.ode_velocity(eps, z, tau), x, steps=100, exact=exact)
        torch.testing.assert_close(got, expected, atol=5e-3 * 4, rtol=0)  # Heun's error, summed over 4 dims


def test_ddpm_reports_its_ode_bound_beside_the_variational_one() -> None:
    ddpm = build_model("ddpm").eval()
    x = images(8)
    on = evaluate_likelihood(ddpm, x, {"num_images": 4, "timesteps": 2, "ode_steps": 2, "ode": True, "batch_size": 4})
    off = evaluate_likelihood(ddpm, x, {"num_images": 4, "timesteps": 2, "ode_steps": 2, "batch_size": 4})
    assert on["bpd"] == on["bpd_vlb"] == off["bpd"]  # the variational bound stays the headline, unchanged
    assert math.isfinite(on["bpd_ode"]) and on["bpd_ode"] > 0 and "bpd_ode" not in off
    assert "probability-flow ODE bound (Heun 2 steps" in on["likelihood"] and "ODE" not in off["likelihood"]


@pytest.mark.parametrize("prediction", ["v", "x0"])
def test_ddpm_bounds_do_not_depend_on_how_the_prediction_is_expressed(prediction: str) -> None:
    """A v- (or x0-) network that outputs exactly what an eps-network implies is the same model: its
    variational bound and its ODE bound must equal the eps-model's, so the bounds read every
    parameterisation correctly (and the loss weighting, a training choice, changes neither)."""
    eps_model = build_model("ddpm", "model.schedule.timesteps=10", "model.schedule.kind=cosine").eval()
    other = build_model(
        "ddpm", "model.schedule.timesteps=10", "model.schedule.kind=cosine", f"model.prediction={prediction}",
        "model.loss_weighting=min_snr",
    ).eval()  # fmt: skip
    s = eps_model.schedule
    eps_net = eps_model.ema.shadow

    class Expressed(torch.nn.Module):
        def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            eps = eps_net(x, t)
            sigma = s.t_to_sigma(t.double()).view(-1, 1, 1, 1).to(x)  # fractional t: the ODE bound's
            a, b = 1 / (1 + sigma**2).sqrt(), sigma / (1 + sigma**2).sqrt()
            x0 = (x - b * eps) / a
            return x0 if prediction == "x0" else a * eps - b * x0

    other.ema.shadow = Expressed()
    x = images(2).float() / 127.5 - 1
    cfg = LikelihoodConfig(timesteps=10, ode=True, ode_steps=3)
    with torch.no_grad():
        want = eps_model.likelihood_bounds(x, cfg, torch.Generator().manual_seed(4))
        got = other.likelihood_bounds(x, cfg, torch.Generator().manual_seed(4))
    assert set(got) == {"vlb", "ode"}
    for key in got:
        torch.testing.assert_close(got[key], want[key], rtol=1e-4, atol=1e-2)
