"""Flow matching: the path, the time distribution and the ODE solvers against closed forms, the
training objective against a hand computation, and the family end to end on tiny data."""

from __future__ import annotations

import math

import pytest
import torch

from genbench.errors import GenbenchError
from genbench.flow import AdaptiveSolver, CondOTPath, EulerSolver, HeunSolver, TimeSampler


def test_path_runs_from_noise_to_data_with_constant_velocity() -> None:
    x1, x0 = torch.randn(4, 1, 8, 8), torch.randn(4, 1, 8, 8)
    path = CondOTPath()
    for t_value in (0.0, 0.3, 1.0):
        t = torch.full((4,), t_value)
        x_t, u = path.sample(x1, x0, t)
        torch.testing.assert_close(x_t, t_value * x1 + (1 - t_value) * x0)
        torch.testing.assert_close(u, x1 - x0)
        # the endpoint a velocity points at: the data itself when the velocity is the path's
        torch.testing.assert_close(path.x1_from_velocity(x_t, t, u), x1, atol=1e-6, rtol=0)


def test_time_samplers_draw_the_stated_distributions() -> None:
    g = torch.Generator().manual_seed(0)
    n = 20_000
    uniform = TimeSampler("uniform")(n, torch.device("cpu"), g)
    assert uniform.min() > 0 and uniform.max() < 1
    assert abs(uniform.mean().item() - 0.5) < 4 * (1 / math.sqrt(12 * n))  # 4 standard errors
    t = TimeSampler("logit_normal", mean=0.5, std=0.7)(n, torch.device("cpu"), g)
    logit = torch.log(t / (1 - t))
    assert abs(logit.mean().item() - 0.5) < 4 * 0.7 / math.sqrt(n)
    assert abs(logit.std().item() - 0.7) < 4 * 0.7 / math.sqrt(2 * n)
    with pytest.raises(GenbenchError, match="model.time_sampling"):
        TimeSampler("beta")


def _growth(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """dx/dt = x: x(1) = e x(0)."""
    return x


@pytest.mark.parametrize(("solver_cls", "order"), [(EulerSolver, 1), (HeunSolver, 2)])
def test_fixed_step_solvers_converge_at_their_order(solver_cls, order: int) -> None:
    x0 = torch.ones(1, 1, 1, 1, dtype=torch.float64)
    errors = [abs(solver_cls(steps=n)(_growth, x0).item() - math.e) for n in (8, 16, 32)]
    for coarse, fine in zip(errors, errors[1:], strict=False):
        assert fine / coarse == pytest.approx(2.0**-order, rel=0.1), errors
    solver = solver_cls(steps=8)
    assert solver.nfe == 8 * order and solver.deterministic and solver.label == f"{solver.name}-{8 * order}"


def test_euler_step_returns_the_next_state_and_the_predicted_data() -> None:
    x = torch.randn(3, 1, 4, 4)
    v = torch.randn(3, 1, 4, 4)
    x_next, x1 = EulerSolver(steps=4).step(lambda _x, _t: v, x, 0.25, 0.25)
    torch.testing.assert_close(x_next, x + 0.25 * v)
    torch.testing.assert_close(x1, x + 0.75 * v)


def test_adaptive_solver_meets_its_tolerance_and_counts_its_evaluations() -> None:
    x0 = torch.ones(1, 1, 1, 1, dtype=torch.float64)
    calls = []

    def counted(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        return x

    solver = AdaptiveSolver(rtol=1e-7, atol=1e-7)
    assert solver.nfe is None  # known only after a call
    assert abs(solver(counted, x0).item() - math.e) < 1e-6
    assert solver.nfe == len(calls) and (solver.nfe - 1) % 6 == 0 and solver.num_steps >= 1
    loose = AdaptiveSolver(rtol=1e-2, atol=1e-2)
    loose(_growth, x0)
    assert loose.nfe < solver.nfe  # a looser tolerance costs fewer evaluations
    with pytest.raises(GenbenchError, match="max_steps"):
        AdaptiveSolver(rtol=1e-12, atol=1e-12, max_steps=3)(_growth, x0)


def test_solvers_transport_noise_to_gaussian_data_with_the_exact_velocity() -> None:
    """For data N(mu, s^2) per pixel and noise N(0, 1), the marginal velocity of the linear path is
    analytic, and its flow maps x0 to mu + s x0 (the monotone transport). Every solver must land
    there, to within its order."""
    mu, s = 0.4, 0.3

    def velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        t = t.reshape(-1, 1, 1, 1)
        var = t**2 * s**2 + (1 - t) ** 2
        return mu + (x - t * mu) * (t * s**2 - (1 - t)) / var

    x0 = torch.randn(16, 1, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    exact = mu + s * x0

    def error(solver) -> float:
        return (solver(velocity, x0) - exact).abs().max().item()

    # each solver converges to the transport map at its order (halving / quartering per doubling)
    euler = [error(EulerSolver(steps=n)) for n in (200, 400)]
    heun = [error(HeunSolver(steps=n)) for n in (50, 100)]
    assert euler[1] / euler[0] == pytest.approx(0.5, rel=0.05) and euler[1] < 1e-2, euler
    assert heun[1] / heun[0] == pytest.approx(0.25, rel=0.1) and heun[1] < 2e-4, heun
    assert error(AdaptiveSolver(rtol=1e-6, atol=1e-6)) < 1e-5


def test_flow_loss_equals_the_hand_computation(train_cfg) -> None:
    from hydra.utils import instantiate

    model = instantiate(train_cfg("model=flow_matching").model)
    x1 = torch.rand(5, 1, 32, 32) * 2 - 1
    loss = model.flow_loss(model.net, x1, generator=torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)
    t = torch.sigmoid(torch.randn(5, generator=g))  # logit-normal(0, 1), drawn first
    x0 = torch.randn(x1.shape, generator=g)
    tt = t.reshape(-1, 1, 1, 1)
    expected = ((model.net(tt * x1 + (1 - tt) * x0, t * 1000.0) - (x1 - x0)) ** 2).mean()
    torch.testing.assert_close(loss, expected)


def test_flow_family_trains_samples_and_decodes_deterministically(train_cfg, tmp_path) -> None:
    from genbench.train import train

    cfg = train_cfg("model=flow_matching", "callbacks.progress_bar=null")
    metrics = train(cfg)
    assert metrics["family"] == "flow_matching" and math.isfinite(metrics["train/loss"])
    from genbench.models import load_model_from_checkpoint

    model = load_model_from_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt")
    images = model.sample(6, generator=torch.Generator().manual_seed(0))
    assert images.shape == (6, 1, 32, 32) and images.min() >= -1 and images.max() <= 1
    again = model.sample(6, generator=torch.Generator().manual_seed(0))
    assert torch.equal(images, again)
    z = torch.randn(2, *model.latent_shape, generator=torch.Generator().manual_seed(1))
    heun = model.decode_latents(z, sampler=HeunSolver(steps=3))
    assert torch.equal(heun, model.decode_latents(z, sampler=HeunSolver(steps=3)))
    from genbench.diffusion import DDIMSampler

    with pytest.raises(GenbenchError, match="cannot sample a flow"):
        model.sample(2, sampler=DDIMSampler(steps=3))


def _gaussian_velocity(mu: float, s: float):
    """The exact marginal velocity of the linear path for data N(mu, s^2) per dimension."""

    def velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        t = t.reshape(-1, *([1] * (x.ndim - 1)))
        var = t**2 * s**2 + (1 - t) ** 2
        return mu + (x - t * mu) * (t * s**2 - (1 - t)) / var

    return velocity


@pytest.mark.parametrize("exact", [True, False])
def test_ode_log_likelihood_of_gaussian_data_is_the_gaussian_log_density(exact: bool) -> None:
    """With the analytic velocity of Gaussian data, the ODE's log-likelihood must be the data
    Gaussian's log-density: exact divergence, and Hutchinson's (exact here: the Jacobian is diagonal)."""
    from genbench.flow.likelihood import ode_log_likelihood

    mu, s = 0.4, 0.3
    x1 = mu + s * torch.randn(6, 1, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    expected = torch.distributions.Normal(mu, s).log_prob(x1).flatten(1).sum(1)
    got = ode_log_likelihood(_gaussian_velocity(mu, s), x1, steps=200, exact=exact)
    torch.testing.assert_close(got, expected, atol=2e-3 * 16, rtol=0)  # Heun's error, summed over 16 dims


def test_hutchinson_divergence_is_unbiased_for_a_full_jacobian() -> None:
    """v = A x: div v = tr(A) exactly; one Rademacher probe per image estimates it without bias."""
    from genbench.flow.likelihood import divergence

    g = torch.Generator().manual_seed(0)
    a = torch.randn(8, 8, dtype=torch.float64, generator=g)

    def linear(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return (x.flatten(1) @ a.T).reshape(x.shape)

    x = torch.randn(4000, 1, 2, 4, dtype=torch.float64, generator=g)
    _, exact = divergence(linear, x[:3], torch.zeros(3), None)
    torch.testing.assert_close(exact, torch.full((3,), a.trace().item(), dtype=torch.float64))
    probe = (2 * torch.randint(0, 2, x.shape, generator=g) - 1).double()
    _, estimate = divergence(linear, x, torch.zeros(len(x)), probe)
    se = estimate.std() / len(x) ** 0.5
    assert abs(estimate.mean() - a.trace()) < 4 * se, (estimate.mean(), a.trace(), se)


def test_dequantised_bound_of_a_uniform_density_is_eight_bits() -> None:
    """A density uniform over [-1 - 1/255, 1 + 1/255]^D gives every 8-bit level probability 1/256:
    the bound is exactly 8 bits/dim."""
    import math

    from genbench.flow.likelihood import dequantised_nll

    x = (torch.randint(0, 256, (5, 1, 4, 4)).double() / 127.5) - 1
    width = 2 + 2 / 255
    nll = dequantised_nll(lambda y: torch.full((y.shape[0],), -16 * math.log(width), dtype=torch.float64), x)
    torch.testing.assert_close(nll / (16 * math.log(2)), torch.full((5,), 8.0, dtype=torch.float64))


def test_flow_family_reports_its_ode_bound_in_bits_per_dim(train_cfg) -> None:
    from hydra.utils import instantiate

    from genbench.metrics.likelihood import evaluate_likelihood

    model = instantiate(train_cfg("model=flow_matching").model)
    images = torch.randint(0, 256, (8, 1, 32, 32), dtype=torch.uint8)
    result = evaluate_likelihood(model, images, {"num_images": 8, "ode_steps": 2, "batch_size": 8})
    assert result["likelihood"].startswith("dequantised ODE bound") and "Heun 2 steps" in result["likelihood"]
    assert result["bpd"] == result["bpd_ode"] and math.isfinite(result["bpd"]) and result["bpd"] > 0
    assert result["likelihood_images"] == 8
