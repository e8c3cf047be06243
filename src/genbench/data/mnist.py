"""Fashion-MNIST and MNIST, read from their original IDX files.

Fashion-MNIST is found, in order: ``root`` (if it holds the four ``*-ubyte.gz`` files), Debian's
``dataset-fashion-mnist`` package (/usr/share/datasets/fashion-mnist), torchvision's layout under
``root`` (downloaded when ``download=true`` and the network allows). Otherwise one error names
every way to get it.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import torch

from genbench import GenbenchError
from genbench.data.base import ImageDataModule

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def read_idx(path: Path) -> np.ndarray:
    """Parse an IDX file (optionally gzipped): magic (0, 0, dtype 0x08, ndim), then big-endian dims."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise GenbenchError(f"{path} is not an unsigned-byte IDX file (corrupt or wrong file).")
    ndim = data[3]
    dims = np.frombuffer(data, dtype=">u4", count=ndim, offset=4).astype(int)
    arr = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if arr.size != int(np.prod(dims)):
        raise GenbenchError(f"{path} is truncated: expected {int(np.prod(dims))} values, found {arr.size}.")
    return arr.reshape(*dims)


def _find_idx(directory: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        if (directory / name).is_file():
            return directory / name
    return None


class _IDXDataModule(ImageDataModule):
    torchvision_class = ""
    debian_dir: Path | None = None
    debian_package = ""

    def __init__(self, root: str = "data", download: bool = False, **kwargs) -> None:
        super().__init__(**kwargs)
        self.root = Path(root)
        self.download = download

    def _candidate_dirs(self) -> list[Path]:
        dirs = [self.root, self.root / self.torchvision_class / "raw"]
        if self.debian_dir is not None:
            dirs.insert(1, self.debian_dir)
        return dirs

    def _locate(self) -> Path | None:
        for d in self._candidate_dirs():
            if all(_find_idx(d, stem) for pair in _FILES.values() for stem in pair):
                return d
        return None

    def prepare_data(self) -> None:
        if self._locate() is not None:
            return
        if self.download:
            import torchvision

            cls = getattr(torchvision.datasets, self.torchvision_class)
            try:
                for train in (True, False):
                    cls(str(self.root), train=train, download=True)
            except Exception as e:  # network errors come in many types
                raise GenbenchError(self._missing_message(f"Download failed ({type(e).__name__}: {e}).")) from e
        if self._locate() is None:
            raise GenbenchError(self._missing_message())

    def _missing_message(self, extra: str = "") -> str:
        ways = [f"put the four *-ubyte.gz files in data.root={self.root}"]
        if self.debian_package:
            ways.insert(0, f"install Debian's package (apt-get install {self.debian_package}, fills {self.debian_dir})")
        ways.append(f"set data.download=true to let torchvision download it into {self.root} (needs the internet)")
        return f"{self.name} not found. {extra} Either " + "; or ".join(ways) + "."

    def load_split(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        self.prepare_data()
        d = self._locate()
        img_stem, lbl_stem = _FILES[split]
        images = torch.from_numpy(read_idx(_find_idx(d, img_stem)).copy()).unsqueeze(1)
        labels = torch.from_numpy(read_idx(_find_idx(d, lbl_stem)).astype(np.int64))
        return images, labels


class FashionMNISTDataModule(_IDXDataModule):
    name = "fashion_mnist"
    torchvision_class = "FashionMNIST"
    debian_dir = DEBIAN_FASHION_MNIST
    debian_package = "dataset-fashion-mnist"


class MNISTDataModule(_IDXDataModule):
    name = "mnist"
    torchvision_class = "MNIST"
