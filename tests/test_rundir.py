"""Run directories are claimed before Hydra writes into them (``genbench.rundir.RunDirGuard``).

A refused start (fresh start over checkpoints, an unwritable directory) touches nothing; two starts
in the same second never share a directory; a start that fails on bad input leaves no orphan run
directory behind and an existing one byte-identical. Real command lines, in subprocesses.
"""

from __future__ import annotations

import csv
import datetime
import hashlib
import json
import os
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

from conftest import QUIET, TINY, run_cli
from genbench.errors import GenbenchError
from genbench.report.collect import find_runs
from genbench.rundir import claim_dir

# A name with a timestamp is generated (one directory per start); with day resolution two starts
# in a test always collide, which is what two starts in the same second do with the default name.
DAY = "${now:%Y-%m-%d}"


def hashes(root: Path) -> dict[str, str]:
    """Every file under root (relative path -> sha256): the state a refused start must leave."""
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def fake_run(run: Path, *, checkpoint: bool = True) -> Path:
    """A run directory as a finished run leaves it (the files that matter here)."""
    (run / ".hydra").mkdir(parents=True)
    for name in ("config.yaml", "hydra.yaml", "overrides.yaml"):
        (run / ".hydra" / name).write_text(f"# the original {name}\nseed: 7\n")
    (run / "config_resolved.yaml").write_text("seed: 7\nmodel:\n  _target_: genbench.models.GAN\n")
    (run / "train.log").write_text("[original log]\n")
    (run / "csv").mkdir()
    (run / "csv" / "metrics.csv").write_text("step,train/loss\n0,1.0\n")
    if checkpoint:
        (run / "checkpoints").mkdir()
        (run / "checkpoints" / "last.ckpt").write_bytes(b"not really a checkpoint")
    return run


def error_lines(result: subprocess.CompletedProcess) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("genbench: error:")]


def train_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return run_cli("genbench.train", *args, env=env)


# --- claiming -----------------------------------------------------------------------------------


def test_claim_dir_is_exclusive_for_generated_names_only(tmp_path: Path) -> None:
    """A timestamped name another start took gets the next suffix; a chosen name is shared on purpose
    (resume, DDP ranks); a path under a file is refused before anything is made."""
    first, created = claim_dir(tmp_path / "runs" / "day", generated=True, key="hydra.run.dir")
    assert (first, created) == (tmp_path / "runs" / "day", True)
    second, created = claim_dir(tmp_path / "runs" / "day", generated=True, key="hydra.run.dir")
    assert (second, created) == (tmp_path / "runs" / "day_1", True)
    assert claim_dir(tmp_path / "runs" / "day", generated=False, key="hydra.run.dir") == (first, False)
    (tmp_path / "file").write_text("")
    with pytest.raises(GenbenchError, match=r"Cannot create the run directory .*file is a file.*hydra.run.dir="):
        claim_dir(tmp_path / "file" / "run", generated=True, key="hydra.run.dir")
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["day", "day_1"]


def test_two_starts_in_the_same_second_get_two_run_directories(tmp_path: Path) -> None:
    runs = tmp_path / "runs"

    def start(seed: int) -> subprocess.CompletedProcess:
        return train_cli("model=vae", *TINY["vae"], *QUIET, f"seed={seed}", f"hydra.run.dir={runs}/{DAY}")

    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(start, [1, 2]))
    for r in results:
        assert r.returncode == 0, r.stderr[-3000:]
    dirs = sorted(runs.iterdir())
    assert [d.name for d in dirs] == [dirs[0].name, f"{dirs[0].name}_1"]
    seeds = set()
    for run in dirs:
        seed = yaml.safe_load((run / ".hydra" / "config.yaml").read_text())["seed"]
        assert yaml.safe_load((run / "config_resolved.yaml").read_text())["seed"] == seed
        assert f"seed={seed}" in yaml.safe_load((run / ".hydra" / "overrides.yaml").read_text())
        seeds.add(seed)
        (metrics_csv,) = run.rglob("metrics.csv")
        with open(metrics_csv, newline="") as f:
            steps = [int(r["step"]) for r in csv.DictReader(f) if r.get("train/loss")]
        assert steps == list(range(json.loads((run / "metrics.json").read_text())["global_step"]))
        assert len(list(run.glob("*.log"))) == 1
    assert seeds == {1, 2}


def test_multirun_into_a_taken_sweep_name_gets_the_next_one(tmp_path: Path) -> None:
    """Each job's config is recomposed from the command line: it must land in the claimed directory."""
    sweeps = tmp_path / "sweeps"
    taken = sweeps / datetime.date.today().isoformat()
    taken.mkdir(parents=True)
    (taken / "multirun.yaml").write_text("another multirun\n")
    r = train_cli("-m", "model=vae", *TINY["vae"], *QUIET, "seed=3", f"hydra.sweep.dir={sweeps}/{DAY}")
    assert r.returncode == 0, r.stderr[-3000:]
    assert hashes(taken) == {"multirun.yaml": hashlib.sha256(b"another multirun\n").hexdigest()}
    (job,) = [p.parent for p in sweeps.rglob("config_resolved.yaml")]
    assert job == sweeps / f"{taken.name}_1" / "0"
    assert (job.parent / "multirun.yaml").is_file() and (job / "metrics.json").is_file()
    assert yaml.safe_load((job / "config_resolved.yaml").read_text())["paths"]["output_dir"] == str(job)


# --- refusals before Hydra writes ---------------------------------------------------------------


def test_fresh_start_over_checkpoints_touches_nothing(tmp_path: Path) -> None:
    run = fake_run(tmp_path / "run")
    before = hashes(run)
    r = train_cli("model=gan", *QUIET, f"hydra.run.dir={run}")
    assert r.returncode == 1
    assert len(error_lines(r)) == 1 and "already holds checkpoints" in r.stderr and "ckpt_path=auto" in r.stderr
    assert "Traceback" not in r.stderr
    assert hashes(run) == before


def test_fresh_multirun_over_checkpoints_touches_nothing(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    fake_run(sweep / "0")
    (sweep / "multirun.yaml").write_text("the first multirun\n")
    before = hashes(sweep)
    r = train_cli("-m", "model=gan", *QUIET, "seed=0,1", f"hydra.sweep.dir={sweep}")
    assert r.returncode == 1 and len(error_lines(r)) == 1 and "already holds checkpoints" in r.stderr
    assert hashes(sweep) == before


def _make_immutable(path: Path) -> bool:
    """``chattr +i``: even root cannot create files in the directory (a read-only mode does not stop root)."""
    if shutil.which("chattr") is None:
        return False
    return subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode == 0


def test_multirun_resume_that_fails_on_bad_input_restores_each_job(tmp_path: Path) -> None:
    """Hydra rewrites a job's .hydra/ before any job callback: the sweep's start records it and the
    failed job puts it back, so each job's record still describes its checkpoints."""
    sweep = tmp_path / "sweep"
    for job in ("0", "1"):
        fake_run(sweep / job)
    (sweep / "multirun.yaml").write_text("the first multirun\n")
    before = {job: hashes(sweep / job) for job in ("0", "1")}
    r = train_cli(
        "-m", "model=gan", *QUIET, "seed=0,1", "ckpt_path=auto", "data.batch_size=0", f"hydra.sweep.dir={sweep}"
    )
    assert r.returncode == 1 and "data.batch_size" in r.stderr and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert {job: hashes(sweep / job) for job in ("0", "1")} == before


@pytest.mark.parametrize("where", ["proc", "under_a_file", "read_only"])
def test_unwritable_run_directory_is_one_line(tmp_path: Path, where: str) -> None:
    if where == "proc":
        run = Path("/proc/genbench_run")
    elif where == "under_a_file":
        (tmp_path / "file").write_text("keep")
        run = tmp_path / "file" / "run"
    else:  # an existing directory nobody may write: mode 555, or immutable where root ignores modes
        run = tmp_path / "ro"
        run.mkdir(mode=0o555)
        if os.geteuid() == 0 and not _make_immutable(run):
            pytest.skip("root writes into read-only directories, and chattr +i is not available here")
    try:
        r = train_cli("model=vae", *QUIET, f"hydra.run.dir={run}")
    finally:
        if where == "read_only" and os.geteuid() == 0:
            subprocess.run(["chattr", "-i", str(run)], check=False)
    assert r.returncode == 1, r.stderr[-2000:]
    (line,) = error_lines(r)
    assert str(run) in line and "hydra.run.dir=" in line
    assert "Traceback" not in r.stderr
    if where == "under_a_file":
        assert (tmp_path / "file").read_text() == "keep"


# --- a start that fails on bad input ------------------------------------------------------------


def test_failed_start_removes_the_run_directory_it_made(tmp_path: Path) -> None:
    # an explicit new directory, and the default (generated) name under GENBENCH_ROOT
    r = train_cli("model=gan", *QUIET, "data.image_size=24", f"hydra.run.dir={tmp_path}/new")
    assert r.returncode == 1 and "data.image_size" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "new").exists()
    root = tmp_path / "root"
    r = train_cli("model=gan", *QUIET, "data.image_size=24", env={"GENBENCH_ROOT": str(root)})
    assert r.returncode == 1 and "data.image_size" in r.stderr
    runs = root / "outputs" / "train" / "runs"
    assert list(runs.iterdir()) == []
    with pytest.raises(GenbenchError, match="holds no run directories"):
        find_runs([runs])


def test_failed_start_leaves_an_existing_run_directory_byte_identical(tmp_path: Path) -> None:
    """A resume with bad input: Hydra rewrote .hydra/ and appended to train.log before train() could
    tell; the start puts every byte back."""
    run = fake_run(tmp_path / "run")
    (run / ".hydra" / "hydra.yaml").unlink()  # a file the start writes that was not there before
    before = hashes(run)
    r = train_cli("model=gan", *QUIET, "data.image_size=24", "ckpt_path=auto", f"hydra.run.dir={run}")
    assert r.returncode == 1 and len(error_lines(r)) == 1 and "data.image_size" in r.stderr
    assert hashes(run) == before
