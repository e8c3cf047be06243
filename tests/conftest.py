"""Shared fixtures: composing configs in-process and running the real entry points in subprocesses."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, open_dict

from genbench import CONFIG_DIR, PROJECT_ROOT
from genbench.tiny import TINY_OVERRIDES


@pytest.fixture(autouse=True)
def _seeded() -> None:
    """Every test starts from the same torch RNG state: random inputs are reproducible, so a
    float-tolerance check either always passes or always fails."""
    import torch

    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _wandb_settings_per_test(monkeypatch: pytest.MonkeyPatch) -> None:
    """W&B reads its settings (mode, server, credentials) once per process and keeps them in a
    singleton: a test that changed the environment (no credentials, another HOME) would leave them
    to every later test in this process, which then tries to log in instead of writing offline. So
    after a test that set W&B up, its environment is restored first and the singleton dropped."""
    yield
    setup = sys.modules.get("wandb.sdk.wandb_setup")
    if setup is not None and getattr(setup, "_singleton", None) is not None:
        monkeypatch.undo()
        import wandb

        wandb.teardown()


# Fast, quiet defaults for every in-process training run of the tests.
FAST = [
    "data=synthetic",
    "debug=fast",
    "print_config=false",
    "callbacks.progress_bar=null",
    "callbacks.model_summary=null",
]


def compose_train(overrides: list[str], output_dir: Path | None = None) -> DictConfig:
    """Compose conf/train.yaml as `genbench-train` would, pointing outputs at output_dir."""
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    if output_dir is not None:
        with open_dict(cfg):
            cfg.paths.output_dir = str(output_dir)
    return cfg


# Tiny networks per family, so a CPU test step takes milliseconds (CI has 2 cores).
TINY = TINY_OVERRIDES


def tiny(family: str) -> list[str]:
    return [f"model={family}", *TINY[family]]


@pytest.fixture
def train_cfg(tmp_path: Path) -> Callable[..., DictConfig]:
    """Compose a fast training config; a `model=<family>` override also shrinks its networks."""

    def make(*overrides: str, output_dir: Path | None = None) -> DictConfig:
        expanded = []
        for o in overrides:
            expanded += tiny(o.split("=", 1)[1]) if o.startswith("model=") else [o]
        return compose_train([*FAST, *expanded], output_dir or tmp_path / "run")

    return make


def run_cli(
    module: str, *args: str, cwd: Path = PROJECT_ROOT, timeout: int = 600, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """Run `python -m <module> args...` exactly as a user would, capturing output."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", "WANDB_MODE": "offline", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
    )


def run_tiny_benchmark(
    out: Path, cache: Path, *overrides: str, env: dict[str, str] | None = None, timeout: int = 1200
) -> Path:
    """`genbench-benchmark budget=tiny` into ``out`` with its own cache (the benchmark's and its
    training jobs'), asserting it succeeded; returns ``out``."""
    r = run_cli(
        "genbench.benchmark",
        "budget=tiny",
        "print_config=false",
        f"hydra.run.dir={out}",
        f"paths.cache_dir={cache}",
        f'train_overrides=["paths.cache_dir={cache}"]',
        *overrides,
        env=env,
        timeout=timeout,
    )
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    return out


# Quiet, fast settings for subprocess sweeps (no progress bar, summary or sample grids).
QUIET = [
    "data=synthetic",
    "debug=fast",
    "print_config=false",
    "callbacks.progress_bar=null",
    "callbacks.model_summary=null",
    "callbacks.sample_grid=null",
]


#: the smallest genbench-eval of a tiny checkpoint (64 samples, a tiny extractor trained on demand,
#: no memorisation pass): for tests about where results go, not what they are
TINY_EVAL = [
    "metrics.num_samples=64",
    "metrics.kid_subsets=5",
    "metrics.kid_subset_size=32",
    "metrics.isc_splits=2",
    "metrics.memorisation.enabled=false",
    "metrics.likelihood.num_images=16",
    "metrics.likelihood.iwae_k=4",
    "+metrics.extractor_training={epochs: 1, width: 8, feature_dim: 16, min_steps: 20}",
]


def vae_sweep(sweep: Path, *overrides: str, tiny: bool = True, **kwargs) -> subprocess.CompletedProcess:
    """`genbench-train -m model=vae ...` with QUIET settings (and tiny networks) into ``sweep``."""
    return run_cli(
        "genbench.train",
        "-m",
        "model=vae",
        *QUIET,
        *(TINY["vae"] if tiny else []),
        *overrides,
        f"hydra.sweep.dir={sweep}",
        **kwargs,
    )


@pytest.fixture
def cli() -> Callable[..., subprocess.CompletedProcess]:
    return run_cli
