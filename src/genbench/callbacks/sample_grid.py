"""Save (and log) a grid of samples from fixed noise at regular intervals (a row per class for a
conditional model), and the families' own
views of their latent space (genbench.latents): an encoder family's reconstructions of fixed validation
images with every grid (``recon_<tag>.png``), and an interpolation grid of every family at the end
of training (``interp_final.png``).

The noise comes from a private generator seeded once, so successive grids show the same latent
points evolving, and the global RNG streams of training are not touched.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import TensorBoardLogger, WandbLogger
from pytorch_lightning.utilities import rank_zero_only

from genbench.latents import INTERP, RECON, image_grid, interpolation_grid, reconstruction_grid, save_grid, save_png
from genbench.stopping import StopRequested

log = logging.getLogger("genbench.train")


class SampleGrid(pl.Callback):
    def __init__(
        self,
        num_samples: int = 64,
        every_n_epochs: int = 1,
        seed: int = 0,
        dirname: str = "samples",
        sample_kwargs: dict | None = None,
        reconstructions: int = 8,
        interpolation_rows: int = 4,
        interpolation_steps: int = 8,
    ) -> None:
        """``reconstructions``: how many validation images (the split's first) an encoder family's
        ``recon_<tag>.png`` shows above their reconstructions (0: none); ``interpolation_rows`` x
        ``interpolation_steps``: the train-end ``interp_final.png`` (0 rows: none)."""
        self.num_samples = num_samples
        self.every_n_epochs = max(1, every_n_epochs)
        self.seed = seed
        self.dirname = dirname
        self.sample_kwargs = dict(sample_kwargs or {})
        self.reconstructions = reconstructions
        self.interpolation_rows = interpolation_rows
        self.interpolation_steps = interpolation_steps
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
                recon = self.last_path.with_name(f"{RECON}_{self.last_path.name}")
                if recon.is_file():
                    shutil.copyfile(recon, recon.with_name(f"{RECON}_final.png"))
        else:
            self._make(trainer, pl_module, "final")
        self._interpolation(trainer, pl_module)

    @rank_zero_only
    def _make(self, trainer: pl.Trainer, pl_module: pl.LightningModule, tag: str) -> None:
        generator = torch.Generator().manual_seed(self.seed)
        try:
            images, nrow = class_grid_samples(pl_module, self.num_samples, generator, **self.sample_kwargs)
        except StopRequested as e:  # the run stops at its next step boundary: no grid for this point
            log.warning("Sample grid %s interrupted: %s.", tag, e)
            return
        self._last_step = trainer.global_step
        out_dir = Path(trainer.default_root_dir) / self.dirname
        self.last_path = save_grid(images, out_dir / f"{tag}.png", nrow=nrow)
        _log_grid(trainer, "samples", image_grid(images, nrow=nrow))
        real = self._validation_images(trainer, pl_module)
        if real is not None:
            # a conditional encoder family reconstructs each image with its true class
            conditional = getattr(pl_module, "num_classes", None) is not None
            labels = self._validation_labels(trainer, len(real)) if conditional else None
            grid = reconstruction_grid(pl_module, real, labels=labels)
            save_png(grid, out_dir / f"{RECON}_{tag}.png")
            _log_grid(trainer, "reconstructions", grid)

    def _validation_images(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> torch.Tensor | None:
        """The first ``reconstructions`` validation images (uint8), the same at every grid; None
        for a family without an encoder or a datamodule without a validation split."""
        datamodule = getattr(trainer, "datamodule", None)
        if self.reconstructions < 1 or not hasattr(pl_module, "reconstruct") or not hasattr(datamodule, "real_images"):
            return None
        return datamodule.real_images("val")[: self.reconstructions]

    @staticmethod
    def _validation_labels(trainer: pl.Trainer, n: int) -> torch.Tensor:
        """The classes of the images :meth:`_validation_images` returns."""
        return trainer.datamodule.dataset("val").labels[:n]

    @rank_zero_only
    def _interpolation(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.interpolation_rows < 1:
            return
        generator = torch.Generator().manual_seed(self.seed)
        # the grids' own deterministic sampler (e.g. debug=fast's 4-step DDIM eta=0) decodes x_T;
        # anything stochastic is left to the model's default deterministic one
        sampler = self.sample_kwargs.get("sampler")
        kwargs = {"sampler": sampler} if getattr(sampler, "deterministic", False) else {}
        try:
            grid = interpolation_grid(pl_module, self.interpolation_rows, self.interpolation_steps, generator, **kwargs)
        except StopRequested as e:
            log.warning("Interpolation grid interrupted: %s.", e)
            return
        save_png(grid, Path(trainer.default_root_dir) / self.dirname / f"{INTERP}_final.png")
        _log_grid(trainer, "interpolations", grid)


def class_grid_samples(
    model: pl.LightningModule, num_samples: int, generator: torch.Generator, **sample_kwargs: Any
) -> tuple[torch.Tensor, int | None]:
    """The images of a sample grid and its images per row (None: square-ish). A conditional model
    (``model.num_classes``) draws a row per class, 0 at the top: ``num_samples // K`` images of
    each class (at least one), so a glance shows whether each row is its class."""
    num_classes = getattr(model, "num_classes", None)
    if num_classes is None:
        return model.sample(num_samples, generator=generator, **sample_kwargs), None
    per_class = max(1, num_samples // num_classes)
    labels = torch.arange(num_classes).repeat_interleave(per_class)
    return model.sample(len(labels), generator=generator, labels=labels, **sample_kwargs), per_class


def _log_grid(trainer: pl.Trainer, name: str, grid: torch.Tensor) -> None:
    """A grid image (float [0, 1] or uint8, C x H x W) to TensorBoard and W&B."""
    grid = grid.float() / 255 if grid.dtype == torch.uint8 else grid
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.experiment.add_image(name, grid, global_step=trainer.global_step)
        elif isinstance(logger, WandbLogger):
            logger.log_image(name, [grid], step=trainer.global_step)
