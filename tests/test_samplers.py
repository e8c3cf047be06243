"""The sampler protocol: prediction types (eps, x0, v), step() -> (x_prev, x0), NFE and determinism,
samplers by name from conf/sampler, and generic code that reaches the DDPM only through it."""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

import pytest
import torch
from torch import nn

import genbench
from genbench import CONFIG_DIR, GenbenchError, api
from genbench.diffusion import PREDICTIONS, AncestralSampler, DDIMSampler, NoiseSchedule, Sampler, to_x0_eps

#: float32's unit roundoff; the float32 comparisons below allow a few dozen of it, relative
F32 = torch.finfo(torch.float32).eps
RTOL = 1e-5  # ~80 ulp: a handful of float32 multiply-adds per step, a few steps


def _eps_model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return 0.1 * x + 1e-3 * t.float().view(-1, 1, 1, 1)


def _abar(s: NoiseSchedule, t: torch.Tensor) -> torch.Tensor:
    """float64 alpha_bar at t, shaped to broadcast over images."""
    return s.alpha_bar_float64[t].view(-1, 1, 1, 1)


# --- the prediction-type conversions, against hand maths ------------------------------------------


def test_conversions_match_hand_maths_in_float64() -> None:
    g = torch.Generator().manual_seed(0)
    x_t, out = torch.randn(3, 2, 4, 4, generator=g, dtype=torch.float64), torch.randn(3, 2, 4, 4, generator=g)
    out = out.double()
    ab = torch.tensor([0.9999, 0.5, 1e-4], dtype=torch.float64).view(-1, 1, 1, 1)
    a, b = ab.sqrt(), (1 - ab).sqrt()
    hand = {
        "eps": ((x_t - b * out) / a, out),
        "x0": (out, (x_t - a * out) / b),
        # v = a eps - b x0 with x_t = a x0 + b eps: solve the 2x2 system (a^2 + b^2 = 1)
        "v": (a * x_t - b * out, b * x_t + a * out),
    }
    assert set(hand) == set(PREDICTIONS)
    for prediction, (x0, eps) in hand.items():
        got_x0, got_eps = to_x0_eps(x_t, out, prediction, a, b)
        torch.testing.assert_close(got_x0, x0, rtol=1e-12, atol=0)
        torch.testing.assert_close(got_eps, eps, rtol=1e-12, atol=0)
        # whatever the output means, (x0, eps) describe the same x_t
        torch.testing.assert_close(a * got_x0 + b * got_eps, x_t, rtol=1e-9, atol=1e-9)
    with pytest.raises(GenbenchError, match="eps, x0 or v"):
        to_x0_eps(x_t, out, "score", a, b)


@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_targets_round_trip_through_the_schedule(prediction: str) -> None:
    """x0, eps -> x_t and the target -> to_x0_eps -> x0, eps again, in float32 with the buffers."""
    s = NoiseSchedule(100, "cosine")
    g = torch.Generator().manual_seed(1)
    x0, eps = torch.rand(4, 1, 8, 8, generator=g) * 2 - 1, torch.randn(4, 1, 8, 8, generator=g)
    t = torch.tensor([0, 20, 50, 80])  # sqrt(abar) and sqrt(1 - abar) both >= 0.03 here
    x_t = s.q_sample(x0, t, eps)
    target = s.prediction_target(x0, eps, t, prediction)
    ab = _abar(s, t)
    by_hand = {"eps": eps.double(), "x0": x0.double(), "v": ab.sqrt() * eps.double() - (1 - ab).sqrt() * x0.double()}
    torch.testing.assert_close(target.double(), by_hand[prediction], rtol=RTOL, atol=RTOL)
    got_x0, got_eps = s.to_x0_eps(x_t, t, target, prediction)
    # dividing by a coefficient c >= 0.03 scales float32 rounding of O(1) values by 1/c
    tol = 64 * F32 / 0.03
    torch.testing.assert_close(got_x0, x0, rtol=tol, atol=tol)
    torch.testing.assert_close(got_eps, eps, rtol=tol, atol=tol)


def test_eps_conversion_is_predict_x0_bit_for_bit() -> None:
    s = NoiseSchedule(1000, "linear")
    x_t, eps, t = torch.randn(4, 3, 8, 8), torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 500, 999])
    x0, same = s.to_x0_eps(x_t, t, eps, "eps")
    assert torch.equal(x0, s.predict_x0(x_t, t, eps)) and same is eps


# --- step() returns (x_prev, x0) -------------------------------------------------------------------


def test_ddim_step_returns_the_previous_sample_and_the_hand_x0() -> None:
    s = NoiseSchedule(100, "linear")
    sampler = DDIMSampler(s, steps=5, eta=0.0)
    ts = sampler.timesteps()
    sampler.prepare(ts, torch.float32, torch.device("cpu"))
    x = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(2)) * 0.3
    i, t = 1, torch.full((2,), ts[1])
    out = _eps_model(x, t)
    result = sampler.step(i, out, x, t, None)
    assert isinstance(result, tuple) and len(result) == 2
    x_prev, x0 = result
    ab, ab_prev = _abar(s, t), _abar(s, torch.full((2,), ts[2]))
    x0_hand = ((x.double() - (1 - ab).sqrt() * out.double()) / ab.sqrt()).clamp(-1, 1)
    eps_hand = (x.double() - ab.sqrt() * x0_hand) / (1 - ab).sqrt()
    prev_hand = ab_prev.sqrt() * x0_hand + (1 - ab_prev).sqrt() * eps_hand
    torch.testing.assert_close(x0.double(), x0_hand, rtol=RTOL, atol=RTOL)
    torch.testing.assert_close(x_prev.double(), prev_hand, rtol=RTOL, atol=RTOL)
    # after the last step the sample is the prediction
    last = len(ts) - 1
    x_last, x0_last = sampler.step(last, out, x, torch.zeros(2, dtype=torch.long), None)
    assert torch.equal(x_last, x0_last)


def test_ancestral_step_returns_the_posterior_sample_and_the_hand_x0() -> None:
    s = NoiseSchedule(50, "linear")
    sampler = AncestralSampler(s)
    x = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(3)) * 0.3
    t = torch.full((2,), 30)
    out = _eps_model(x, t)
    x_prev, x0 = sampler.step(50 - 1 - 30, out, x, t, torch.Generator().manual_seed(4))
    ab = _abar(s, t)
    x0_hand = ((x.double() - (1 - ab).sqrt() * out.double()) / ab.sqrt()).clamp(-1, 1)
    torch.testing.assert_close(x0.double(), x0_hand, rtol=RTOL, atol=RTOL)
    mean = s.posterior_mean(x0, x, t)
    assert not torch.allclose(x_prev, mean)  # fresh noise was added (t > 0)
    t0 = torch.zeros(2, dtype=torch.long)
    x_last, x0_last = sampler.step(50 - 1, out, x, t0, None)
    assert torch.equal(x_last, s.posterior_mean(x0_last, x, t0))  # t = 0: the mean, no noise


@pytest.mark.parametrize("sampler", [DDIMSampler(steps=6, eta=0.0), DDIMSampler(steps=6, eta=1.0), AncestralSampler()])
def test_calling_the_sampler_is_its_steps_in_a_loop(sampler: Sampler) -> None:
    """__call__ is step()'s first return value, fed back, for the visited timesteps."""
    s = NoiseSchedule(30, "cosine")
    sampler.bind(s)
    x_T = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(5))
    ran = sampler(_eps_model, x_T, torch.Generator().manual_seed(6))
    ts = sampler.timesteps()
    sampler.prepare(ts, x_T.dtype, x_T.device)
    x, g = x_T, torch.Generator().manual_seed(6)
    for i, t in enumerate(ts):
        tt = torch.full((2,), t, dtype=torch.long)
        x, _ = sampler.step(i, _eps_model(x, tt), x, tt, g)
    assert torch.equal(ran, x.clamp(-1, 1))


# --- NFE and determinism ---------------------------------------------------------------------------


def test_nfe_and_deterministic_flags() -> None:
    s = NoiseSchedule(40, "linear")
    ddim = DDIMSampler(steps=10, eta=0.0)
    assert ddim.nfe_per_step == 1 and ddim.nfe == 10 and ddim.deterministic  # known before binding
    assert not DDIMSampler(steps=10, eta=0.5).deterministic
    assert not DDIMSampler(steps=10, eta=1.0).deterministic
    ancestral = AncestralSampler(s)
    assert ancestral.nfe_per_step == 1 and ancestral.nfe == 40 and not ancestral.deterministic
    assert ancestral.describe()["nfe"] == 40 and ddim.describe()["nfe"] == 10

    class TwoEvaluations(DDIMSampler):  # a second-order solver's cost, on DDIM's steps
        nfe_per_step = 2

    assert TwoEvaluations(steps=7).nfe == 14 and TwoEvaluations(steps=7).describe()["nfe"] == 14


# --- a network's prediction type is the sampler's input, not its assumption -----------------------


def _as(prediction: str, s: NoiseSchedule):
    """``_eps_model`` re-expressed as a network that outputs ``prediction`` (same x_0 and eps)."""

    def net(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        eps = _eps_model(x, t)
        x0, _ = s.to_x0_eps(x, t, eps, "eps")
        return s.prediction_target(x0, eps, t, prediction)

    return net


@pytest.mark.parametrize("prediction", ["x0", "v"])
@pytest.mark.parametrize(
    ("make", "kind"),
    [(lambda: DDIMSampler(steps=8, eta=0.0), "linear"), (lambda: DDIMSampler(steps=8, eta=1.0), "cosine")]
    + [(lambda: AncestralSampler(), "cosine")],
)
def test_sampling_depends_on_the_prediction_not_on_how_it_is_expressed(prediction: str, make, kind: str) -> None:
    s = NoiseSchedule(40, kind)
    x_T = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(7))
    sampler = make().bind(s)
    by_eps = sampler(_eps_model, x_T, torch.Generator().manual_seed(8), prediction="eps")
    other = sampler(_as(prediction, s), x_T, torch.Generator().manual_seed(8), prediction=prediction)
    assert other.shape == by_eps.shape == x_T.shape
    # the same sample up to float32 rounding of the conversions (outputs lie in [-1, 1])
    torch.testing.assert_close(other, by_eps, rtol=RTOL, atol=RTOL)
    # ...and the prediction type really is read: the x0 network taken for an eps one gives another sample
    assert not torch.allclose(sampler(_as(prediction, s), x_T, torch.Generator().manual_seed(8)), by_eps, atol=1e-3)


def test_unknown_prediction_is_refused_before_sampling() -> None:
    with pytest.raises(GenbenchError, match="model.prediction=eps, x0 or v"):
        DDIMSampler(NoiseSchedule(10, "cosine"), steps=2)(_eps_model, torch.zeros(1, 1, 4, 4), prediction="noise")


class _ZeroNet(nn.Module):
    """Outputs zeros: as x0 that is a black image, as eps it is 'no noise at all'."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.w * x


def _ddpm(prediction: str, sampler: Sampler | None = None):
    from genbench.models.ddpm import DDPM

    return DDPM(
        net=_ZeroNet(),
        schedule=NoiseSchedule(30, "cosine"),
        sampler=sampler or DDIMSampler(steps=3),
        optimizer=lambda params: torch.optim.SGD(params, lr=0.1),
        channels=1,
        image_size=8,
        prediction=prediction,
    ).eval()


def test_the_ddpm_passes_its_prediction_type_to_the_sampler_and_trains_on_it() -> None:
    x0_model, eps_model = _ddpm("x0"), _ddpm("eps")
    assert x0_model.prediction == "x0" and x0_model.hparams.prediction == "x0"
    images = x0_model.sample(2, generator=torch.Generator().manual_seed(0))
    assert torch.equal(images, torch.zeros_like(images))  # every step's x_0 is the network's 0
    assert not torch.equal(eps_model.sample(2, generator=torch.Generator().manual_seed(0)), images)
    decoded = x0_model.decode_latents(torch.randn(2, 1, 8, 8))
    assert torch.equal(decoded, torch.zeros_like(decoded))
    # the loss target follows the prediction: a zero network's loss is E[x0^2] for x0, E[eps^2] for eps
    x0 = torch.full((64, 1, 8, 8), 0.5)
    g = torch.Generator().manual_seed(1)
    assert x0_model.diffusion_loss(x0_model.net, x0, generator=g).item() == pytest.approx(0.25, rel=1e-6)
    eps_loss = eps_model.diffusion_loss(eps_model.net, x0, generator=torch.Generator().manual_seed(1)).item()
    assert eps_loss == pytest.approx(1.0, abs=0.05)  # the mean square of 4096 standard normals
    with pytest.raises(GenbenchError, match="model.prediction"):
        _ddpm("score")


def test_the_ddpm_binds_the_samplers_it_is_handed() -> None:
    model = _ddpm("eps")
    loose = AncestralSampler()
    assert model.prepare_sampler(loose) is loose and loose.schedule is model.schedule
    assert model.deterministic_sampler() is model.sampler  # DDIM eta=0: deterministic already
    with pytest.raises(GenbenchError, match="sampler=ddim sampler.eta=0"):
        model.deterministic_sampler(DDIMSampler(steps=2, eta=0.5))


# --- samplers by name come from conf/sampler -----------------------------------------------------


def test_samplers_by_name_come_from_the_config_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert api.sampler_names() == sorted(p.stem for p in (CONFIG_DIR / "sampler").glob("*.yaml"))
    assert {"ddim", "ancestral"} <= set(api.sampler_names())
    built = api.build_sampler("ddim", steps=3)
    assert isinstance(built, DDIMSampler) and built.steps == 3 and built.eta == 0.0 and built.schedule is None
    assert api.build_sampler("ancestral", variance="beta").variance == "beta"
    # a new config file is a new name, with no code change
    conf = tmp_path / "conf"
    shutil.copytree(CONFIG_DIR / "sampler", conf / "sampler")
    (conf / "sampler" / "ddim_noisy.yaml").write_text("_target_: genbench.diffusion.DDIMSampler\nsteps: 4\neta: 1.0\n")
    monkeypatch.setattr(genbench, "CONFIG_DIR", conf)  # where genbench.registry.group_options looks
    assert "ddim_noisy" in api.sampler_names()
    noisy = api.build_sampler("ddim_noisy")
    assert noisy.steps == 4 and not noisy.deterministic
    with pytest.raises(GenbenchError, match="ancestral, ddim, ddim_noisy"):
        api.build_sampler("no_such_sampler")


# --- generic code reaches the DDPM only through the protocol --------------------------------------


def test_callbacks_do_not_import_the_diffusion_package() -> None:
    callbacks = Path(__import__("genbench.callbacks", fromlist=["_"]).__file__).parent
    for path in sorted(callbacks.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            assert not any(n.startswith("genbench.diffusion") for n in names), f"{path.name} imports {names}"
            assert not (isinstance(node, ast.Attribute) and node.attr == "schedule"), f"{path.name} reads .schedule"
