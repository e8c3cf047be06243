"""Any directory of images (searched recursively), resized to a square and loaded into memory.

Sub-directory names become labels (as in torchvision's ImageFolder) when there is more than one;
the test split is a fixed fraction held out by a seeded permutation.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from genbench import GenbenchError
from genbench.data.base import ImageDataModule

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff"}


def list_images(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def load_image_folder(root: Path, image_size: int, channels: int) -> tuple[torch.Tensor, list[Path]]:
    """Decode, center-crop to square and resize every image; returns uint8 (N, C, S, S)."""
    if not root.is_dir():
        raise GenbenchError(f"Image folder {root} does not exist: set data.root to a directory of images.")
    paths = list_images(root)
    if not paths:
        raise GenbenchError(f"No images ({', '.join(sorted(IMAGE_SUFFIXES))}) found under {root}.")
    mode = "L" if channels == 1 else "RGB"
    arrays = []
    for p in paths:
        try:
            with Image.open(p) as im:
                im = im.convert(mode)
                side = min(im.size)
                left, top = (im.width - side) // 2, (im.height - side) // 2
                im = im.crop((left, top, left + side, top + side)).resize((image_size, image_size), Image.BICUBIC)
                arrays.append(np.asarray(im, dtype=np.uint8).reshape(image_size, image_size, channels))
        except OSError as e:
            raise GenbenchError(f"Cannot read image {p}: {e}. Remove or fix the file.") from e
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous(), paths


class FolderDataModule(ImageDataModule):
    name = "folder"

    def __init__(self, root: str = "data/images", test_fraction: float = 0.1, **kwargs) -> None:
        super().__init__(**kwargs)
        self.root = Path(root)
        self.test_fraction = test_fraction
        self._cache: tuple[torch.Tensor, torch.Tensor] | None = None

    def _all(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._cache is None:
            images, paths = load_image_folder(self.root, self.image_size, self.channels)
            classes = sorted({p.parent for p in paths})
            index = {c: i for i, c in enumerate(classes)}
            labels = torch.tensor([index[p.parent] for p in paths], dtype=torch.long)
            self._cache = images, labels
        return self._cache

    def load_split(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = self._all()
        perm = torch.randperm(len(images), generator=torch.Generator().manual_seed(self.split_seed + 1))
        n_test = max(1, int(round(len(images) * self.test_fraction)))
        idx = perm[:n_test] if split == "test" else perm[n_test:]
        return images[idx], labels[idx]
