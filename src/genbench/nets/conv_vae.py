"""Convolutional VAE encoder/decoder: stride-2 convolutions down to 4x4, a linear bottleneck."""

import torch
from torch import nn

from genbench.nets.validation import check_channels, check_power_of_two_size


class ConvEncoder(nn.Module):
    """Maps an image to the mean and log-variance of the diagonal Gaussian q(z|x)."""

    def __init__(self, channels: int = 1, image_size: int = 32, latent_dim: int = 32, width: int = 32) -> None:
        super().__init__()
        check_channels("VAE encoder", channels)
        n_down = check_power_of_two_size("VAE encoder", image_size, 8) - 2
        layers: list[nn.Module] = []
        ch_in, ch = channels, width
        for _ in range(n_down):
            layers += [nn.Conv2d(ch_in, ch, 4, 2, 1), nn.BatchNorm2d(ch), nn.LeakyReLU(0.2, True)]
            ch_in, ch = ch, ch * 2
        self.features = nn.Sequential(*layers, nn.Flatten())
        self.head = nn.Linear(ch_in * 16, 2 * latent_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.head(self.features(x)).chunk(2, dim=1)
        return mu, logvar


class ConvDecoder(nn.Module):
    """Maps a latent code to per-pixel likelihood parameters (logits or means), unbounded."""

    def __init__(self, channels: int = 1, image_size: int = 32, latent_dim: int = 32, width: int = 32) -> None:
        super().__init__()
        check_channels("VAE decoder", channels)
        n_up = check_power_of_two_size("VAE decoder", image_size, 8) - 2
        ch = width * 2 ** (n_up - 1)
        self.ch0 = ch
        self.fc = nn.Linear(latent_dim, ch * 16)
        layers: list[nn.Module] = []
        for _ in range(n_up - 1):
            layers += [nn.ConvTranspose2d(ch, ch // 2, 4, 2, 1), nn.BatchNorm2d(ch // 2), nn.LeakyReLU(0.2, True)]
            ch //= 2
        layers += [nn.ConvTranspose2d(ch, channels, 4, 2, 1)]
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(self.fc(z).view(z.shape[0], self.ch0, 4, 4))
