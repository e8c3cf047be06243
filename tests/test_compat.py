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


def test_fidelity_cache_file_names_are_what_torch_fidelity_writes(tmp_path: Path) -> None:
    import torch_fidelity

    from genbench.metrics import UInt8ImageDataset

    class Probe(torch_fidelity.FeatureExtractorBase):
        """A deterministic 4-d feature / 3-class extractor, so the call is cheap and offline."""

        def __init__(self, name: str, features_list: list[str], **kwargs) -> None:
            super().__init__(name, features_list)

        @staticmethod
        def get_provided_features_list() -> tuple[str, ...]:
            return ("f", "logits")

        @staticmethod
        def get_default_feature_layer_for_metric(metric: str) -> str:
            return "logits" if metric == "isc" else "f"

        @staticmethod
        def can_be_compiled() -> bool:
            return False

        @staticmethod
        def get_dummy_input_for_compile() -> torch.Tensor:
            return torch.zeros(1, 1, 4, 4, dtype=torch.uint8)

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
            flat = x.float().flatten(1)
            out = {"f": flat[:, :4], "logits": flat[:, :3]}
            return tuple(out[n] for n in self.features_list)

    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY, register_feature_extractor

    if "genbench-compat-probe" not in FEATURE_EXTRACTORS_REGISTRY:
        register_feature_extractor("genbench-compat-probe", Probe)
    g = torch.Generator().manual_seed(0)
    images = [torch.randint(0, 256, (40, 1, 4, 4), generator=g, dtype=torch.uint8) for _ in range(2)]
    torch_fidelity.calculate_metrics(
        input1=UInt8ImageDataset(images[0]),
        input2=UInt8ImageDataset(images[1]),
        fid=True,
        prc=True,
        feature_extractor="genbench-compat-probe",
        cache=True,
        cache_root=str(tmp_path),
        input2_cache_name="probe-real",
        save_cpu_ram=True,
        cuda=False,
        verbose=False,
    )
    written = sorted(p.name for p in tmp_path.glob("probe-real-*.pt"))
    expected = compat.fidelity_cache_files("probe-real", "genbench-compat-probe", ["f"], "f", only_fid=False)
    assert written == sorted(expected)
