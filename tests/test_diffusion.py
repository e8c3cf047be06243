import math

import pytest
import torch

from genbench import GenbenchError
from genbench.diffusion import AncestralSampler, DDIMSampler, NoiseSchedule


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
