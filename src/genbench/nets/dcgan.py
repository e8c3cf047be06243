"""DCGAN generator and discriminator (Radford et al., 2016), sized by the image resolution.

The generator starts from a 4x4 feature map and doubles the resolution with stride-2 transposed
convolutions until it reaches ``image_size``; the discriminator mirrors it with strided convolutions.

Options on top of the plain DCGAN (all off by default, which builds exactly the original nets):

- ``DCGANDiscriminator(spectral_norm=True)``: every weight of D divided by its largest singular
  value (Miyato et al. 2018, via ``torch.nn.utils.parametrizations.spectral_norm``, one power
  iteration per training forward), which bounds D's Lipschitz constant and keeps its gradients
  informative; D's BatchNorms are then dropped, as in SNGAN, because batch statistics would
  undo the per-layer bound and couple the real and fake batches.
- class conditioning (``num_classes=K``; None, the default, is unconditional): the generator's BatchNorms become
  conditional BatchNorms (a per-class gain and bias, de Vries et al. 2017; Miyato & Koyama 2018)
  and the discriminator becomes a projection discriminator (Miyato & Koyama 2018),
  D(x, y) = psi(phi(x)) + <embed(y), phi(x)>, where phi(x) is the last feature map (flattened)
  and psi the final 4x4 convolution (a linear map of that feature map).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm as _spectral_norm

from genbench import GenbenchError
from genbench.nets.validation import check_channels, check_power_of_two_size


def dcgan_init(module: nn.Module) -> None:
    """DCGAN's initialisation: conv weights N(0, 0.02), BatchNorm gamma N(1, 0.02)."""
    if isinstance(module, nn.Conv2d | nn.ConvTranspose2d):
        nn.init.normal_(module.weight, 0.0, 0.02)
    elif isinstance(module, nn.BatchNorm2d) and module.affine:
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


def class_count(net: str, num_classes: int | None) -> int | None:
    """The class count a conditional net is built for (None: unconditional)."""
    if num_classes is None:
        return None
    if int(num_classes) < 2:
        raise GenbenchError(
            f"{net}: a conditional net needs num_classes >= 2, got {num_classes}: use labelled data "
            "(data.num_classes) or set model.conditional=false."
        )
    return int(num_classes)


def check_labels(net: str, num_classes: int | None, labels: torch.Tensor | None, n: int) -> None:
    """A conditional net needs one class per image; an unconditional one takes none."""
    if num_classes is None:
        if labels is not None:
            raise GenbenchError(f"{net} is unconditional: it takes no labels (build it with num_classes=K).")
        return
    if labels is None or labels.shape != (n,):
        shape = None if labels is None else tuple(labels.shape)
        raise GenbenchError(f"{net} is class-conditional: pass labels=, one class per image ({n}), got {shape}.")


class ConditionalBatchNorm2d(nn.Module):
    """BatchNorm without its own affine part, followed by a gain and a bias looked up per class:
    y = gamma[c] * BN(x) + beta[c]. The gains start at N(1, 0.02) and the biases at 0 (DCGAN's
    BatchNorm initialisation for every class), so at initialisation it behaves like a BatchNorm."""

    def __init__(self, num_features: int, num_classes: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(num_features, affine=False)
        self.gain = nn.Embedding(num_classes, num_features)
        self.bias = nn.Embedding(num_classes, num_features)
        nn.init.normal_(self.gain.weight, 1.0, 0.02)
        nn.init.zeros_(self.bias.weight)

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.bn(x) * self.gain(labels)[:, :, None, None] + self.bias(labels)[:, :, None, None]


class DCGANGenerator(nn.Module):
    """z (N, z_dim) -> images (N, channels, image_size, image_size) in [-1, 1]; a conditional
    generator also takes ``labels`` (N,) and modulates every BatchNorm by the class."""

    def __init__(
        self,
        z_dim: int = 100,
        channels: int = 1,
        image_size: int = 32,
        width: int = 64,
        num_classes: int | None = None,
    ) -> None:
        super().__init__()
        check_channels("DCGAN generator", channels)
        n_up = check_power_of_two_size("DCGAN generator", image_size, 8) - 2  # 4x4 -> image_size
        self.z_dim = z_dim
        self.num_classes = class_count("DCGAN generator", num_classes)
        ch = width * 2 ** (n_up - 1)
        layers: list[nn.Module] = [
            nn.ConvTranspose2d(z_dim, ch, 4, 1, 0, bias=False),
            self._norm(ch),
            nn.ReLU(True),
        ]
        for _ in range(n_up - 1):
            layers += [nn.ConvTranspose2d(ch, ch // 2, 4, 2, 1, bias=False), self._norm(ch // 2), nn.ReLU(True)]
            ch //= 2
        layers += [nn.ConvTranspose2d(ch, channels, 4, 2, 1, bias=False), nn.Tanh()]
        self.net = nn.Sequential(*layers)
        self.apply(dcgan_init)

    def _norm(self, ch: int) -> nn.Module:
        return nn.BatchNorm2d(ch) if self.num_classes is None else ConditionalBatchNorm2d(ch, self.num_classes)

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        check_labels("This DCGAN generator", self.num_classes, labels, z.shape[0])
        x = z.view(z.shape[0], self.z_dim, 1, 1)
        if self.num_classes is None:
            return self.net(x)
        for layer in self.net:
            x = layer(x, labels) if isinstance(layer, ConditionalBatchNorm2d) else layer(x)
        return x


class DCGANDiscriminator(nn.Module):
    """Returns one logit per image (no sigmoid: the losses work on logits for stability).

    ``spectral_norm``: spectrally normalised weights and no BatchNorm (SNGAN). A conditional
    discriminator is a projection discriminator and takes ``labels`` (N,)."""

    def __init__(
        self,
        channels: int = 1,
        image_size: int = 32,
        width: int = 64,
        spectral_norm: bool = False,
        num_classes: int | None = None,
    ) -> None:
        super().__init__()
        check_channels("DCGAN discriminator", channels)
        n_down = check_power_of_two_size("DCGAN discriminator", image_size, 8) - 2
        self.num_classes = class_count("DCGAN discriminator", num_classes)
        self.spectral_norm = bool(spectral_norm)
        layers: list[nn.Module] = [nn.Conv2d(channels, width, 4, 2, 1, bias=False), nn.LeakyReLU(0.2, True)]
        ch = width
        for _ in range(n_down - 1):
            norm: list[nn.Module] = [] if self.spectral_norm else [nn.BatchNorm2d(ch * 2)]
            layers += [nn.Conv2d(ch, ch * 2, 4, 2, 1, bias=False), *norm, nn.LeakyReLU(0.2, True)]
            ch *= 2
        layers += [nn.Conv2d(ch, 1, 4, 1, 0, bias=False)]  # psi: a linear map of the last 4x4 feature map
        self.net = nn.Sequential(*layers)
        self.apply(dcgan_init)
        if self.num_classes is not None:
            # one vector per class in the space of phi(x) (ch x 4 x 4, flattened)
            self.embed = nn.Embedding(self.num_classes, ch * 16)
            nn.init.normal_(self.embed.weight, 0.0, 0.02)
        if self.spectral_norm:  # after the initialisation: it reparametrises the weights it finds
            for module in self.modules():
                if isinstance(module, nn.Conv2d | nn.Embedding):
                    _spectral_norm(module)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """phi(x): the last feature map (N, C, 4, 4), before the final convolution."""
        for layer in self.net[:-1]:
            x = layer(x)
        return x

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        check_labels("This DCGAN discriminator", self.num_classes, labels, x.shape[0])
        h = self.features(x)
        logits = self.net[-1](h).flatten()
        if self.num_classes is not None:
            logits = logits + (self.embed(labels) * h.flatten(1)).sum(1)
        return logits
