import itertools
import math
import operator

import pytest
import torch

from genbench import GenbenchError
from genbench.diffusion import AncestralSampler, DDIMSampler, NoiseSchedule
from genbench.diffusion.schedule import linear_betas


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_alpha_bar_monotone_with_right_endpoints(kind: str) -> None:
    s = NoiseSchedule(1000, kind)
    ab = s.alpha_bar.double()
    assert (ab[1:] < ab[:-1]).all()
    assert ab[0] > 0.999 and ab[-1] < 1e-3
    if kind == "linear":
        assert math.isclose(float(s.betas[0]), 1e-4, rel_tol=1e-5)
        assert math.isclose(float(s.betas[-1]), 0.02, rel_tol=1e-5)
        # alpha_bar is the running product of (1 - beta)
        assert math.isclose(
            float(ab[-1]), float(torch.prod(1 - torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64))), rel_tol=1e-4
        )


def test_q_sample_matches_closed_form() -> None:
    s = NoiseSchedule(1000, "linear")
    x0, noise = torch.randn(4, 1, 8, 8), torch.randn(4, 1, 8, 8)
    t = torch.tensor([0, 10, 500, 999])
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    ab = torch.cumprod(1 - betas, 0)[t].float().view(-1, 1, 1, 1)
    expected = ab.sqrt() * x0 + (1 - ab).sqrt() * noise
    # float32 buffers against a float64 reference: agreement to float32 rounding
    torch.testing.assert_close(s.q_sample(x0, t, noise), expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(s.predict_x0(expected, t, noise), x0, rtol=1e-3, atol=1e-3)


def test_posterior_mean_of_true_x0_is_consistent() -> None:
    # mu_tilde(x0, x_t) is the mean of q(x_{t-1}|x_t, x_0): check the formula of Ho et al. eq. 7
    s = NoiseSchedule(100, "linear")
    x0, xt, t = torch.randn(2, 1, 4, 4), torch.randn(2, 1, 4, 4), torch.tensor([5, 50])
    b, ab, abp = s.betas[t], s.alpha_bar[t], s.alpha_bar_prev[t]
    c0 = (abp.sqrt() * b / (1 - ab)).view(-1, 1, 1, 1)
    ct = ((1 - b).sqrt() * (1 - abp) / (1 - ab)).view(-1, 1, 1, 1)
    # float32 coefficients vs the buffers' float64-then-cast ones: equal to float32 rounding
    torch.testing.assert_close(s.posterior_mean(x0, xt, t), c0 * x0 + ct * xt, rtol=1e-4, atol=1e-5)


def _eps_model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return 0.1 * x + 1e-3 * t.float().view(-1, 1, 1, 1)


def test_ancestral_sampler_deterministic_given_x_t_and_noise() -> None:
    s = NoiseSchedule(50, "linear")
    sampler = AncestralSampler(s)
    x_T = torch.randn(3, 1, 8, 8)
    a = sampler(_eps_model, x_T, torch.Generator().manual_seed(7))
    b = sampler(_eps_model, x_T, torch.Generator().manual_seed(7))
    c = sampler(_eps_model, x_T, torch.Generator().manual_seed(8))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.allclose(a, c)  # the fixed noise really is what made them equal
    assert sampler.num_steps == 50


def test_ddim_eta0_deterministic_given_x_t() -> None:
    s = NoiseSchedule(100, "cosine")
    sampler = DDIMSampler(s, steps=10, eta=0.0)
    x_T = torch.randn(3, 1, 8, 8)
    a = sampler(_eps_model, x_T, torch.Generator().manual_seed(1))
    b = sampler(_eps_model, x_T, torch.Generator().manual_seed(2))  # no noise is drawn at eta=0
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert sampler.timesteps()[0] == 99 and sampler.timesteps()[-1] == 0 and sampler.num_steps == 10
    noisy = DDIMSampler(s, steps=10, eta=1.0)
    assert not torch.allclose(
        noisy(_eps_model, x_T, torch.Generator().manual_seed(1)),
        noisy(_eps_model, x_T, torch.Generator().manual_seed(2)),
    )


def test_ddim_recovers_x0_with_perfect_noise_prediction() -> None:
    # If eps_model returns the true noise, one DDIM step from any t lands exactly on x0.
    s = NoiseSchedule(1000, "linear")
    x0 = torch.rand(2, 1, 4, 4) * 1.6 - 0.8
    noise = torch.randn_like(x0)
    t = torch.full((2,), 999)
    xt = s.q_sample(x0, t, noise)
    sampler = DDIMSampler(s, steps=1)
    out = sampler(lambda x, tt: noise, xt)
    torch.testing.assert_close(out, x0, rtol=1e-3, atol=1e-3)


def test_bad_sampler_settings() -> None:
    with pytest.raises(GenbenchError, match="steps"):
        DDIMSampler(NoiseSchedule(10), steps=20).timesteps()
    with pytest.raises(GenbenchError, match="variance"):
        AncestralSampler(variance="big")
    with pytest.raises(GenbenchError, match="schedule"):
        NoiseSchedule(10, "quadratic")


# --- the linear schedule keeps its endpoints for any T -------------------------------------------


@pytest.mark.parametrize("T", [21, 50, 100, 250, 1000, 4000])
def test_linear_alpha_bar_reaches_noise_for_any_t(T: int) -> None:
    # Independent reference: improved-diffusion's "linear" (betas for T=1000, scaled by 1000/T).
    scale = 1000 / T
    expected = math.prod(1 - (1e-4 * scale + (0.02 - 1e-4) * scale * i / (T - 1)) for i in range(T))
    ab_T = float(NoiseSchedule(T, "linear").alpha_bar_float64[-1])
    assert math.isclose(ab_T, expected, rel_tol=1e-9)
    assert ab_T < 1e-4  # x_T really is (nearly) the N(0, I) the samplers start from


def test_linear_betas_unchanged_at_t1000() -> None:
    betas = linear_betas(1000)
    torch.testing.assert_close(betas, torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64), rtol=0, atol=0)


def test_linear_betas_never_reach_one() -> None:
    # 0.02 * 1000/20 = 1: the image would be erased in one step.
    with pytest.raises(GenbenchError, match=r"timesteps>=21"):
        NoiseSchedule(20, "linear")
    assert float(linear_betas(21).max()) < 1
    # A scaled beta just below 1 is capped like the cosine schedule's.
    assert float(linear_betas(1000, 1e-4, 0.9995).max()) == 0.999
    with pytest.raises(GenbenchError, match="at least one step"):
        NoiseSchedule(0)


# --- DDIM coefficients in float64 -----------------------------------------------------------------


def _cosine_alpha_bar_f64(T: int) -> torch.Tensor:
    """Independent float64 cosine alpha_bar (Nichol & Dhariwal), betas clipped at 0.999."""
    f = [math.cos((t / T + 0.008) / 1.008 * math.pi / 2) ** 2 for t in range(T + 1)]
    betas = [min(1 - f[t + 1] / f[t], 0.999) for t in range(T)]
    return torch.tensor(list(itertools.accumulate((1 - b for b in betas), operator.mul)), dtype=torch.float64)


def test_ddim_first_step_coefficients_in_float64() -> None:
    sampler = DDIMSampler(NoiseSchedule(1000, "cosine"), steps=10, eta=1.0)
    assert sampler.timesteps()[:2] == [999, 888]
    ab = _cosine_alpha_bar_f64(1000)
    ab_t, ab_prev = float(ab[999]), float(ab[888])
    sigma2 = (1 - ab_prev) / (1 - ab_t) * (1 - ab_t / ab_prev)
    direction = math.sqrt(1 - ab_prev - sigma2)
    coefs = sampler.coefficients()
    assert 2e-4 < direction < 4e-4  # small but far from zero
    assert math.isclose(float(coefs["dir"][0]), direction, rel_tol=1e-6)
    assert math.isclose(float(coefs["sigma"][0]), math.sqrt(sigma2), rel_tol=1e-9)
    assert math.isclose(float(coefs["sqrt_ab_prev"][0]), math.sqrt(ab_prev), rel_tol=1e-9)
    # after the last step x_prev is x_0: no direction, no noise
    assert float(coefs["dir"][-1]) == 0 and float(coefs["sigma"][-1]) == 0


def _ddim_previous_formula(s: NoiseSchedule, steps: int, eta: float, x_T: torch.Tensor, generator=None):
    """DDIM as it was computed before (float32 buffers at run time), the reference for eta=0."""
    ts = DDIMSampler(s, steps=steps).timesteps()
    x = x_T
    for i, t in enumerate(ts):
        tt = torch.full((x.shape[0],), t, dtype=torch.long)
        eps = _eps_model(x, tt)
        x0 = s.predict_x0(x, tt, eps).clamp(-1, 1)
        if i == len(ts) - 1:
            x = x0
            break
        ab_t, ab_prev = s.alpha_bar[t], s.alpha_bar[ts[i + 1]]
        eps = (x - ab_t.sqrt() * x0) / (1 - ab_t).sqrt()
        sigma = eta * torch.sqrt((1 - ab_prev) / (1 - ab_t) * (1 - ab_t / ab_prev))
        x = ab_prev.sqrt() * x0 + torch.sqrt((1 - ab_prev - sigma**2).clamp(min=0)) * eps
        if eta > 0:
            x = x + sigma * torch.randn(x.shape, generator=generator)
    return x.clamp(-1, 1)


@pytest.mark.parametrize(
    ("kind", "T", "steps", "eta"), [("cosine", 100, 10, 0.0), ("linear", 1000, 20, 0.0), ("linear", 100, 7, 1.0)]
)
def test_ddim_matches_previous_formula(kind: str, T: int, steps: int, eta: float) -> None:
    s = NoiseSchedule(T, kind)
    x_T = torch.randn(3, 1, 8, 8)
    new = DDIMSampler(s, steps=steps, eta=eta)(_eps_model, x_T, torch.Generator().manual_seed(3))
    old = _ddim_previous_formula(s, steps, eta, x_T, torch.Generator().manual_seed(3))
    torch.testing.assert_close(new, old, rtol=1e-5, atol=1e-5)


# --- labels and descriptions ---------------------------------------------------------------------


def test_sampler_label_and_describe() -> None:
    s = NoiseSchedule(100, "cosine")
    ddim = DDIMSampler(s, steps=10, eta=0.5)
    assert ddim.label == "ddim-10"
    assert ddim.describe() == {"name": "ddim", "steps": 10, "nfe": 10, "eta": 0.5}
    assert DDIMSampler(steps=50).label == "ddim-50"  # known before it is bound
    ancestral = AncestralSampler(s, variance="beta")
    assert ancestral.label == "ancestral-100"
    assert ancestral.describe() == {"name": "ancestral", "steps": 100, "nfe": 100, "variance": "beta"}
    with pytest.raises(GenbenchError, match="bind"):
        _ = AncestralSampler().label  # its step count is the schedule's T
