"""Save (and log) a grid of samples from fixed noise at regular intervals.

The noise comes from a private generator seeded once, so successive grids show the same latent
points evolving, and the global RNG streams of training are not touched.
"""

from __future__ import annotations

import logging
import math
import shutil
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import TensorBoardLogger, WandbLogger
from pytorch_lightning.utilities import rank_zero_only
from torchvision.utils import make_grid, save_image

from genbench.stopping import StopRequested

log = logging.getLogger("genbench.train")


def image_grid(images: torch.Tensor, nrow: int | None = None, padding: int = 2) -> torch.Tensor:
    """[-1, 1] images -> one [0, 1] grid image (C, H, W), square-ish by default."""
    nrow = nrow or max(1, int(math.ceil(math.sqrt(images.shape[0]))))
    return make_grid(images.float().cpu().clamp(-1, 1) * 0.5 + 0.5, nrow=nrow, padding=padding, pad_value=1.0)


def save_grid(images: torch.Tensor, path: str | Path, nrow: int | None = None) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(image_grid(images, nrow), path)
    return path


class SampleGrid(pl.Callback):
    def __init__(
        self,
        num_samples: int = 64,
        every_n_epochs: int = 1,
        seed: int = 0,
        dirname: str = "samples",
        sample_kwargs: dict | None = None,
    ) -> None:
        self.num_samples = num_samples
        self.every_n_epochs = max(1, every_n_epochs)
        self.seed = seed
        self.dirname = dirname
        self.sample_kwargs = dict(sample_kwargs or {})
        self.last_path: Path | None = None
        self._last_step = -1

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        last_epoch = trainer.max_epochs is not None and trainer.current_epoch + 1 >= trainer.max_epochs
        if (trainer.current_epoch + 1) % self.every_n_epochs == 0 or last_epoch or trainer.should_stop:
            self._make(trainer, pl_module, f"epoch{trainer.current_epoch:03d}_step{trainer.global_step:07d}")

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # final.png is the grid of the finished model; reuse the last one when nothing has changed.
        if self.last_path is not None and self._last_step == trainer.global_step:
            if trainer.is_global_zero:
                shutil.copyfile(self.last_path, self.last_path.with_name("final.png"))
        else:
            self._make(trainer, pl_module, "final")

    @rank_zero_only
    def _make(self, trainer: pl.Trainer, pl_module: pl.LightningModule, tag: str) -> None:
        generator = torch.Generator().manual_seed(self.seed)
        try:
            images = pl_module.sample(self.num_samples, generator=generator, **self.sample_kwargs)
        except StopRequested as e:  # the run stops at its next step boundary: no grid for this point
            log.warning("Sample grid %s interrupted: %s.", tag, e)
            return
        self._last_step = trainer.global_step
        out_dir = Path(trainer.default_root_dir) / self.dirname
        self.last_path = save_grid(images, out_dir / f"{tag}.png")
        grid = image_grid(images)
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_image("samples", grid, global_step=trainer.global_step)
            elif isinstance(logger, WandbLogger):
                logger.log_image("samples", [grid], step=trainer.global_step)
