"""A small deterministic dataset of generated shapes, for tests and smoke runs.

Four classes (square, disc, horizontal bar, vertical bar) at random positions, sizes and
intensities on a dark background, generated in one vectorised pass from a seeded generator: the
same seed gives the same pixels on every machine, and the labels make it learnable by the
in-domain feature extractor.
"""

from __future__ import annotations

import torch

from genbench.data.base import ImageDataModule

NUM_CLASSES = 4


def make_shapes(n: int, image_size: int, channels: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    s = image_size
    labels = torch.randint(0, NUM_CLASSES, (n,), generator=g)
    centre = torch.rand(n, 2, generator=g) * 0.5 + 0.25  # keep shapes inside the frame
    radius = torch.rand(n, generator=g) * 0.15 + 0.12
    colour = torch.rand(n, channels, generator=g) * 0.6 + 0.4
    coords = (torch.arange(s, dtype=torch.float32) + 0.5) / s
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    dy = (yy[None] - centre[:, 0, None, None]).abs()
    dx = (xx[None] - centre[:, 1, None, None]).abs()
    r = radius[:, None, None]
    masks = torch.stack(
        [
            (dx <= r) & (dy <= r),  # square
            dx**2 + dy**2 <= r**2,  # disc
            (dx <= 1.6 * r) & (dy <= 0.45 * r),  # horizontal bar
            (dx <= 0.45 * r) & (dy <= 1.6 * r),  # vertical bar
        ],
        dim=1,
    )
    mask = masks[torch.arange(n), labels].float()
    noise = torch.rand(n, channels, s, s, generator=g) * 0.08
    images = mask[:, None] * colour[:, :, None, None] + noise
    return (images.clamp(0, 1) * 255).round().to(torch.uint8), labels


class SyntheticDataModule(ImageDataModule):
    name = "synthetic"

    def __init__(self, num_train: int = 512, num_test: int = 256, seed: int = 0, **kwargs) -> None:
        super().__init__(**kwargs)
        self.num_train = num_train
        self.num_test = num_test
        self.seed = seed

    def load_split(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        if split == "test":
            return make_shapes(self.num_test, self.image_size, self.channels, self.seed + 10_007)
        return make_shapes(self.num_train, self.image_size, self.channels, self.seed)
