"""The DDPM's fast ODE solvers against diffusers' schedulers of the same name, step for step on the
same betas and the same network; min-SNR-gamma loss weights against a hand computation; and the
schedule's fractional-timestep view (sigma <-> t) that the solvers and the ODE likelihood share."""

from __future__ import annotations

import math

import pytest
import torch

from genbench import GenbenchError
from genbench.diffusion import DDIMSampler, DPMSolverSampler, EDMHeunSampler, NoiseSchedule
from genbench.nets.unet import UNet

diffusers = pytest.importorskip("diffusers", reason="the parity tests compare against diffusers (pip install '.[dev]')")

#: the network is a real (tiny, random) UNet: the solvers see outputs with structure, not a formula
T = 1000
PRED_NAMES = {"eps": "epsilon", "v": "v_prediction", "x0": "sample"}


@pytest.fixture(scope="module")
def net() -> UNet:
    torch.manual_seed(0)
    model = UNet(channels=1, image_size=8, base_channels=8, channel_mults=[1, 2], num_res_blocks=1, attn_resolutions=[])
    return model.eval()


@pytest.fixture(scope="module")
def schedule() -> NoiseSchedule:
    return NoiseSchedule(T, "linear")


def _noise() -> torch.Tensor:
    return torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(1))


def _ours_step_by_step(sampler, net, x_T, prediction):
    """Every (t, model input, x_prev, x0) of our sampler, through its own generic loop's steps."""
    ts = sampler.timesteps()
    sampler.prepare(ts, x_T.dtype, x_T.device)
    x, out = x_T, []
    with torch.no_grad():
        for i, t in enumerate(ts):
            tt = torch.full((x.shape[0],), t, dtype=torch.long if isinstance(t, int) else x.dtype)
            x_in = x
            x, x0 = sampler.step(i, net(x, tt), x, tt, None, prediction)
            out.append((t, x_in, x, x0))
    return out


@pytest.mark.parametrize("spacing", ["linspace", "leading", "trailing"])
@pytest.mark.parametrize("prediction,clip", [("eps", True), ("eps", False), ("v", True), ("x0", False)])
def test_dpm_solver_2m_matches_diffusers_step_for_step(
    net, schedule, spacing: str, prediction: str, clip: bool
) -> None:
    from diffusers import DPMSolverMultistepScheduler

    ref = DPMSolverMultistepScheduler(
        num_train_timesteps=T,
        trained_betas=schedule.betas.double().numpy(),
        prediction_type=PRED_NAMES[prediction],
        algorithm_type="dpmsolver++",
        solver_order=2,
        solver_type="midpoint",
        lower_order_final=True,
        final_sigmas_type="zero",
        thresholding=clip,
        sample_max_value=1.0,  # dynamic thresholding clamped to 1: plain clipping of x0
        timestep_spacing=spacing,
    )
    ref.alphas_cumprod = schedule.alpha_bar_float64.clone()  # the same schedule, not a float32 cumprod of it
    ref.set_timesteps(10)
    ours = DPMSolverSampler(schedule, steps=10, spacing=spacing, clip_x0=clip)
    steps = _ours_step_by_step(ours, net, _noise(), prediction)
    assert [s[0] for s in steps] == ref.timesteps.tolist()
    x = _noise()
    with torch.no_grad():
        for (_, x_in, x_prev, _), t_ref in zip(steps, ref.timesteps, strict=True):
            torch.testing.assert_close(x_in, x, rtol=1e-4, atol=1e-5)  # the same state at every step
            out = net(x, torch.full((3,), int(t_ref)))
            x = ref.step(out, t_ref, x).prev_sample
            torch.testing.assert_close(x_prev, x, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "karras,spacing", [(True, "linspace"), (False, "linspace"), (False, "leading"), (False, "trailing")]
)
@pytest.mark.parametrize("prediction,clip", [("eps", True), ("eps", False), ("v", False)])
def test_edm_heun_matches_diffusers_evaluation_for_evaluation(
    net, schedule, karras: bool, spacing: str, prediction: str, clip: bool
) -> None:
    """diffusers keeps x_t / sqrt(abar) as its state and scales the network's input; ours keeps the
    network's input x_t itself. Both see the same network inputs at the same (fractional) timesteps
    and end on the same sample."""
    from diffusers import HeunDiscreteScheduler

    ref = HeunDiscreteScheduler(
        num_train_timesteps=T,
        trained_betas=schedule.betas.double().numpy(),
        prediction_type=PRED_NAMES[prediction],
        use_karras_sigmas=karras,
        timestep_spacing=spacing,
        clip_sample=clip,
    )
    ref.alphas_cumprod = schedule.alpha_bar_float64.clone()  # the same schedule, not a float32 cumprod of it
    ref.set_timesteps(5)
    ours = EDMHeunSampler(schedule, steps=5, karras=karras, spacing=spacing, clip_x0=clip)
    assert ours.nfe == len(ref.timesteps) == 9
    steps = _ours_step_by_step(ours, net, _noise(), prediction)
    torch.testing.assert_close(
        torch.tensor([s[0] for s in steps], dtype=torch.float64), ref.timesteps.double(), rtol=1e-6, atol=0
    )
    x = _noise() * math.sqrt(1 + float(ref.sigmas[0]) ** 2)  # the same start in diffusers' coordinates
    with torch.no_grad():
        for (_, x_in, _, x0), t_ref in zip(steps, ref.timesteps, strict=True):
            sigma = float(ref.sigmas[ref.step_index or 0])
            ref_in = ref.scale_model_input(x, t_ref)
            torch.testing.assert_close(x_in, ref_in, rtol=1e-4, atol=1e-5)
            result = ref.step(net(ref_in, torch.full((3,), float(t_ref))), t_ref, x)
            # x0 = x_t * sqrt(1 + sigma^2) - sigma * eps: input differences grow by sqrt(1 + sigma^2)
            scale = math.sqrt(1 + sigma**2)
            torch.testing.assert_close(x0, result.pred_original_sample, rtol=1e-4, atol=1e-5 * scale)
            x = result.prev_sample
    torch.testing.assert_close(steps[-1][2], x, rtol=1e-4, atol=1e-5)  # the final sample


def test_solvers_run_through_the_generic_loop_and_are_deterministic(net, schedule) -> None:
    for sampler in (DPMSolverSampler(schedule, steps=6), EDMHeunSampler(schedule, steps=4)):
        a, b = sampler(net, _noise()), sampler(net, _noise())
        assert sampler.deterministic and torch.equal(a, b)
        assert a.shape == (3, 1, 8, 8) and a.abs().max() <= 1
        steps = _ours_step_by_step(sampler, net, _noise(), "eps")
        torch.testing.assert_close(a, steps[-1][2].clamp(-1, 1), rtol=0, atol=0)
    assert DPMSolverSampler(schedule, steps=10).label == "dpmpp_2m-10"
    assert EDMHeunSampler(schedule, steps=6).label == "edm_heun-11"


def test_first_order_dpm_solver_is_ddim_on_the_same_timesteps(net, schedule) -> None:
    """DPM-Solver++ of order 1 is DDIM with eta=0 written in log-SNR time (Lu et al., 2022, sec. 4.1):
    the same update, so on the same timesteps (with x0 clipped in both) the same sample."""
    dpm = DPMSolverSampler(schedule, steps=8, order=1, spacing="trailing")
    ts = dpm.timesteps()
    ddim = DDIMSampler(schedule, steps=8)
    ddim.timesteps = lambda: ts + [0]  # DDIM lands on t=0 and takes x0 there; DPM goes to sigma=0 from ts[-1]
    a = dpm(net, _noise())
    # DDIM's step from ts[-1] to t=0 then one more evaluation; compare instead the state at ts[-1]
    sa, sb = _ours_step_by_step(dpm, net, _noise(), "eps"), _ours_step_by_step(ddim, net, _noise(), "eps")
    for (ta, xa, _, _), (tb, xb, _, _) in zip(sa, sb[:-1], strict=True):
        assert ta == tb
        torch.testing.assert_close(xa, xb, rtol=1e-5, atol=1e-6)
    assert a.shape == (3, 1, 8, 8)


def test_bad_solver_options_are_one_line_errors(schedule) -> None:
    with pytest.raises(GenbenchError, match="spacing=linspace, leading or trailing"):
        DPMSolverSampler(schedule, spacing="uniform")
    with pytest.raises(GenbenchError, match="order=1 or 2"):
        DPMSolverSampler(schedule, order=3)
    with pytest.raises(GenbenchError, match="steps >= 1"):
        EDMHeunSampler(schedule, steps=0)
    with pytest.raises(GenbenchError, match="timesteps repeat"):
        DPMSolverSampler(NoiseSchedule(30), steps=30, spacing="leading").timesteps()


# --- the schedule at fractional timesteps ---------------------------------------------------------


def test_sigma_and_t_are_inverse_and_exact_at_whole_timesteps(schedule) -> None:
    whole = torch.arange(T, dtype=torch.float64)
    torch.testing.assert_close(schedule.t_to_sigma(whole), schedule.sigmas_float64, rtol=1e-12, atol=0)
    torch.testing.assert_close(schedule.sigma_to_t(schedule.sigmas_float64), whole, rtol=0, atol=1e-9)
    frac = torch.tensor([0.25, 17.5, 500.125, 998.9])
    torch.testing.assert_close(schedule.sigma_to_t(schedule.t_to_sigma(frac)), frac.double(), rtol=0, atol=1e-9)
    # log sigma is linear between whole timesteps: the midpoint is the geometric mean
    mid = schedule.t_to_sigma(torch.tensor([10.5]))
    torch.testing.assert_close(mid, (schedule.sigmas_float64[10] * schedule.sigmas_float64[11]).sqrt().view(1))
    # and sigma_to_t is diffusers' _sigma_to_t
    from diffusers import HeunDiscreteScheduler

    ref = HeunDiscreteScheduler(num_train_timesteps=T, trained_betas=schedule.betas.double().numpy())
    sig = torch.tensor([0.005, 0.3, 2.0, 80.0, 500.0], dtype=torch.float64)
    log_sigmas = schedule.sigmas_float64.log().numpy()
    expected = torch.tensor([float(ref._sigma_to_t(s.numpy(), log_sigmas)) for s in sig], dtype=torch.float64)
    torch.testing.assert_close(schedule.sigma_to_t(sig), expected, rtol=1e-9, atol=1e-9)


# --- min-SNR-gamma --------------------------------------------------------------------------------


@pytest.mark.parametrize("prediction", ["eps", "v", "x0"])
def test_min_snr_weights_by_hand(schedule, prediction: str) -> None:
    """Hang et al. (2023): the x0 error weighted by min(SNR, gamma). An eps error is SNR times the
    x0 error and a v error SNR + 1 times it, so their weights divide by those."""
    t = torch.tensor([0, 10, 100, 400, 999])
    gamma = 5.0
    ab = [float(schedule.alpha_bar[i]) for i in t]
    hand = []
    for a in ab:
        snr = a / (1 - a)
        hand.append({"eps": min(snr, gamma) / snr, "v": min(snr, gamma) / (snr + 1), "x0": min(snr, gamma)}[prediction])
    got = schedule.loss_weights(t, prediction, "min_snr", gamma)
    torch.testing.assert_close(got, torch.tensor(hand), rtol=1e-6, atol=0)
    assert torch.equal(schedule.loss_weights(t, prediction, "uniform"), torch.ones(5))
    with pytest.raises(GenbenchError, match="uniform or min_snr"):
        schedule.loss_weights(t, prediction, "p2")


def test_min_snr_weighted_ddpm_loss_is_the_hand_weighted_mean(schedule) -> None:
    """The DDPM's training loss with min-SNR weights equals the weighted per-example MSE computed by
    hand from the same draws (a generator fixes t and the noise)."""
    from genbench.models.ddpm import DDPM

    torch.manual_seed(0)
    net = UNet(channels=1, image_size=8, base_channels=8, channel_mults=[1, 2], num_res_blocks=1, attn_resolutions=[])
    model = DDPM(net, schedule, DDIMSampler(steps=4), optimizer=None, channels=1, image_size=8,
                 loss_weighting="min_snr", min_snr_gamma=5.0)  # fmt: skip
    x0 = torch.rand(6, 1, 8, 8) * 2 - 1
    got = model.diffusion_loss(net, x0, torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)
    t = torch.randint(0, T, (6,), generator=g)
    noise = torch.randn(x0.shape, generator=g)
    ab = schedule.alpha_bar_float64[t].view(-1, 1, 1, 1)
    x_t = (ab.sqrt() * x0 + (1 - ab).sqrt() * noise).float()
    with torch.no_grad():
        err = (net(x_t, t) - noise).pow(2).flatten(1).mean(1).double()
    snr = (ab / (1 - ab)).flatten()
    hand = (snr.clamp(max=5.0) / snr * err).mean()
    torch.testing.assert_close(got.double(), hand, rtol=1e-5, atol=0)
    uniform = DDPM(net, schedule, DDIMSampler(steps=4), optimizer=None, channels=1, image_size=8)
    assert not torch.allclose(uniform.diffusion_loss(net, x0, torch.Generator().manual_seed(3)), got)
    with pytest.raises(GenbenchError, match="uniform or min_snr"):
        DDPM(net, schedule, DDIMSampler(steps=4), optimizer=None, channels=1, image_size=8, loss_weighting="snr")
