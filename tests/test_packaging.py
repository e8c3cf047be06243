"""genbench as a package: the wheel ships the configs, and an installed genbench trains from an empty
directory, writing its outputs there (nothing depends on the package living in a repository)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
from omegaconf import OmegaConf

import genbench.config  # noqa: F401 - registers the resolvers paths.root_dir uses
from conftest import QUIET, TINY_EVAL, compose_train
from genbench import CONFIG_DIR, PROJECT_ROOT

# The environment of a user's shell: no repo-pointing variables, no user site, W&B offline.
_DROP = ("GENBENCH_ROOT", "GENBENCH_CACHE", "PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")
CLEAN_ENV = {
    **{k: v for k, v in os.environ.items() if k not in _DROP},
    "PYTHONNOUSERSITE": "1",
    "PYTHONUNBUFFERED": "1",
    "WANDB_MODE": "offline",
    "PIP_DISABLE_PIP_VERSION_CHECK": "1",
    "PIP_NO_INPUT": "1",
}


def _run(cmd: list[str | Path], cwd: Path, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(c) for c in cmd], cwd=cwd, env=CLEAN_ENV, capture_output=True, text=True, timeout=timeout
    )


def test_source_checkout_uses_the_repository_conf() -> None:
    # src/genbench/conf is a symlink to the top-level conf/ (editable installs and tests read conf/ itself)
    assert CONFIG_DIR == PROJECT_ROOT / "conf"
    assert (CONFIG_DIR / "train.yaml").is_file()
    link = PROJECT_ROOT / "src" / "genbench" / "conf"
    assert link.is_symlink() and os.readlink(link) == "../../conf"


def test_outputs_go_under_the_working_directory_or_genbench_root(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("GENBENCH_ROOT", raising=False)
    monkeypatch.delenv("GENBENCH_CACHE", raising=False)
    monkeypatch.chdir(tmp_path)
    paths = compose_train(["data=synthetic"]).paths
    assert paths.root_dir == str(tmp_path)
    assert paths.log_dir == f"{tmp_path}/outputs" and paths.data_dir == f"{tmp_path}/data"
    monkeypatch.setenv("GENBENCH_ROOT", str(tmp_path / "elsewhere"))
    assert compose_train(["data=synthetic"]).paths.log_dir == f"{tmp_path}/elsewhere/outputs"


@pytest.mark.slow
def test_wheel_installed_in_a_fresh_venv_trains_from_an_empty_directory(tmp_path: Path) -> None:
    # The tmp tree is a git repository of its own (like a user's project holding a venv): the
    # installed package must not report that repository's commit as genbench's.
    if shutil.which("git"):
        assert _run(["git", "init", "-q", "."], tmp_path).returncode == 0

    # 1. Build the wheel offline, from a copy of the sources (no build/ or egg-info in the shared checkout).
    src = tmp_path / "src_copy"
    (src / "src").mkdir(parents=True)
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(PROJECT_ROOT / name, src / name)
    shutil.copytree(PROJECT_ROOT / "conf", src / "conf")
    shutil.copytree(
        PROJECT_ROOT / "src" / "genbench",
        src / "src" / "genbench",
        symlinks=True,
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    dist = tmp_path / "dist"
    r = _run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", dist, src],
        tmp_path,
    )
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    (wheel,) = dist.glob("genbench-*.whl")

    # 2. The wheel holds every config (as regular files under genbench/conf/) and the license.
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        metadata = zf.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert "genbench/conf/train.yaml" in names
    yamls = sorted(p.relative_to(CONFIG_DIR).as_posix() for p in CONFIG_DIR.rglob("*.yaml"))
    assert len(yamls) > 40
    missing = [y for y in yamls if f"genbench/conf/{y}" not in names]
    assert not missing, missing
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert "License-Expression: MIT" in metadata and "torchmetrics" not in metadata

    # 3. A fresh venv without genbench, which borrows the main venv's heavy dependencies (torch, Lightning,
    # Hydra, pip) through a .pth line. The main venv's own .pth files (the editable genbench) are not
    # processed for a directory added that way, so genbench is not importable until the wheel is installed.
    fresh = tmp_path / "fresh"
    assert _run([sys.executable, "-m", "venv", "--without-pip", fresh], tmp_path).returncode == 0
    python = fresh / "bin" / "python"
    fresh_site = Path(
        _run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp_path).stdout.strip()
    )
    (fresh_site / "_genbench_test_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    work = tmp_path / "work"  # the user's empty directory
    work.mkdir()
    r = _run([python, "-c", "import genbench"], work)
    assert r.returncode != 0 and "No module named 'genbench'" in r.stderr, r.stderr[-2000:]

    # --ignore-installed: the borrowed site-packages holds the editable genbench's dist-info, which pip
    # must neither count as installed nor try to uninstall.
    r = _run([python, "-m", "pip", "install", "--no-deps", "--no-index", "--ignore-installed", "-q", wheel], work)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert (fresh / "bin" / "genbench-train").is_file()

    probe = (
        "import json, sysconfig, genbench; from genbench.report.build import environment; e = environment(); "
        "print(json.dumps({'config_dir': str(genbench.CONFIG_DIR), 'purelib': sysconfig.get_paths()['purelib'], "
        "'git': [e['git_commit'], e['git_dirty']]}))"
    )
    r = _run([python, "-c", probe], work)
    assert r.returncode == 0, r.stderr[-2000:]
    info = json.loads(r.stdout.strip().splitlines()[-1])
    config_dir = Path(info["config_dir"])
    assert config_dir.is_relative_to(Path(info["purelib"]).resolve()), info
    assert config_dir.is_relative_to(fresh.resolve()) and (config_dir / "train.yaml").is_file(), info
    assert info["git"] == [None, None], info

    # 4. The console script, run from the empty directory: the run lands under it, not in the repository.
    r = _run([fresh / "bin" / "genbench-train", *QUIET, "model=vae"], work, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    (ckpt,) = work.glob("outputs/train/runs/*/checkpoints/last.ckpt")
    run_dir = ckpt.parent.parent
    paths = OmegaConf.load(run_dir / "config_resolved.yaml").paths
    assert paths.root_dir == str(work) and paths.log_dir == f"{work}/outputs"
    sources = OmegaConf.load(run_dir / ".hydra" / "hydra.yaml").hydra.runtime.config_sources
    assert {"path": str(config_dir), "schema": "file", "provider": "main"} in [dict(s) for s in sources]
    assert not (PROJECT_ROOT / "outputs" / "train" / "runs" / run_dir.name).exists()
    assert sorted(p.name for p in work.iterdir()) == ["outputs"]

    # 5. Evaluate that checkpoint and compare the run, still from the empty directory: the number
    # genbench-eval wrote is the one genbench-compare shows (one results path).
    r = _run([fresh / "bin" / "genbench-eval", f"ckpt_path={ckpt}", *TINY_EVAL], work, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    latest = json.loads((ckpt.parent / "metrics.json").read_text())["latest"]
    assert latest["source"] == "genbench-eval" and latest["fid"] > 0
    r = _run([fresh / "bin" / "genbench-compare", str(run_dir), "--out", str(work / "report")], work, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert (work / "report" / "report.html").is_file()
    assert f"{latest['fid']:.1f}" in (work / "report" / "leaderboard.md").read_text()
    assert sorted(p.name for p in work.iterdir()) == ["outputs", "report"]
