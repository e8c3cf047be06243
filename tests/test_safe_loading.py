"""Checkpoints are loaded with ``torch.load(weights_only=True)`` and genbench's allowlist, everywhere.

A checkpoint is a pickle: loaded with ``weights_only=False`` it runs whatever code it names. Real
checkpoints of every family must still load (for genbench-eval and for a resume); one that names
any other Python object is refused with one line, and its code never runs: not by genbench-eval,
not by genbench-train's resume, not by Lightning's own restore inside ``trainer.fit``.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch

from conftest import QUIET, TINY, TINY_EVAL, run_cli
from genbench import GenbenchError
from genbench.checkpointing import AtomicCheckpointIO
from genbench.models import (
    CHECKPOINT_SAFE_GLOBALS,
    load_checkpoint_file,
    load_model_from_checkpoint,
    read_checkpoint,
)

FAMILIES = ("gan", "vae", "ddpm", "flow_matching")


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A real tiny genbench-train run of every family (6 steps: last.ckpt and ModelCheckpoint's file)."""
    root = tmp_path_factory.mktemp("families")
    for family in FAMILIES:
        r = run_cli("genbench.train", f"model={family}", *TINY[family], *QUIET, f"hydra.run.dir={root / family}")
        assert r.returncode == 0, r.stderr[-3000:]
    return {family: root / family for family in FAMILIES}


class RunsCode:
    """Unpickled, runs ``touch <marker>``: the kind of object a hostile checkpoint carries."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture
def hostile(runs: dict[str, Path], tmp_path: Path) -> tuple[Path, Path]:
    """(a real VAE checkpoint with one code-running object among its hyperparameters, its marker).
    Loading it the unsafe way is checked to run the code, so the refusals below are not vacuous."""
    marker = tmp_path / "code-ran"
    ckpt = load_checkpoint_file(runs["vae"] / "checkpoints" / "last.ckpt")
    ckpt["hyper_parameters"]["note"] = RunsCode(marker)
    path = tmp_path / "hostile.ckpt"
    torch.save(ckpt, path)
    torch.load(path, weights_only=False)  # what genbench must never do
    assert marker.exists()
    marker.unlink()
    return path, marker


def one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    return lines[0]


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_checkpoint_loads_with_weights_only_and_the_allowlist(runs: dict[str, Path], family: str) -> None:
    allowed = {f"{g.__module__}.{g.__qualname__}" for g in CHECKPOINT_SAFE_GLOBALS}
    files = sorted((runs[family] / "checkpoints").glob("*.ckpt"))
    assert [f.name for f in files] == ["epoch000-step0000006.ckpt", "last.ckpt"]
    for path in files:
        assert set(torch.serialization.get_unsafe_globals_in_checkpoint(path)) <= allowed
        assert read_checkpoint(path)["genbench"]["family"] == family
    model = load_model_from_checkpoint(files[-1])  # genbench-eval's loader
    state = read_checkpoint(files[-1])["state_dict"]
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_resumes_from_its_checkpoint(runs: dict[str, Path], tmp_path: Path, family: str) -> None:
    run = tmp_path / family
    shutil.copytree(runs[family], run)
    before = read_checkpoint(run / "checkpoints" / "last.ckpt")["global_step"]
    r = run_cli(
        "genbench.train",
        f"model={family}",
        *TINY[family],
        *QUIET,
        "trainer.max_epochs=2",
        "trainer.max_steps=-1",
        "ckpt_path=auto",
        f"hydra.run.dir={run}",
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"Resuming from {run / 'checkpoints' / 'last.ckpt'}" in r.stdout
    assert read_checkpoint(run / "checkpoints" / "last.ckpt")["global_step"] > before


def test_a_checkpoint_naming_other_objects_is_refused_before_it_runs_code(hostile: tuple[Path, Path]) -> None:
    path, marker = hostile
    with pytest.raises(GenbenchError) as raised:
        read_checkpoint(path)
    message = str(raised.value)
    assert "\n" not in message
    assert f"Refusing checkpoint {path}" in message and "posix.system" in message
    assert "arbitrary code" in message and "checkpoints you trust" in message and "re-save" in message
    assert not marker.exists()


def test_genbench_eval_refuses_a_hostile_checkpoint(hostile: tuple[Path, Path], tmp_path: Path) -> None:
    path, marker = hostile
    r = run_cli("genbench.evaluate", f"ckpt_path={path}", *TINY_EVAL, f"paths.cache_dir={tmp_path / 'cache'}")
    assert r.returncode == 1
    assert one_error_line(r.stderr).startswith(f"genbench: error: Refusing checkpoint {path}: ")
    assert not marker.exists()


def test_resume_refuses_a_hostile_checkpoint(hostile: tuple[Path, Path], tmp_path: Path) -> None:
    path, marker = hostile
    r = run_cli(
        "genbench.train", "model=vae", *TINY["vae"], *QUIET, f"ckpt_path={path}", f"hydra.run.dir={tmp_path / 'run'}"
    )
    assert r.returncode == 1
    assert one_error_line(r.stderr).startswith(f"genbench: error: Refusing checkpoint {path}: ")
    assert not marker.exists()


@pytest.mark.parametrize("how", ["genbench-train's plugin", "a ResumeCheckpoint callback"])
def test_lightnings_own_restore_refuses_a_hostile_checkpoint(train_cfg, hostile: tuple[Path, Path], how: str) -> None:
    """``trainer.fit(ckpt_path=...)`` reads the file through the trainer's CheckpointIO: genbench's
    (given by genbench-train, or installed by ResumeCheckpoint on a trainer built elsewhere) loads
    it safely even when nothing checked the file before."""
    from genbench.callbacks import ResumeCheckpoint
    from genbench.config import build
    from genbench.data import SyntheticDataModule

    path, marker = hostile
    model = build(train_cfg("model=vae").model, "model")
    extra: dict[str, Any] = (
        {"plugins": [AtomicCheckpointIO()]}
        if how == "genbench-train's plugin"
        else {"callbacks": [ResumeCheckpoint(every_n_train_steps=None, every_n_minutes=None, handle_signals=False)]}
    )
    trainer = pl.Trainer(
        max_steps=8,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=path.parent,
        **extra,
    )
    with pytest.raises(GenbenchError, match="Refusing checkpoint"):
        trainer.fit(model, datamodule=SyntheticDataModule(num_train=64, batch_size=16), ckpt_path=path)
    assert not marker.exists()
