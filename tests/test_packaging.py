"""genbench as a package: the wheel ships the configs, and an installed genbench trains from an empty
directory, writing its outputs there (nothing depends on the package living in a repository); it
installs with the stack of constraints.txt on every supported Python (3.11 here, 3.12 and 3.13 in
fresh venvs), and without its extras it trains and names the extra a feature needs."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import sysconfig
import zipfile
from importlib.metadata import distributions
from pathlib import Path

import pytest
from omegaconf import OmegaConf

import genbench.config  # noqa: F401 - registers the resolvers paths.root_dir uses
from conftest import QUIET, TINY_EVAL, compose_train
from genbench import CONFIG_DIR, PROJECT_ROOT
from genbench.errors import GenbenchError
from genbench.extras import EXTRAS, has_extra, install_hint, require_extra
from genbench.io import file_lock

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


@pytest.fixture(scope="session")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """genbench's wheel, built once per session offline from a copy of the sources (no build/ or
    egg-info in the shared checkout)."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src_copy"
    (src / "src").mkdir(parents=True)
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(PROJECT_ROOT / name, src / name)
    shutil.copytree(PROJECT_ROOT / "conf", src / "conf")
    for package in ("genbench", "hydra_plugins"):
        shutil.copytree(
            PROJECT_ROOT / "src" / package,
            src / "src" / package,
            symlinks=True,
            ignore=shutil.ignore_patterns("__pycache__"),
        )
    dist = tmp / "dist"
    r = _run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", dist, src],
        tmp,
    )
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    (built,) = dist.glob("genbench-*.whl")
    return built


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
def test_wheel_installed_in_a_fresh_venv_trains_from_an_empty_directory(tmp_path: Path, wheel: Path) -> None:
    # The tmp tree is a git repository of its own (like a user's project holding a venv): the
    # installed package must not report that repository's commit as genbench's.
    if shutil.which("git"):
        assert _run(["git", "init", "-q", "."], tmp_path).returncode == 0

    # 1. The wheel (built offline from a copy of the sources) holds every config (as regular files under
    # genbench/conf/), the Hydra plugins and the license.
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        metadata = zf.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert "genbench/conf/train.yaml" in names
    yamls = sorted(p.relative_to(CONFIG_DIR).as_posix() for p in CONFIG_DIR.rglob("*.yaml"))
    assert len(yamls) > 40
    missing = [y for y in yamls if f"genbench/conf/{y}" not in names]
    assert not missing, missing
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    plugins = {"genbench_launcher", "genbench_searchpath", "genbench_sweeper"}
    assert {n.split("/")[1] for n in names if n.startswith("hydra_plugins/")} == plugins
    assert "License-Expression: MIT" in metadata and "torchmetrics" not in metadata

    # 2. A fresh venv without genbench, which borrows the main venv's heavy dependencies (torch, Lightning,
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

    # 3. The console script, run from the empty directory: the run lands under it, not in the repository.
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

    # 4. Evaluate that checkpoint and compare the run, still from the empty directory: the number
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


# --- version ranges, the constraints file and the extras ------------------------------------------------

CONSTRAINTS = PROJECT_ROOT / "constraints.txt"


def _metadata(wheel: Path) -> str:
    with zipfile.ZipFile(wheel) as zf:
        return zf.read(next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))).decode()


def _pins() -> dict[str, str]:
    from packaging.utils import canonicalize_name

    pins = {}
    for line in CONSTRAINTS.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"constraints.txt: {line!r} is not an exact pin"
            pins[canonicalize_name(name)] = version
    return pins


def test_metadata_has_ranges_and_the_constraints_pin_a_stack_inside_them(wheel: Path) -> None:
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    metadata = _metadata(wheel)
    assert "Requires-Python: >=3.11\n" in metadata
    requires = [
        Requirement(line.split(":", 1)[1]) for line in metadata.splitlines() if line.startswith("Requires-Dist:")
    ]
    assert not [str(r) for r in requires if "==" in str(r.specifier)], "pins belong in constraints.txt"
    extras = {m.split("==")[1].strip().strip("'\"") for m in re.findall(r"extra == ['\"]\w+['\"]", metadata)}
    assert {"wandb", "slurm", "optuna", "all", "dev"} <= extras and set(EXTRAS) <= extras
    # every requirement genbench declares, with any extra, is pinned, at a version its range accepts
    pins = _pins()
    for req in requires:
        name = canonicalize_name(req.name)
        if name == "genbench":  # all = genbench[wandb,slurm,optuna], dev = genbench[all]
            continue
        assert name in pins, f"{req} is not pinned in constraints.txt"
        assert req.specifier.contains(pins[name], prereleases=True), (
            f"constraints.txt pins {name}=={pins[name]}: not {req}"
        )
    # and the pins are the stack this suite runs on
    installed = {canonicalize_name(d.metadata["Name"]): d.version for d in distributions()}
    drift = {n: (v, installed.get(n)) for n, v in pins.items() if n in installed and installed[n] != v}
    assert not drift, f"pinned vs installed: {drift} (make setup installs the pins)"


def test_missing_extra_names_the_extra_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    # this suite's venv has every extra (dev pulls all): each one imports, and requiring it is silent
    for extra in EXTRAS:
        assert has_extra(extra)
        require_extra(extra, "a test")
    # one module of an extra missing: one line with the feature, the reason and the command
    monkeypatch.setitem(EXTRAS, "slurm", ("submitit", ("submitit", "genbench_no_such_module")))
    assert not has_extra("slurm")
    with pytest.raises(GenbenchError) as e:
        require_extra("slurm", "hydra/launcher=slurm")
    message = str(e.value)
    assert message.startswith("hydra/launcher=slurm needs submitit (No module named 'genbench_no_such_module')")
    assert message.endswith(": " + install_hint("slurm")) and install_hint("slurm") == "pip install 'genbench[slurm]'"
    assert "\n" not in message


# --- fresh venvs of the other supported Pythons ------------------------------------------------------------

#: fresh venvs of other Pythons with the stack of constraints.txt, kept between test sessions while the
#: stack, genbench's requirements and the interpreter are the same (the key in the directory name)
VENV_CACHE = PROJECT_ROOT / "outputs" / "test_venvs"

#: the modules no extra-less genbench may need
EXTRA_MODULES = sorted({m for _, modules in EXTRAS.values() for m in modules})


def _interpreter(version: str) -> Path | None:
    """A Python ``version`` (3.12, ...) on this machine: pyenv's builds, then PATH."""
    pyenv = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    builds = sorted(
        pyenv.glob(f"{version}.*/bin/python"), key=lambda p: [int(x) for x in p.parts[-3].split(".") if x.isdigit()]
    )
    candidates = [*reversed(builds), shutil.which(f"python{version}")]  # the newest patch release first
    for candidate in candidates:
        if candidate is None:
            continue
        r = subprocess.run(
            [candidate, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"], capture_output=True, text=True
        )
        if r.returncode == 0 and r.stdout.strip() == version:
            return Path(candidate)
    return None


def _link_cuda_libraries(site_packages: Path) -> None:
    """Hard-link the NVIDIA libraries of this suite's venv into a new venv before pip runs there.

    They are py3-none wheels (the same files for every Python) at the pinned versions, and their
    3.2 GB are most of what a cold set-up would write (torch itself: 1.2 GB): linked, pip finds them
    satisfied and installs only what differs per Python (torch, triton, the compiled dependencies).
    pip still resolves and checks every requirement on the new Python. A distribution's metadata is
    linked after its files, so one that could not be linked whole (another file system) is not seen
    as installed, and pip installs it as usual."""
    here = Path(sysconfig.get_paths()["purelib"])
    for dist in distributions(path=[str(here)]):
        name = dist.metadata["Name"].lower()
        if not (name.startswith("nvidia-") or name in ("cuda-toolkit", "cuda-pathfinder")):
            continue
        if "Tag: py3-none-" not in (dist.read_text("WHEEL") or ""):
            continue
        for file in sorted(dist.files or [], key=lambda f: f.parts[0].endswith(".dist-info")):
            source = Path(str(dist.locate_file(file)))
            target = site_packages / file
            if "__pycache__" in file.parts or not source.is_file() or target.exists():
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(source, target)
            except OSError:
                return


def _stack_venv(version: str, extras: str, wheel: Path) -> Path:
    """A venv of Python ``version`` holding the wheel, ``genbench[extras]``'s requirements at the pins
    of constraints.txt, and nothing else; created by pip like a user's (the first time: minutes),
    reused while its key holds (then only the wheel is reinstalled: seconds)."""
    python = _interpreter(version)
    if python is None:
        pytest.skip(f"no Python {version} on this machine (pyenv install {version}, or put python{version} on PATH)")
    full = subprocess.run([python, "-c", "import sys; print(sys.version)"], capture_output=True, text=True).stdout
    requires = sorted(
        line for line in _metadata(wheel).splitlines() if line.startswith(("Requires-", "Provides-Extra"))
    )
    key = hashlib.sha256("\n".join([CONSTRAINTS.read_text(), *requires, full, extras]).encode()).hexdigest()[:12]
    name = f"py{version}-{extras or 'base'}"
    venv = VENV_CACHE / f"{name}-{key}"
    VENV_CACHE.mkdir(parents=True, exist_ok=True)
    with file_lock(VENV_CACHE / f"{name}.lock", what=f"the test venv {name}"):
        if not (venv / "complete").is_file():
            for stale in VENV_CACHE.glob(f"{name}-*"):  # earlier stacks: 2-3 GB each
                shutil.rmtree(stale)
            r = _run([python, "-m", "venv", venv], VENV_CACHE)
            assert r.returncode == 0, r.stderr[-2000:]
            site = _run(
                [venv / "bin" / "python", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], venv
            )
            _link_cuda_libraries(Path(site.stdout.strip()))
            target = f"{wheel}[{extras}]" if extras else str(wheel)
            r = _run([venv / "bin" / "python", "-m", "pip", "install", "-q", "-c", CONSTRAINTS, target], venv, 1800)
            assert r.returncode == 0, f"pip install {target} on Python {version}:\n{r.stdout[-3000:]}{r.stderr[-3000:]}"
            (venv / "complete").touch()
        else:
            r = _run(
                [venv / "bin" / "python", "-m", "pip", "install", "-q", "--no-deps", "--force-reinstall", wheel], venv
            )
            assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    return venv


def _error_lines(r: subprocess.CompletedProcess) -> list[str]:
    return [line for line in r.stderr.splitlines() if line.startswith("genbench: error:")]


@pytest.mark.slow
def test_python_3_12_without_extras_trains_and_names_the_extra_a_feature_needs(tmp_path: Path, wheel: Path) -> None:
    venv = _stack_venv("3.12", "", wheel)
    bin_ = venv / "bin"
    work = tmp_path / "work"
    work.mkdir()
    # none of the extras' modules is installed, and genbench with all of its modules imports without them
    probe = (
        "import importlib.util, json, sys, genbench, genbench.train, genbench.benchmark, genbench.evaluate, "
        "genbench.cluster, genbench.loggers; "
        f"print(json.dumps([sys.version_info[:2], [m for m in {EXTRA_MODULES!r} if importlib.util.find_spec(m)]]))"
    )
    r = _run([bin_ / "python", "-c", probe], work)
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads(r.stdout.strip().splitlines()[-1]) == [[3, 12], []]

    # a training run: Hydra starts without a word about the plugins whose extra is missing
    r = _run([bin_ / "genbench-train", *QUIET, "model=vae"], work, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert "Error importing" not in r.stderr and "Hydra plugins scanner" not in r.stderr, r.stderr[-3000:]
    (ckpt,) = work.glob("outputs/train/runs/*/checkpoints/last.ckpt")
    assert json.loads((ckpt.parent.parent / "metrics.json").read_text())["family"] == "vae"

    # each feature of an extra: one line naming the extra, status 1, before anything trains
    features = {
        "wandb": [bin_ / "genbench-train", *QUIET, "logger=wandb"],
        "slurm": [bin_ / "genbench-train", "-m", *QUIET, "hydra/launcher=local"],
        "optuna": [bin_ / "genbench-train", *QUIET, "hparams_search=vae_optuna"],
    }
    # genbench-benchmark runs without the extras too, up to its own check of the ones it is asked to use
    bench = [bin_ / "genbench-benchmark", "budget=tiny", "families=[vae]", "print_config=false", "launcher=local"]
    cases = [*features.items(), ("slurm", bench)]
    for i, (extra, cmd) in enumerate(cases):
        runs = tmp_path / f"runs{i}"
        r = _run([*cmd, f"paths.log_dir={runs}"], work, timeout=300)
        errors = _error_lines(r)
        assert r.returncode == 1 and len(errors) == 1, (cmd, r.stdout[-2000:], r.stderr[-3000:])
        module = EXTRAS[extra][1][0]
        assert errors[0].endswith(f"(No module named '{module}'): pip install 'genbench[{extra}]'"), errors[0]
        assert "Traceback" not in r.stderr and not list(runs.rglob("*.ckpt")), (cmd, r.stderr[-3000:])


@pytest.mark.slow
def test_python_3_13_with_every_extra_runs_an_optuna_search_in_submitit_jobs_logged_to_wandb(
    tmp_path: Path, wheel: Path
) -> None:
    venv = _stack_venv("3.13", "all", wheel)
    bin_ = venv / "bin"
    work = tmp_path / "work"
    work.mkdir()
    # the plugins Hydra finds are genbench's real launcher and sweeper, not the stand-ins
    probe = (
        "import sys; from hydra.core.plugins import Plugins; "
        "from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher; "
        "from hydra_plugins.hydra_optuna_sweeper.optuna_sweeper import OptunaSweeper; "
        "c = Plugins.instance().class_name_to_class; "
        "print(sys.version_info[:2] == (3, 13), "
        "issubclass(c['hydra_plugins.genbench_launcher.GenbenchSlurmLauncher'], SlurmLauncher), "
        "issubclass(c['hydra_plugins.genbench_sweeper.ResumableOptunaSweeper'], OptunaSweeper))"
    )
    r = _run([bin_ / "python", "-c", probe], work)
    assert r.returncode == 0 and r.stdout.split() == ["True"] * 3, r.stdout + r.stderr[-3000:]

    # one trial of the VAE search, launched as a submitit job, logging to W&B (offline) and CSV
    cmd = [bin_ / "genbench-train", "-m", "hparams_search=vae_optuna", "hydra/launcher=local"]
    cmd += ["hydra.sweeper.n_trials=1", "hydra.sweeper.n_jobs=1", "logger=[csv,wandb]", *QUIET]
    r = _run(cmd, work, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    (sweep,) = work.glob("outputs/train/multiruns/*")
    (job,) = sweep.glob(".submitit/*/*_0_result.pkl")  # the trial ran as a submitit job of its own
    assert list((sweep / "0" / "wandb").glob("offline-run-*/run-*.wandb"))
    # the study on disk holds the trial, with the value the job's run wrote as its metric
    with sqlite3.connect(work / "outputs" / "optuna" / "vae.db") as db:
        trials = db.execute("select t.state, v.value from trials t join trial_values v using (trial_id)").fetchall()
    metric = json.loads((sweep / "0" / "metrics.json").read_text())["val/neg_elbo"]
    assert trials == [("COMPLETE", pytest.approx(metric, rel=1e-6))], (trials, metric)
