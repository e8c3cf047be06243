"""Exact resume after a real stop, for every family, run as a user would (subprocesses).

An uninterrupted run and a run that is stopped mid-epoch (``kill -9``, SIGTERM, Ctrl-C) and then
resumed with ``ckpt_path=auto`` must end with bit-identical weights (EMA included) and identical
metrics.csv rows, every step logged once.
"""

from __future__ import annotations

import csv
import os
import signal
import subprocess
from pathlib import Path

import pytest
import torch

from conftest import QUIET, TINY, run_cli

TESTS = Path(__file__).parent
# 3 epochs x 6 batches; last.ckpt every 4 batches, so a stop at batch 9 resumes from batch 8
# (epoch 1, its third batch): the resumed run must re-enter the middle of a shuffled epoch.
RUN = [
    *QUIET,
    "trainer.max_epochs=3",
    "trainer.max_steps=-1",
    "trainer.limit_train_batches=6",
    "callbacks.resume.every_n_train_steps=4",
    "callbacks.resume.every_n_minutes=null",
]


def train(run: Path, family: str, *extra: str) -> subprocess.CompletedProcess:
    result = run_cli(
        "genbench.train",
        f"model={family}",
        *TINY[family],
        *RUN,
        f"hydra.run.dir={run}",
        *extra,
        env={"PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])},
    )
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    return result


def stop_at(batch: int, signal_name: str) -> str:
    return f"+callbacks.stop={{_target_: signal_helpers.SignalAt, batch: {batch}, signal_name: {signal_name}}}"


def weights(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]


def train_rows(run: Path) -> list[tuple[str, str]]:
    """(step, every train/* value) of each row that logged a training loss."""
    with open(run / "csv" / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    keys = sorted(k for k in rows[0] if k.startswith("train/"))
    return [(r["step"], "|".join(r[k] for k in keys)) for r in rows if any(r[k] for k in keys)]


def assert_same_run(resumed: Path, reference: Path) -> None:
    got, want = weights(resumed), weights(reference)
    assert got.keys() == want.keys()
    different = [k for k in want if not torch.equal(got[k], want[k])]
    assert not different, f"weights differ after resume: {different[:5]}"
    rows = train_rows(resumed)
    assert [s for s, _ in rows] == sorted({s for s, _ in rows}, key=int)  # every step once, in order
    assert rows == train_rows(reference)  # and the same losses, to the last digit


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = {}
    for family in TINY:
        out[family] = tmp_path_factory.mktemp(f"reference_{family}")
        assert train(out[family], family).returncode == 0
    return out


@pytest.mark.slow
@pytest.mark.parametrize("family", sorted(TINY))
def test_kill_9_then_resume_equals_uninterrupted_run(family: str, reference: dict[str, Path], tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert train(run, family, stop_at(9, "SIGKILL")).returncode == -signal.SIGKILL
    saved = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    assert saved["genbench_resume"]["epoch"] == 1 and saved["genbench_resume"]["batches_done"] == 2
    assert train(run, family, "ckpt_path=auto").returncode == 0
    assert_same_run(run, reference[family])


@pytest.mark.slow
@pytest.mark.parametrize("signal_name,status", [("SIGTERM", 143), ("SIGINT", 130)])
def test_sigterm_and_ctrl_c_save_then_resume_exactly(
    signal_name: str, status: int, reference: dict[str, Path], tmp_path: Path
) -> None:
    run = tmp_path / "run"
    assert train(run, "vae", stop_at(9, signal_name)).returncode == status
    saved = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    # the signal arrived during batch 9's start; the checkpoint is taken at the next step boundary
    assert saved["genbench_resume"]["epoch"] == 1 and saved["genbench_resume"]["batches_done"] == 4
    assert train(run, "vae", "ckpt_path=auto").returncode == 0
    assert_same_run(run, reference["vae"])


@pytest.mark.slow
def test_sigterm_during_sampling_stops_within_a_sampler_step(tmp_path: Path) -> None:
    """A 1000-step ancestral sample grid at epoch end is interrupted by SIGTERM instead of being
    finished first: no grid for that epoch, last.ckpt at the next step boundary, exit 143."""
    run = tmp_path / "run"
    grid = (
        "callbacks.sample_grid={_target_: genbench.callbacks.SampleGrid, num_samples: 64, "
        "sample_kwargs: {sampler: {_target_: genbench.diffusion.AncestralSampler}}}"
    )
    result = train(
        run,
        "ddpm",
        "model.schedule.timesteps=1000",
        grid,
        "+callbacks.stop={_target_: signal_helpers.SignalAfterValidation, delay: 0.5}",
    )
    assert result.returncode == 143
    assert "Sample grid epoch000" in result.stderr + result.stdout and "interrupted" in result.stderr + result.stdout
    assert not list((run / "samples").glob("epoch000_*.png"))  # the grid was abandoned, not finished
    saved = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    assert saved["genbench_resume"]["epoch"] == 1 and saved["genbench_resume"]["batches_done"] == 0


@pytest.mark.slow
def test_ddp_sigterm_then_resume_equals_uninterrupted_run(tmp_path: Path) -> None:
    """Two gloo ranks: each rank's share of the epoch is restarted mid-epoch (EpochOrder, not
    Lightning's DistributedSampler), so the DDP resume is bit-exact too."""
    ddp = ("trainer=ddp_cpu", "trainer.limit_train_batches=3")  # 3 batches per rank and epoch
    reference = tmp_path / "reference"
    assert train(reference, "vae", *ddp).returncode == 0
    run = tmp_path / "run"
    assert train(run, "vae", *ddp, stop_at(4, "SIGTERM")).returncode == 143  # saved after batch 4
    saved = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    assert saved["genbench_resume"]["epoch"] == 1 and saved["genbench_resume"]["batches_done"] == 2
    assert train(run, "vae", *ddp, "ckpt_path=auto").returncode == 0
    assert_same_run(run, reference)
