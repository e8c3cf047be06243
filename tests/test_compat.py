"""Every wrapper of a third-party private API (genbench.compat) against the installed versions.

Each test fails loudly, naming the wrapper, when an upgrade of Lightning or torch-fidelity
changes what the wrapper relies on."""

from __future__ import annotations

import csv
from importlib.metadata import version
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.loggers import CSVLogger

from genbench import compat


def test_installed_versions_are_the_checked_ones() -> None:
    # An upgrade must come with a review of genbench/compat.py (and this pin moving with it).
    assert compat.version_mismatches() == {}, "review genbench/compat.py for the new versions"
    assert compat.CHECKED_AGAINST["pytorch-lightning"] == version("pytorch-lightning")


def test_ddp_child_command_hook_is_what_lightning_calls() -> None:
    import pytorch_lightning.strategies.launchers.subprocess_script as launcher

    original = launcher._hydra_subprocess_cmd

    def command(local_rank: int) -> tuple[list[str], str]:
        return ["echo", str(local_rank)], "."

    try:
        compat.install_ddp_child_command(command)
        assert launcher._hydra_subprocess_cmd is command
        # the launcher calls the module attribute (not a reference bound at import time)
        source = Path(launcher.__file__).read_text()
        assert "command, cwd = _hydra_subprocess_cmd(local_rank)" in source
    finally:
        launcher._hydra_subprocess_cmd = original


class _Tiny(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        loss = self.layer(batch).pow(2).mean()
        self.log("loss", loss)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _fit(tmp_path: Path, steps: int) -> tuple[pl.Trainer, ModelCheckpoint, CSVLogger]:
    ckpt = ModelCheckpoint(dirpath=tmp_path / "checkpoints", save_last=True)
    logger = CSVLogger(tmp_path, name="csv", version="")
    trainer = pl.Trainer(
        max_steps=steps,
        callbacks=[ckpt],
        logger=logger,
        log_every_n_steps=1,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    data = torch.utils.data.DataLoader(torch.randn(16, 2), batch_size=2)
    trainer.fit(_Tiny(), train_dataloaders=data)
    return trainer, ckpt, logger


def test_checkpoint_loop_state(tmp_path: Path) -> None:
    trainer, ckpt_cb, _ = _fit(tmp_path, steps=3)
    assert trainer.global_step == 3 and compat.epoch_batches_done(trainer) == 3
    checkpoint = torch.load(ckpt_cb.last_model_path, map_location="cpu", weights_only=False)
    assert compat.checkpoint_logger_step(checkpoint) == 3
    progress = checkpoint["loops"]["fit_loop"]["epoch_loop.batch_progress"]
    progress["total"]["ready"] = progress["total"]["completed"] + 1  # a fetched, unrun batch
    compat.mark_fetched_batch_unrun(checkpoint)
    assert progress["total"]["ready"] == progress["total"]["completed"]
    assert progress["current"]["ready"] == progress["current"]["completed"]


def test_csv_writer_deletes_the_old_file_and_prepend_restores_rows(tmp_path: Path) -> None:
    _, _, logger = _fit(tmp_path, steps=2)
    path = Path(logger.log_dir) / "metrics.csv"
    rows = list(csv.DictReader(path.open()))
    assert [r["step"] for r in rows] == ["0", "1"]
    fresh = CSVLogger(tmp_path, name="csv", version="")
    fresh.experiment  # noqa: B018 - creating the writer is what deletes the file (Lightning 2.6.6)
    assert not path.exists()
    compat.prepend_csv_rows(fresh, [{"step": 0, "loss": 1.5}])
    assert [r["loss"] for r in csv.DictReader(path.open())] == ["1.5"]


def test_wandb_credential_resolver_finds_a_key_and_reports_none(tmp_path: Path) -> None:
    # A fresh process per case: W&B caches its settings for the life of a process.
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_") and k != "NETRC"}
    env.update(HOME=str(tmp_path), NETRC=str(tmp_path / "netrc"), WANDB_CONFIG_DIR=str(tmp_path / "wandb"))
    code = "from genbench.compat import wandb_find_credentials as f; print(f())"
    run = lambda extra: subprocess.run(  # noqa: E731
        [sys.executable, "-c", code], env={**env, **extra}, capture_output=True, text=True, timeout=120
    )
    none, key = run({}), run({"WANDB_API_KEY": "a" * 40})
    assert none.stdout.strip() == "False", none.stderr
    assert key.stdout.strip() == "True", key.stderr
