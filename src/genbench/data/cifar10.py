"""CIFAR-10 through torchvision (root configurable; downloaded only when data.download=true)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from genbench import GenbenchError
from genbench.data.base import ImageDataModule


class CIFAR10DataModule(ImageDataModule):
    name = "cifar10"

    def __init__(self, root: str = "data", download: bool = False, **kwargs) -> None:
        kwargs.setdefault("channels", 3)
        super().__init__(**kwargs)
        self.root = Path(root)
        self.download = download

    def load_split(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        import torchvision

        try:
            ds = torchvision.datasets.CIFAR10(str(self.root), train=split == "train", download=self.download)
        except RuntimeError as e:  # torchvision: "Dataset not found or corrupted"
            raise GenbenchError(
                f"CIFAR-10 not found under data.root={self.root} ({e}). Put the extracted "
                "'cifar-10-batches-py' folder there, or set data.download=true (needs the internet)."
            ) from e
        except OSError as e:
            raise GenbenchError(
                f"CIFAR-10 download into {self.root} failed ({e}); fetch it elsewhere and copy "
                "'cifar-10-batches-py' into data.root."
            ) from e
        images = torch.from_numpy(np.ascontiguousarray(ds.data)).permute(0, 3, 1, 2).contiguous()
        return images, torch.as_tensor(ds.targets, dtype=torch.long)
