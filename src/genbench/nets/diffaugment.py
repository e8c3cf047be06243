"""DiffAugment (Zhao et al., "Differentiable Augmentation for Data-Efficient GAN Training", 2020).

A GAN's discriminator overfits a small or briefly seen dataset: it memorises the real images and
its feedback to the generator stops being informative. Augmenting only the real images would
teach the generator to produce augmented images; DiffAugment instead applies the *same policy* of
random, differentiable transforms to every image the discriminator sees, real and fake, in both
the discriminator's and the generator's step, so the generator's gradient passes through the
augmentation to its own output. The transforms follow the authors' reference implementation
(mit-han-lab/data-efficient-gans, ``DiffAugment_pytorch.py``):

- ``color``: brightness (add U(-0.5, 0.5)), saturation (scale the deviation from the per-pixel
  channel mean by U(0, 2)) and contrast (scale the deviation from the image mean by U(0.5, 1.5)).
  A 1-channel image has no saturation (its channel mean is the pixel itself), so for grayscale
  data ``color`` is brightness and contrast only;
- ``translation``: shift by up to 1/8 of the image size in each direction, zero-filled;
- ``cutout``: zero a square of half the image size at a random centre (clipped at the borders).

Each image draws its own parameters; the policy (which transforms) is the same for every image.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from genbench.errors import GenbenchError

#: the transforms a policy may name, in the order they are applied
POLICIES = ("color", "translation", "cutout")
TRANSLATION_RATIO = 0.125
CUTOUT_RATIO = 0.5


def parse_policy(policy: str | Sequence[str] | None) -> tuple[str, ...]:
    """``"color,translation"`` or ``["color", "translation"]`` -> ("color", "translation"), in the
    canonical order; "", [] or None -> ()."""
    items = (policy or "").split(",") if policy is None or isinstance(policy, str) else list(policy)
    if not all(isinstance(p, str) for p in items):
        raise GenbenchError(f"DiffAugment policy {policy!r}: use names such as color,translation,cutout.")
    names = [p.strip() for p in items if p.strip()]
    unknown = [p for p in names if p not in POLICIES]
    if unknown:
        raise GenbenchError(
            f"DiffAugment policy {policy!r}: unknown transform(s) {', '.join(unknown)}; use a comma-separated "
            f'subset of {",".join(POLICIES)} (e.g. "color,translation,cutout"), or "" for none.'
        )
    return tuple(p for p in POLICIES if p in names)


def _uniform(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """One U(0, 1) draw per image, shaped to broadcast over (C, H, W)."""
    u = torch.rand(x.shape[0], 1, 1, 1, generator=generator, device=_device(x, generator))
    return u.to(device=x.device, dtype=x.dtype)


def _randint(lo: int, hi: int, n: int, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """n integers in [lo, hi), shaped (n, 1, 1), on x's device."""
    r = torch.randint(lo, hi, (n, 1, 1), generator=generator, device=_device(x, generator))
    return r.to(x.device)


def _device(x: torch.Tensor, generator: torch.Generator | None) -> torch.device:
    return generator.device if generator is not None else x.device


def brightness(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    return x + (_uniform(x, generator) - 0.5)


def saturation(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    mean = x.mean(dim=1, keepdim=True)
    return (x - mean) * (_uniform(x, generator) * 2) + mean


def contrast(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * (_uniform(x, generator) + 0.5) + mean


def color(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Brightness, saturation (colour images only: it is the identity on one channel), contrast."""
    x = brightness(x, generator)
    if x.shape[1] > 1:
        x = saturation(x, generator)
    return contrast(x, generator)


def translate(x: torch.Tensor, shift_h: torch.Tensor, shift_w: torch.Tensor) -> torch.Tensor:
    """Shift image i by (shift_h[i], shift_w[i]) pixels (down/right positive), filling with zeros.

    Built from a gather of a zero-padded copy (as the reference implementation does), so the
    gradient reaches every input pixel that stays in view."""
    n, _, h, w = x.shape
    rows = torch.arange(h, device=x.device).view(1, h, 1) - shift_h.view(n, 1, 1)
    cols = torch.arange(w, device=x.device).view(1, 1, w) - shift_w.view(n, 1, 1)
    # index into the padded image: out-of-view positions land on the zero border
    rows = (rows + 1).clamp(0, h + 1)
    cols = (cols + 1).clamp(0, w + 1)
    padded = F.pad(x, [1, 1, 1, 1]).permute(0, 2, 3, 1)  # N, H+2, W+2, C
    batch = torch.arange(n, device=x.device).view(n, 1, 1)
    return padded[batch, rows, cols].permute(0, 3, 1, 2)


def translation(
    x: torch.Tensor, generator: torch.Generator | None = None, ratio: float = TRANSLATION_RATIO
) -> torch.Tensor:
    """Shift each image by a random whole number of pixels in [-r, r] per axis, r = ratio * size."""
    n, _, h, w = x.shape
    rh, rw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    return translate(x, _randint(-rh, rh + 1, n, x, generator), _randint(-rw, rw + 1, n, x, generator))


def cutout_mask(
    n: int, h: int, w: int, centre_h: torch.Tensor, centre_w: torch.Tensor, size: tuple[int, int]
) -> torch.Tensor:
    """(n, 1, h, w) mask: 0 inside a size[0] x size[1] box whose top-left is centre - size // 2
    (clipped to the image), 1 elsewhere."""
    device = centre_h.device
    rows = torch.arange(h, device=device).view(1, h, 1) - (centre_h.view(n, 1, 1) - size[0] // 2)
    cols = torch.arange(w, device=device).view(1, 1, w) - (centre_w.view(n, 1, 1) - size[1] // 2)
    inside = (rows >= 0) & (rows < size[0]) & (cols >= 0) & (cols < size[1])
    return (~inside).unsqueeze(1)


def cutout(x: torch.Tensor, generator: torch.Generator | None = None, ratio: float = CUTOUT_RATIO) -> torch.Tensor:
    """Zero a (ratio * H) x (ratio * W) box per image, its centre uniform over the image (so the
    box is clipped at the borders, as in the reference implementation)."""
    n, _, h, w = x.shape
    size = (int(h * ratio + 0.5), int(w * ratio + 0.5))
    centre_h = _randint(0, h + (1 - size[0] % 2), n, x, generator)
    centre_w = _randint(0, w + (1 - size[1] % 2), n, x, generator)
    return x * cutout_mask(n, h, w, centre_h, centre_w, size).to(x.dtype)


TRANSFORMS: dict[str, Callable[[torch.Tensor, torch.Generator | None], torch.Tensor]] = {
    "color": color,
    "translation": translation,
    "cutout": cutout,
}


class DiffAugment(nn.Module):
    """Apply ``policy`` (e.g. ``"color,translation,cutout"`` or a list of those names; "" is the
    identity) to a batch
    (N, C, H, W). Random draws come from ``generator`` when given, else from torch's global
    stream (which genbench's checkpoints carry, so a resumed run draws the same augmentations).
    It has no parameters and behaves the same in train and eval mode: the caller decides when to
    augment (only the discriminator's inputs during training)."""

    def __init__(self, policy: str | Sequence[str] | None = "") -> None:
        super().__init__()
        self.policy = parse_policy(policy)

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        for name in self.policy:
            x = TRANSFORMS[name](x, generator)
        return x

    def extra_repr(self) -> str:
        return f"policy={','.join(self.policy) or 'none'}"
