"""A full disk, for real: a small tmpfs that runs out of space under genbench's writers.

Every file genbench writes goes through one atomic writer (``genbench.io.atomic_path``): when the
file system is full it removes its partial file, leaves the previous file intact and raises one
line naming the file and the free space; a training run that meets it stops at a step boundary
with that line (exit status 1) and resumes once there is space again.
"""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

from conftest import QUIET, TINY, run_cli
from genbench.errors import NoSpaceError, user_errors
from genbench.io import atomic_torch_save, atomic_write_bytes, atomic_write_json

TESTS = Path(__file__).parent


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Callable[[str], Path]]:
    """``small_disk("256k")``: a fresh tmpfs of that size, unmounted after the test. Skipped where
    mounting is not permitted (not root, no mount binary, a container without CAP_SYS_ADMIN):
    ENOSPC only comes from a real full file system, so it is not faked."""
    mounted: list[Path] = []

    def mount(size: str) -> Path:
        where = tmp_path / f"disk{len(mounted)}"
        where.mkdir()
        try:
            r = subprocess.run(
                ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True, text=True
            )
        except FileNotFoundError:
            pytest.skip("no mount command here: a small tmpfs is needed to fill a disk for real")
        if r.returncode != 0:
            pytest.skip(f"mounting a tmpfs is not permitted here ({r.stderr.strip()}): needed to fill a disk for real")
        mounted.append(where)
        return where

    yield mount
    for where in reversed(mounted):
        subprocess.run(["umount", "-l", str(where)], check=False)


def fill(path: Path) -> None:
    """Write ``path`` until the file system refuses."""
    block = b"\0" * (1 << 14)
    with open(path, "wb", buffering=0) as f:
        try:
            while True:
                f.write(block)
        except OSError:
            pass


def leftovers(directory: Path) -> list[str]:
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*") if p.suffix in (".tmp", ".part"))


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- the atomic writer -------------------------------------------------------------------------


WRITERS: dict[str, Callable[[Path], None]] = {
    "bytes": lambda path: atomic_write_bytes(path, os.urandom(300_000)),
    "json": lambda path: atomic_write_json(path, {"samples": list(range(60_000))}),
    "torch": lambda path: atomic_torch_save({"w": torch.randn(80_000)}, path),
}


@pytest.mark.parametrize("writer", list(WRITERS))
def test_a_write_that_does_not_fit_keeps_the_old_file_and_frees_its_partial(small_disk, writer: str) -> None:
    disk = small_disk("256k")
    target = disk / "out" / "result.bin"
    atomic_write_bytes(target, b"the previous, complete file")
    free_before = os.statvfs(disk).f_bavail
    with pytest.raises(NoSpaceError) as raised:
        WRITERS[writer](target)
    message = str(raised.value)
    assert "\n" not in message
    assert str(target) in message and "No space left on device" in message and "free of" in message
    assert target.read_bytes() == b"the previous, complete file"
    assert leftovers(disk) == []
    assert os.statvfs(disk).f_bavail == free_before  # the partial file's space was given back


def test_a_write_that_fits_is_synced_file_then_directory(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    target = tmp_path / "metrics.json"
    atomic_write_json(target, {"fid": 1.0})
    assert len(synced) == 2
    assert Path(synced[0]).name.startswith(".metrics.json.") and synced[0].endswith(".tmp")  # the data, before
    assert synced[1] == str(tmp_path)  # the directory entry, after the rename
    assert target.stat().st_mode & 0o777 == 0o666 & ~_umask()  # as open() would make it, not mkstemp's 0600


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_a_full_disk_met_outside_genbench_is_one_line(small_disk, capsys: pytest.CaptureFixture[str]) -> None:
    """A writer genbench does not own (a logger, Hydra) raises a bare OSError(ENOSPC): the entry
    point still ends with the one line naming the file and the free space, not a traceback."""
    disk = small_disk("64k")
    fill(disk / "filler")
    with pytest.raises(SystemExit) as ended, user_errors():
        (disk / "metrics.csv").write_text("step,loss\n" * 10_000)
    assert ended.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("genbench: error: Cannot write ")
    assert str(disk / "metrics.csv") in err[0] and "0 B free of" in err[0]


def test_a_log_file_on_a_full_disk_drops_lines_quietly(small_disk, capsys: pytest.CaptureFixture[str]) -> None:
    from genbench.summary import tolerate_full_disk

    disk = small_disk("64k")
    handler = logging.FileHandler(disk / "train.log")
    tolerate_full_disk(handler)
    logger = logging.getLogger("genbench.test_full_disk")
    logger.addHandler(handler)
    try:
        fill(disk / "filler")
        for _ in range(200):  # well past the page the log file had room in
            logger.warning("x" * 200)
        (disk / "filler").unlink()
        logger.warning("room again")  # the log goes on once there is space
        handler.flush()
        assert (disk / "train.log").read_text().endswith("room again\n")
    finally:
        logger.removeHandler(handler)
        handler.close()
    err = capsys.readouterr().err
    assert "Logging error" not in err and "Traceback" not in err
    assert err.count("genbench: warning:") == 1 and "No space left on device" in err


# --- a training run that fills its disk ----------------------------------------------------------

# 2 epochs x 6 batches, last.ckpt every 2 batches; the disk fills at the start of a batch, after
# last.ckpt of step 2 (batch 3) or step 4 (batch 5) was written, so the next save does not fit:
# batch 3 -> the last.ckpt refresh at batch 4; batch 5 -> ModelCheckpoint's file at the epoch end.
RUN = [
    *QUIET,
    "trainer.max_epochs=2",
    "trainer.max_steps=-1",
    "trainer.limit_train_batches=6",
    "callbacks.resume.every_n_train_steps=2",
    "callbacks.resume.every_n_minutes=null",
]


def train(run: Path, *extra: str) -> subprocess.CompletedProcess:
    return run_cli(
        "genbench.train",
        "model=vae",
        *TINY["vae"],
        *RUN,
        f"hydra.run.dir={run}",
        *extra,
        env={"PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])},
    )


@pytest.mark.parametrize(
    "fill_at,failed_file,kept_step",
    [(3, "checkpoints/.last.ckpt.pending", 2), (5, "checkpoints/epoch000-step0000006.ckpt", 4)],
    ids=["last.ckpt refresh", "ModelCheckpoint save"],
)
def test_training_on_a_full_disk_stops_with_one_line_and_resumes(
    small_disk, tmp_path: Path, fill_at: int, failed_file: str, kept_step: int
) -> None:
    from genbench.models import read_checkpoint

    disk = small_disk("4m")  # room for the run and its checkpoints (~0.5 MB each), until it is filled
    run, record = disk / "run", tmp_path / "last.sha256"
    filler = f"{{_target_: disk_helpers.FillDiskAt, batch: {fill_at}, filler: {disk / 'filler'}, record: {record}}}"
    r = train(run, f"+callbacks.fill={filler}")

    assert r.returncode == 1, r.stderr[-3000:]
    err = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(err) == 1, r.stderr
    assert err[0].startswith(f"genbench: error: Cannot write {run / failed_file}: No space left on device")
    assert "0 B free of" in err[0] and "ckpt_path=auto" in err[0]
    assert leftovers(run) == []
    last = run / "checkpoints" / "last.ckpt"
    assert sha256(last) == record.read_text()  # the previous last.ckpt, byte for byte
    assert read_checkpoint(last)["global_step"] == kept_step

    (disk / "filler").unlink()
    r = train(run, "ckpt_path=auto")
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"Resuming from {last}" in r.stdout
    assert read_checkpoint(last)["global_step"] == 12
    assert leftovers(run) == []


def test_the_leaderboard_on_a_full_disk_keeps_the_previous_one(small_disk) -> None:
    """genbench-compare and the benchmark rewrite leaderboard.{json,md,csv}: on a full disk each
    write fails in one line and the previous files stay whole (no half-written table)."""
    from genbench.report.leaderboard import write_leaderboard

    disk = small_disk("256k")
    rows = [{"family": "vae", "status": "ok", "fid": 18.4, "seeds": [0]}]
    paths = write_leaderboard(rows, disk)
    before = {k: sha256(p) for k, p in paths.items()}
    assert "vae" in paths["csv"].read_text() and "18.4" in paths["md"].read_text()
    fill(disk / "filler")
    big = [{"family": f"vae{i}", "status": "ok", "fid": float(i), "note": "x" * 200, "seeds": [0]} for i in range(2000)]
    with pytest.raises(NoSpaceError, match="leaderboard.json"):
        write_leaderboard(big, disk)
    assert {k: sha256(p) for k, p in paths.items()} == before and leftovers(disk) == []
