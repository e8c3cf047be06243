"""LightningDataModules that serve images in [-1, 1] with train / val / test splits."""

from genbench.data.base import ImageDataModule, ImageTensorDataset, to_uint8, to_unit_range
from genbench.data.cifar10 import CIFAR10DataModule
from genbench.data.folder import FolderDataModule
from genbench.data.mnist import FashionMNISTDataModule, MNISTDataModule
from genbench.data.synthetic import SyntheticDataModule

__all__ = [
    "CIFAR10DataModule",
    "FashionMNISTDataModule",
    "FolderDataModule",
    "ImageDataModule",
    "ImageTensorDataset",
    "MNISTDataModule",
    "SyntheticDataModule",
    "to_uint8",
    "to_unit_range",
]
