"""Class-conditional DDPM and flow matching: the UNet's class embedding, label dropout, classifier-free
guidance (the formula, one batched network call, the sampler option and its override), the
conditional likelihood's log K correction, and one tiny conditional training run end to end."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import FAST, compose_train, tiny
from genbench import GenbenchError
from genbench.config import build as build_config
from genbench.diffusion import DDIMSampler
from genbench.distributions import LikelihoodConfig
from genbench.flow import AdaptiveSolver, EulerSolver
from genbench.metrics.likelihood import evaluate_likelihood, fixed_subset
from genbench.nets.unet import UNet
from genbench.schema import problems

FAMILIES = ("ddpm", "flow_matching")


def build(family: str, *overrides: str):
    """A tiny model of ``family`` (synthetic data: 4 classes) from its real config."""
    return build_config(compose_train([*FAST, *tiny(family), *overrides]).model, family)


class CountingNet(torch.nn.Module):
    """The UNet, recording the batch size of every call: how many network calls sampling makes."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net, self.calls = net, []

    def forward(self, x, t, y=None):
        self.calls.append(x.shape[0])
        return self.net(x, t, y)


# --- the network ---------------------------------------------------------------------------------


def test_unet_class_embedding_has_a_null_row_and_an_unconditional_unet_refuses_classes() -> None:
    net = UNet(1, 16, 8, (1, 2), 1, (8,), num_classes=3).eval()
    assert net.class_emb.num_embeddings == 4 and net.null_class == 3
    x, t = torch.randn(4, 1, 16, 16), torch.tensor([0, 5, 50, 500])
    null = torch.full((4,), 3)
    assert torch.equal(net(x, t), net(x, t, null))  # y=None is the null class
    # the class changes the output only through the embedding added to the time embedding
    assert not torch.allclose(net(x, t, torch.tensor([0, 1, 2, 0])), net(x, t, null))
    plain = UNet(1, 16, 8, (1, 2), 1, (8,))
    assert plain.class_emb is None and plain.num_classes is None
    with pytest.raises(GenbenchError, match="unconditional") as err:
        plain(x, t, null)
    assert "\n" not in str(err.value)


# --- label dropout -------------------------------------------------------------------------------


def test_label_dropout_rate_and_stream() -> None:
    model = build("ddpm", "model.conditional=true", "model.label_dropout=0.3")
    labels = torch.arange(40_000) % 4
    torch.manual_seed(11)
    dropped = model.drop_labels(labels)
    nulls = dropped == model.null_class
    # binomial: mean 0.3, sd sqrt(0.3 * 0.7 / n) = 0.0023; 4 sd
    assert abs(nulls.float().mean().item() - 0.3) < 4 * math.sqrt(0.3 * 0.7 / len(labels))
    assert torch.equal(dropped[~nulls], labels[~nulls])  # the others keep their class
    # the draw is one uniform per example from the global stream (restored on resume)
    torch.manual_seed(11)
    assert torch.equal(nulls, torch.rand(len(labels)) < 0.3)
    # an unconditional model draws nothing: its training noise stream is unchanged
    plain = build("ddpm")
    state = torch.get_rng_state()
    assert plain.drop_labels(labels) is None and torch.equal(state, torch.get_rng_state())


@pytest.mark.parametrize("family", FAMILIES)
def test_label_dropout_one_trains_exactly_the_unconditional_branch(family: str) -> None:
    model = build(family, "model.conditional=true", "model.label_dropout=1.0")
    x, y = torch.rand(6, 1, 32, 32) * 2 - 1, torch.tensor([0, 1, 2, 3, 0, 1])
    torch.manual_seed(5)
    loss = model.training_step((x, y), 0)["loss"]
    torch.manual_seed(5)
    torch.rand(6)  # the dropout draw comes first
    unconditional = model.regression_loss(model.net, x, labels=torch.full((6,), model.null_class))
    assert torch.equal(loss, unconditional)
    loss.backward()
    grad = model.net.class_emb.weight.grad
    assert grad[: model.num_classes].abs().max() == 0 and grad[model.null_class].abs().max() > 0


# --- guidance ------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_guidance_formula_and_one_batched_call(family: str) -> None:
    model = build(family, "model.conditional=true")
    net = CountingNet(model.net).eval()
    x, t = torch.randn(3, 1, 32, 32), torch.tensor([10.0, 200.0, 700.0])
    y, null = torch.tensor([0, 2, 3]), torch.full((3,), model.null_class)
    with torch.no_grad():
        cond, uncond = model.net(x, t, y), model.net(x, t, null)
        assert torch.equal(model.network(net, y, 0.0)(x, t), cond)  # w = 0: exactly the conditional model
        guided = model.network(net, y, 1.0)(x, t)
        assert net.calls == [3, 6]  # the guided call: both branches in one batch of 2n
        torch.testing.assert_close(guided, 2 * cond - uncond, rtol=1e-4, atol=1e-5)
        both = model.net(torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, null]))
        torch.testing.assert_close(model.network(net, y, 2.5)(x, t), 3.5 * both[:3] - 2.5 * both[3:])
        # the batched call equals two separate calls (up to float reassociation across batch sizes)
        torch.testing.assert_close(both[:3], cond, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(both[3:], uncond, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_guidance_is_a_sampler_option_that_sample_overrides(family: str) -> None:
    model = build(family, "model.conditional=true")
    sampler = model.sampler
    sampler.guidance = 2.0
    counting = CountingNet(model.ema.shadow)
    model.ema.shadow = counting
    g = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    by_option = model.sample(2, generator=g(), labels=[0, 3])
    # one call per network evaluation, each on both branches: the NFE counts sequential calls
    assert counting.calls == [4] * sampler.nfe and sampler.label == f"{sampler.name}-{sampler.nfe}-w2"
    assert sampler.describe()["guidance"] == 2.0
    counting.calls.clear()
    assert torch.equal(model.sample(2, generator=g(), labels=[0, 3], guidance=2), by_option)
    unguided = model.sample(2, generator=g(), labels=[0, 3], guidance=0)
    assert counting.calls[-1] == 2 and not torch.equal(unguided, by_option)
    sampler.guidance = 0.0
    assert torch.equal(model.sample(2, generator=g(), labels=[0, 3]), unguided)
    assert sampler.label == f"{sampler.name}-{sampler.nfe}" and "guidance" not in sampler.describe()


@pytest.mark.parametrize("family", FAMILIES)
def test_an_unconditional_model_refuses_classes_and_guidance_in_one_line(family: str) -> None:
    model = build(family)
    for kwargs in ({"labels": 1}, {"guidance": 1.0}):
        with pytest.raises(GenbenchError, match="unconditional") as err:
            model.sample(2, **kwargs)
        assert "\n" not in str(err.value)
    # a guided sampler config on an unconditional model fails the same way
    model.sampler.guidance = 3.0
    with pytest.raises(GenbenchError, match="unconditional"):
        model.sample(2)


def test_guidance_and_label_dropout_are_checked() -> None:
    with pytest.raises(GenbenchError, match="guidance"):
        DDIMSampler(steps=4, guidance=-1)
    with pytest.raises(GenbenchError, match="guidance"):
        EulerSolver(steps=4, guidance=float("nan"))
    assert AdaptiveSolver(guidance=1.5).label == "dopri5-tol0.001-w1.5"
    cfg = compose_train([*FAST, *tiny("ddpm"), "model.label_dropout=1.5", "model.sampler.guidance=-2"])
    found = problems(cfg)
    assert any("model.label_dropout" in p for p in found) and any("model.sampler.guidance" in p for p in found)
    with pytest.raises(GenbenchError, match="label_dropout"):
        build("flow_matching", "model.conditional=true", "model.label_dropout=2")


# --- likelihood ----------------------------------------------------------------------------------


def test_conditional_likelihood_is_of_the_true_classes_plus_log_k() -> None:
    model = build("ddpm", "model.conditional=true").eval()
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (6, 1, 32, 32), generator=gen, dtype=torch.uint8)
    labels = torch.tensor([0, 1, 2, 3, 0, 1])
    cfg = LikelihoodConfig(num_images=6, batch_size=6, timesteps=2)
    result = evaluate_likelihood(model, images, cfg, torch.Generator().manual_seed(7), labels=labels)
    # by hand: the model's bound on -log p(x|y) at the true classes, then + log K, in bits/dim
    index = fixed_subset(6, 6)
    x = images[index].float() / 127.5 - 1
    with torch.no_grad():
        nats = model.likelihood_bounds(x, cfg, torch.Generator().manual_seed(7), labels=labels[index])["vlb"]
        other = model.likelihood_bounds(x, cfg, torch.Generator().manual_seed(7), labels=(labels[index] + 1) % 4)
    dims = 32 * 32
    want = ((nats.double() + math.log(4)) / (dims * math.log(2))).mean().item()
    assert result["bpd"] == pytest.approx(want, rel=1e-12)
    assert result["bpd"] - nats.double().mean().item() / (dims * math.log(2)) == pytest.approx(
        math.log(4) / (dims * math.log(2)), rel=1e-9
    )
    assert not torch.allclose(other["vlb"], nats)  # the classes are used
    assert "log 4" in result["likelihood"]
    with pytest.raises(GenbenchError, match="classes"):
        evaluate_likelihood(model, images, cfg)  # a conditional model needs the labels
    with pytest.raises(GenbenchError, match="classes"):
        model.likelihood_bounds(x, cfg)


# --- end to end ----------------------------------------------------------------------------------


def test_conditional_flow_trains_reloads_and_samples_a_class(train_cfg, tmp_path) -> None:
    from genbench.models import load_model_from_checkpoint
    from genbench.train import train

    # six steps and a validation pass (the classes reach both); no sample grids: sampling is tested above
    metrics = train(train_cfg("model=flow_matching", "model.conditional=true", "callbacks.sample_grid=null"))
    assert math.isfinite(metrics["train/loss"])
    model = load_model_from_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt")
    assert model.num_classes == 4 and model.ema.shadow.num_classes == 4 and model.label_dropout == 0.1
    images = model.sample(3, generator=torch.Generator().manual_seed(0), labels=2, guidance=1.0)
    assert images.shape == (3, 1, 32, 32) and images.abs().max() <= 1
