"""Convolutional VAE encoder/decoders: stride-2 convolutions down to 4x4, a linear bottleneck.

Two decoders map a latent code back to pixels: :class:`ConvDecoder` (transposed convolutions, the
default) and :class:`ResidualDecoder` (nearest-neighbour upsampling + 3x3 convolutions with
residual blocks; upsample-then-convolve cannot produce the checkerboard pattern of overlapping
transposed-convolution kernels, Odena et al., 2016). A class-conditional pair
(``conditional=True, num_classes=K``) adds a learned class embedding to the encoder's first
features and concatenates one to the decoder's latent code.
"""

from __future__ import annotations

import torch
from torch import nn

from genbench import GenbenchError
from genbench.nets.validation import check_channels, check_power_of_two_size


def class_embedding(net: str, conditional: bool, num_classes: int | None, dim: int) -> nn.Embedding | None:
    """The class embedding (``num_classes`` rows of ``dim``) of a conditional network, None for an
    unconditional one (so an unconditional network's parameters and state dict stay as they were)."""
    if not conditional:
        return None
    if num_classes is None or num_classes < 2:
        raise GenbenchError(
            f"{net}: conditional=true needs num_classes >= 2, got {num_classes}: take it from the data "
            "(model.num_classes: ${{data.num_classes}}) or set model.conditional=false."
        )
    return nn.Embedding(num_classes, dim)


def _check_labels(net: str, embedding: nn.Embedding | None, y: torch.Tensor | None) -> None:
    if (embedding is None) != (y is None):
        needs = "needs the class labels y" if embedding is not None else "is unconditional and takes no labels"
        raise GenbenchError(f"{net} {needs}: build it with conditional/num_classes matching the model's.")


class ConvEncoder(nn.Module):
    """Maps an image (and its class, when conditional) to the mean and log-variance of the diagonal
    Gaussian q(z|x[, y])."""

    def __init__(
        self,
        channels: int = 1,
        image_size: int = 32,
        latent_dim: int = 32,
        width: int = 32,
        conditional: bool = False,
        num_classes: int | None = None,
    ) -> None:
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
        # one learned bias per class and channel on the first convolution's output: the same as one-hot
        # input planes through that convolution (away from the zero-padded border), without K extra inputs
        self.label_embedding = class_embedding("VAE encoder", conditional, num_classes, width)
        self.num_classes = num_classes if conditional else None

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        _check_labels("VAE encoder", self.label_embedding, y)
        if self.label_embedding is None:
            h = self.features(x)
        else:
            h = self.features[0](x) + self.label_embedding(y)[:, :, None, None]
            h = self.features[1:](h)
        mu, logvar = self.head(h).chunk(2, dim=1)
        return mu, logvar


class LatentDecoder(nn.Module):
    """What both decoders share: a latent code (and a class embedding, when conditional) mapped by a
    linear layer to 4x4 features with ``width * 2**(stages - 1)`` channels, where ``stages`` is the
    number of resolution doublings to ``image_size``; a subclass builds ``self.net`` from there to the
    per-pixel likelihood parameters (logits or means, unbounded)."""

    def __init__(
        self,
        channels: int,
        image_size: int,
        latent_dim: int,
        width: int,
        conditional: bool,
        num_classes: int | None,
        label_dim: int,
    ) -> None:
        super().__init__()
        check_channels("VAE decoder", channels)
        self.stages = check_power_of_two_size("VAE decoder", image_size, 8) - 2
        self.ch0 = width * 2 ** (self.stages - 1)
        self.label_embedding = class_embedding("VAE decoder", conditional, num_classes, label_dim)
        self.num_classes = num_classes if conditional else None
        self.fc = nn.Linear(latent_dim + (label_dim if conditional else 0), self.ch0 * 16)
        self.net: nn.Module = nn.Identity()

    def code(self, z: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        """The 4x4 features the upsampling stack starts from: fc(z), or fc([z, embedding(y)])."""
        _check_labels("VAE decoder", self.label_embedding, y)
        if self.label_embedding is not None:
            z = torch.cat([z, self.label_embedding(y).to(z.dtype)], dim=1)
        return self.fc(z).view(z.shape[0], self.ch0, 4, 4)

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return self.net(self.code(z, y))


class ConvDecoder(LatentDecoder):
    """The default decoder: stride-2 transposed convolutions from 4x4 up to the image, halving the
    channels at each stage (BatchNorm + LeakyReLU between them)."""

    def __init__(
        self,
        channels: int = 1,
        image_size: int = 32,
        latent_dim: int = 32,
        width: int = 32,
        conditional: bool = False,
        num_classes: int | None = None,
        label_dim: int = 16,
    ) -> None:
        super().__init__(channels, image_size, latent_dim, width, conditional, num_classes, label_dim)
        ch = self.ch0
        layers: list[nn.Module] = []
        for _ in range(self.stages - 1):
            layers += [nn.ConvTranspose2d(ch, ch // 2, 4, 2, 1), nn.BatchNorm2d(ch // 2), nn.LeakyReLU(0.2, True)]
            ch //= 2
        layers += [nn.ConvTranspose2d(ch, channels, 4, 2, 1)]
        self.net = nn.Sequential(*layers)


class ResidualBlock(nn.Module):
    """x + conv(act(norm(conv(act(norm(x)))))): a pre-activation residual block (He et al., 2016)
    that keeps the channel count and the resolution."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.BatchNorm2d(ch),
            nn.LeakyReLU(0.2),
            nn.Conv2d(ch, ch, 3, 1, 1),
            nn.BatchNorm2d(ch),
            nn.LeakyReLU(0.2),
            nn.Conv2d(ch, ch, 3, 1, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class ResidualDecoder(LatentDecoder):
    """A decoder of upsample + convolution stages with residual blocks, in place of transposed
    convolutions: from 4x4, each stage doubles the resolution (nearest neighbour) and a 3x3
    convolution halves the channels (never below ``width``), followed by ``blocks`` residual blocks;
    a 3x3 convolution maps the last features to the pixel parameters. Same inputs and outputs as
    :class:`ConvDecoder`, and its ``width``: the 4x4 features have ``width * 2**(stages - 1)`` channels."""

    def __init__(
        self,
        channels: int = 1,
        image_size: int = 32,
        latent_dim: int = 32,
        width: int = 32,
        blocks: int = 1,
        conditional: bool = False,
        num_classes: int | None = None,
        label_dim: int = 16,
    ) -> None:
        if isinstance(blocks, bool) or not isinstance(blocks, int) or blocks < 0:
            raise GenbenchError(
                f"VAE residual decoder: blocks is the number of residual blocks per resolution, an integer >= 0; "
                f"got {blocks!r}. Set model.decoder.blocks to e.g. 1."
            )
        super().__init__(channels, image_size, latent_dim, width, conditional, num_classes, label_dim)
        ch = self.ch0
        layers: list[nn.Module] = []
        for _ in range(self.stages):
            out = max(width, ch // 2)
            layers += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(ch, out, 3, 1, 1)]
            layers += [ResidualBlock(out) for _ in range(blocks)]
            ch = out
        layers += [nn.BatchNorm2d(ch), nn.LeakyReLU(0.2), nn.Conv2d(ch, channels, 3, 1, 1)]
        self.net = nn.Sequential(*layers)
