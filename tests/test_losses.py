"""Loss formulas against hand computations."""

import math

import torch

from genbench.models.gan import discriminator_loss, generator_loss
from genbench.models.vae import bernoulli_nll, gaussian_kl, gaussian_nll


def test_vae_kl_matches_hand_computation() -> None:
    mu = torch.tensor([[0.0, 1.0], [2.0, -1.0]])
    logvar = torch.tensor([[0.0, math.log(2.0)], [math.log(0.5), 0.0]])
    # KL(N(m, v) || N(0, 1)) = 0.5 * (m^2 + v - 1 - ln v), summed over dimensions
    row0 = 0.5 * (0 + 1 - 1 - 0) + 0.5 * (1 + 2 - 1 - math.log(2))
    row1 = 0.5 * (4 + 0.5 - 1 - math.log(0.5)) + 0.5 * (1 + 1 - 1 - 0)
    torch.testing.assert_close(gaussian_kl(mu, logvar), torch.tensor([row0, row1]))


def test_vae_kl_matches_torch_distributions() -> None:
    mu, logvar = torch.randn(5, 7), torch.randn(5, 7)
    q = torch.distributions.Normal(mu, (0.5 * logvar).exp())
    p = torch.distributions.Normal(torch.zeros_like(mu), torch.ones_like(mu))
    torch.testing.assert_close(gaussian_kl(mu, logvar), torch.distributions.kl_divergence(q, p).sum(1))


def test_bernoulli_nll_matches_formula() -> None:
    logits = torch.tensor([[[[0.0, 2.0]]]])
    x = torch.tensor([[[[1.0, -1.0]]]])  # targets 1 and 0
    p = torch.sigmoid(logits)
    expected = -(torch.log(p[0, 0, 0, 0]) + torch.log(1 - p[0, 0, 0, 1]))
    torch.testing.assert_close(bernoulli_nll(logits, x), expected.view(1))


def test_gaussian_nll_matches_torch_distributions() -> None:
    mean, x = torch.randn(3, 1, 4, 4), torch.randn(3, 1, 4, 4)
    log_sigma = torch.tensor(math.log(0.3))
    expected = -torch.distributions.Normal(mean, 0.3).log_prob(x).flatten(1).sum(1)
    torch.testing.assert_close(gaussian_nll(mean, x, log_sigma), expected)


def test_gan_non_saturating_losses() -> None:
    real, fake = torch.tensor([2.0, -1.0]), torch.tensor([0.5, -3.0])
    s = torch.sigmoid
    d_expected = -(torch.log(s(real)).mean() + torch.log(1 - s(fake)).mean())
    g_expected = -torch.log(s(fake)).mean()
    torch.testing.assert_close(discriminator_loss(real, fake, "non_saturating"), d_expected)
    torch.testing.assert_close(generator_loss(fake, "non_saturating"), g_expected)


def test_gan_hinge_losses() -> None:
    real, fake = torch.tensor([2.0, 0.5]), torch.tensor([-2.0, 0.25])
    # relu(1 - r): [0, 0.5] -> 0.25 ; relu(1 + f): [0, 1.25] -> 0.625
    torch.testing.assert_close(discriminator_loss(real, fake, "hinge"), torch.tensor(0.875))
    torch.testing.assert_close(generator_loss(fake, "hinge"), torch.tensor(0.875))
