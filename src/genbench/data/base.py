"""The shared shape of every genbench datamodule.

A datamodule loads its splits once as uint8 tensors (N, C, H, W) already at the configured
resolution, and serves float batches in [-1, 1]. Keeping the uint8 originals gives evaluation
the exact real images torch-fidelity expects, and lets batches be sliced with one indexing op
instead of a Python call per image.
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from genbench import GenbenchError
from genbench.reproducibility import EpochOrder

SPLITS = ("train", "val", "test")


def to_unit_range(images_u8: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float [-1, 1]."""
    return images_u8.float().div_(127.5).sub_(1.0)


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """float [-1, 1] -> uint8 [0, 255] (rounded, clamped), the inverse of ``to_unit_range``."""
    return ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def fit_size(images_u8: torch.Tensor, image_size: int) -> torch.Tensor:
    """Bring square uint8 images to ``image_size``: zero-pad when they are at most 4 pixels smaller
    (28 -> 32 keeps MNIST-style digits pixel-exact), resize with antialiasing otherwise."""
    size = images_u8.shape[-1]
    if size == image_size:
        return images_u8
    if 0 < image_size - size <= 4:
        lo = (image_size - size) // 2
        return F.pad(images_u8, (lo, image_size - size - lo, lo, image_size - size - lo))
    resized = F.interpolate(images_u8.float(), size=(image_size, image_size), mode="bilinear", antialias=True)
    return resized.round().clamp(0, 255).to(torch.uint8)


def fit_channels(images_u8: torch.Tensor, channels: int) -> torch.Tensor:
    if images_u8.shape[1] == channels:
        return images_u8
    if images_u8.shape[1] == 1 and channels == 3:
        return images_u8.expand(-1, 3, -1, -1).contiguous()
    if images_u8.shape[1] == 3 and channels == 1:
        weights = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
        return (images_u8.float() * weights).sum(1, keepdim=True).round().to(torch.uint8)
    raise GenbenchError(f"Cannot convert {images_u8.shape[1]}-channel images to {channels} channels.")


class ImageTensorDataset(Dataset):
    """uint8 images (+ integer labels) served as float images in [-1, 1].

    ``__getitems__`` returns a whole batch with one indexing op; the datamodule's loaders pass
    batches through unchanged.
    """

    def __init__(self, images_u8: torch.Tensor, labels: torch.Tensor | None = None) -> None:
        if images_u8.dtype != torch.uint8 or images_u8.ndim != 4:
            raise GenbenchError(
                f"Expected uint8 images shaped (N, C, H, W), got {images_u8.dtype} {tuple(images_u8.shape)}."
            )
        self.images = images_u8
        self.labels = labels if labels is not None else torch.full((len(images_u8),), -1, dtype=torch.long)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return to_unit_range(self.images[i]), self.labels[i]

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.as_tensor(indices)
        return to_unit_range(self.images[idx]), self.labels[idx]


def _batch_passthrough(batch: Any) -> Any:
    return batch


class ImageDataModule(pl.LightningDataModule):
    """Base datamodule: subclasses implement ``load_split(split) -> (uint8 images, labels)``
    at native resolution; resizing, channel conversion and the train/val split happen here."""

    name = "base"

    def __init__(
        self,
        image_size: int = 32,
        channels: int = 1,
        batch_size: int = 128,
        num_workers: int = 0,
        val_fraction: float = 1 / 12,
        split_seed: int = 1234,
        limit_train: int | None = None,
        pin_memory: bool = False,
        num_classes: int | None = None,
    ) -> None:
        super().__init__()
        #: the class count a conditional model is built for (None: read from the labels at setup)
        self._num_classes = num_classes
        self.image_size = image_size
        self.channels = channels
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.val_fraction = val_fraction
        self.split_seed = split_seed
        self.limit_train = limit_train
        self.pin_memory = pin_memory
        self._splits: dict[str, ImageTensorDataset] = {}
        #: the training order's seed: the run's seed (train() seeds before building the datamodule)
        self.shuffle_seed = torch.initial_seed()
        self._train_order: EpochOrder | None = None
        self._resume_at: tuple[int, int] | None = None

    # --- to implement -------------------------------------------------------------------------
    def load_split(self, split: str) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Return (uint8 N×C×H×W, labels or None) for 'train' (train+val pool) or 'test'."""
        raise NotImplementedError

    # --- shared ------------------------------------------------------------------------------
    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (self.channels, self.image_size, self.image_size)

    @property
    def num_classes(self) -> int | None:
        """How many classes the labels name (``data.num_classes``, else 1 + the largest training
        label; None for unlabelled data)."""
        if self._num_classes is not None:
            return int(self._num_classes)
        labels = self.dataset("train").labels
        return None if len(labels) == 0 or int(labels.min()) < 0 else int(labels.max()) + 1

    def check_labels(self, num_classes: int) -> None:
        """A conditional model with ``num_classes`` classes needs every label in 0..num_classes-1."""
        for split in SPLITS:
            labels = self.dataset(split).labels
            if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
                raise GenbenchError(
                    f"{self.name}: the {split} split's labels run {int(labels.min())}..{int(labels.max())}, but the "
                    f"conditional model has {num_classes} classes (0..{num_classes - 1}): "
                    + (
                        "this data has no labels; set model.conditional=false."
                        if int(labels.min()) < 0
                        else "set data.num_classes to the data's class count."
                    )
                )

    def _prepare(self, images: torch.Tensor) -> torch.Tensor:
        return fit_channels(fit_size(images, self.image_size), self.channels)

    def setup(self, stage: str | None = None) -> None:
        if self._splits:
            return
        pool, pool_labels = self.load_split("train")
        pool = self._prepare(pool)
        gen = torch.Generator().manual_seed(self.split_seed)
        perm = torch.randperm(len(pool), generator=gen)
        n_val = max(1, int(round(len(pool) * self.val_fraction)))
        val_idx, train_idx = perm[:n_val], perm[n_val:]
        if self.limit_train is not None:
            train_idx = train_idx[: self.limit_train]
        for split, idx in (("train", train_idx), ("val", val_idx)):
            labels = None if pool_labels is None else pool_labels[idx]
            self._splits[split] = ImageTensorDataset(pool[idx], labels)
        test, test_labels = self.load_split("test")
        self._splits["test"] = ImageTensorDataset(self._prepare(test), test_labels)

    def dataset(self, split: str) -> ImageTensorDataset:
        if split not in SPLITS:
            raise GenbenchError(f"Unknown split '{split}': use one of {', '.join(SPLITS)}.")
        self.setup()
        return self._splits[split]

    def real_images(self, split: str = "test") -> torch.Tensor:
        """The split's uint8 images, exactly as evaluation should see them."""
        return self.dataset(split).images

    def _loader(self, split: str, order: EpochOrder | None = None) -> DataLoader:
        return DataLoader(
            self.dataset(split),
            batch_size=self.batch_size,
            sampler=order,  # None: the split in its stored order
            drop_last=order is not None,  # equal-size training batches: BatchNorm and DDP like them
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=self.pin_memory,
            collate_fn=_batch_passthrough,
            # the loader's own generator: creating an iterator never draws from the global RNG
            generator=torch.Generator().manual_seed(0),
        )

    def train_order(self) -> EpochOrder:
        """The training split's order, shared by every train loader of this datamodule; sharded
        over the DDP ranks once the process group exists (Lightning asks for loaders after that)."""
        world, rank = 1, 0
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            world, rank = torch.distributed.get_world_size(), torch.distributed.get_rank()
        if self._train_order is None or self._train_order.num_replicas != world:
            self._train_order = EpochOrder(
                self.dataset("train"), self.shuffle_seed, self.batch_size, num_replicas=world, rank=rank
            )
        if self._resume_at is not None:
            self._train_order.resume_at(*self._resume_at)
            self._resume_at = None
        return self._train_order

    def resume_train_order(self, epoch: int, batches_done: int) -> None:
        """Make the next training epoch ``epoch`` start after ``batches_done`` batches (a resumed run)."""
        self._resume_at = (epoch, batches_done)
        if self._train_order is not None:
            self.train_order()

    def train_dataloader(self) -> DataLoader:
        n = len(self.dataset("train"))
        if n < self.batch_size:
            raise GenbenchError(
                f"{self.name}: the training split has {n} images, fewer than data.batch_size={self.batch_size}. "
                "Lower data.batch_size or use more data."
            )
        return self._loader("train", self.train_order())

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")
