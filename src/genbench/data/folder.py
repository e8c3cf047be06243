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


def load_image_folder(
    root: str | Path, image_size: int | None = None, channels: int | None = None
) -> tuple[torch.Tensor, list[Path]]:
    """Decode every image under ``root`` (recursive, sorted); returns uint8 (N, C, H, W) and the paths.

    With ``image_size`` each image is center-cropped to a square and resized (training data);
    without it images keep their size, which must then be the same for all (a folder of
    generated samples to evaluate). ``channels`` 1 or 3 converts; None keeps grayscale files
    grayscale and makes everything else RGB. The one image-folder reader of genbench, used by
    ``data=folder`` and by ``genbench-eval input1=<folder>``."""
    root = Path(root)
    if not root.is_dir():
        raise GenbenchError(f"Image folder {root} does not exist: set data.root (or input1/input2) to a directory.")
    paths = list_images(root)
    if not paths:
        raise GenbenchError(f"No images ({', '.join(sorted(IMAGE_SUFFIXES))}) found under {root}.")
    arrays = []
    for p in paths:
        try:
            with Image.open(p) as im:
                mode = {1: "L", 3: "RGB"}.get(channels or 0) or ("L" if im.mode in ("1", "L", "I", "I;16") else "RGB")
                im = im.convert(mode)
                if image_size is not None:
                    side = min(im.size)
                    left, top = (im.width - side) // 2, (im.height - side) // 2
                    im = im.crop((left, top, left + side, top + side)).resize((image_size, image_size), Image.BICUBIC)
                arr = np.asarray(im, dtype=np.uint8)
        except OSError as e:
            raise GenbenchError(f"Cannot read image {p}: {e}. Remove or fix the file.") from e
        arrays.append(arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1))
    shapes = sorted({a.shape for a in arrays})
    if len(shapes) > 1:
        raise GenbenchError(
            f"Images under {root} have different shapes {shapes[:3]}...: resize them first (or use data=folder "
            "data.image_size=N, which crops and resizes)."
        )
    return torch.from_numpy(np.stack(arrays)).contiguous(), paths


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
