"""DCGAN generator and discriminator (Radford et al., 2016), sized by the image resolution.

The generator starts from a 4x4 feature map and doubles the resolution with stride-2 transposed
convolutions until it reaches ``image_size``; the discriminator mirrors it with strided convolutions.
"""

import torch
from torch import nn

from genbench.nets.validation import check_channels, check_power_of_two_size


def dcgan_init(module: nn.Module) -> None:
    """DCGAN's initialisation: conv weights N(0, 0.02), BatchNorm gamma N(1, 0.02)."""
    if isinstance(module, nn.Conv2d | nn.ConvTranspose2d):
        nn.init.normal_(module.weight, 0.0, 0.02)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


class DCGANGenerator(nn.Module):
    def __init__(self, z_dim: int = 100, channels: int = 1, image_size: int = 32, width: int = 64) -> None:
        super().__init__()
        check_channels("DCGAN generator", channels)
        n_up = check_power_of_two_size("DCGAN generator", image_size, 8) - 2  # 4x4 -> image_size
        self.z_dim = z_dim
        ch = width * 2 ** (n_up - 1)
        layers: list[nn.Module] = [
            nn.ConvTranspose2d(z_dim, ch, 4, 1, 0, bias=False),
            nn.BatchNorm2d(ch),
            nn.ReLU(True),
        ]
        for _ in range(n_up - 1):
            layers += [nn.ConvTranspose2d(ch, ch // 2, 4, 2, 1, bias=False), nn.BatchNorm2d(ch // 2), nn.ReLU(True)]
            ch //= 2
        layers += [nn.ConvTranspose2d(ch, channels, 4, 2, 1, bias=False), nn.Tanh()]
        self.net = nn.Sequential(*layers)
        self.apply(dcgan_init)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z.view(z.shape[0], self.z_dim, 1, 1))


class DCGANDiscriminator(nn.Module):
    """Returns one logit per image (no sigmoid: the losses work on logits for stability)."""

    def __init__(self, channels: int = 1, image_size: int = 32, width: int = 64) -> None:
        super().__init__()
        check_channels("DCGAN discriminator", channels)
        n_down = check_power_of_two_size("DCGAN discriminator", image_size, 8) - 2
        layers: list[nn.Module] = [nn.Conv2d(channels, width, 4, 2, 1, bias=False), nn.LeakyReLU(0.2, True)]
        ch = width
        for _ in range(n_down - 1):
            layers += [nn.Conv2d(ch, ch * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(ch * 2), nn.LeakyReLU(0.2, True)]
            ch *= 2
        layers += [nn.Conv2d(ch, 1, 4, 1, 0, bias=False)]
        self.net = nn.Sequential(*layers)
        self.apply(dcgan_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).flatten()
