"""The open framework, proved from outside: a fourth family from a package under tests/plugins
(``genbench_toy``: a Gaussian over pixels, fitted by maximum likelihood) that registers through the
``genbench.families`` entry point group and ships its config through ``genbench.configs``. With no
file of src/ or conf/ naming it, every command includes it: genbench-train, genbench-eval,
genbench-benchmark (leaderboard, grids, verdict, plots), genbench-compare and W&B.

The package is found as an installed one would be: its ``genbench_toy-0.1.dist-info`` sits beside it
on ``PYTHONPATH``, and ``importlib.metadata`` reads its entry points from there.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from conftest import QUIET, TINY_EVAL, run_cli, run_tiny_benchmark, tiny
from genbench import CONFIG_DIR, PROJECT_ROOT

PLUGINS = Path(__file__).parent / "plugins"
TOY = "gaussian"


def plugin_env() -> dict[str, str]:
    """The environment of a user who has installed genbench_toy."""
    return {"PYTHONPATH": os.pathsep.join(p for p in (str(PLUGINS), os.environ.get("PYTHONPATH", "")) if p)}


def run_with_plugin(module: str, *args: str, timeout: int = 600):
    return run_cli(module, *args, env=plugin_env(), timeout=timeout)


def test_genbench_itself_never_names_the_plugin() -> None:
    """Zero edits to src/ and conf/: the toy family is known only through its entry points."""
    for root in (PROJECT_ROOT / "src", CONFIG_DIR):
        for path in root.rglob("*"):
            if path.is_file() and path.suffix in (".py", ".yaml", ".html"):
                text = path.read_text()
                assert "genbench_toy" not in text and "PixelGaussian" not in text, path


def test_registry_lists_the_plugin_family_after_genbench_s_own() -> None:
    r = run_with_plugin(
        "genbench.benchmark",
        "--cfg",
        "job",
        "--resolve",
    )
    assert r.returncode == 0, r.stderr[-2000:]
    families = re.search(r"^families:\n((?:- .*\n)+)", r.stdout, re.M)
    assert families is not None, r.stdout[:2000]
    # the benchmark's default families: every registered one, in display order (the toy's order is 50)
    assert families.group(1).split() == ["-", "gan", "-", "vae", "-", "ddpm", "-", "flow_matching", "-", TOY]


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory) -> Path:
    """genbench-train model=gaussian, with W&B (offline) and CSV loggers."""
    run = tmp_path_factory.mktemp("toy") / "run"
    r = run_with_plugin(
        "genbench.train",
        f"model={TOY}",
        *[o for o in QUIET if o != "callbacks.sample_grid=null"],
        "logger=[csv,wandb]",
        "tags=[plugin_test]",
        f"hydra.run.dir={run}",
    )
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    return run


def test_train_runs_the_plugin_family(toy_run: Path) -> None:
    metrics = json.loads((toy_run / "metrics.json").read_text())
    assert metrics["family"] == TOY and metrics["global_step"] == 6
    assert metrics["num_parameters"] == 2 * 1 * 32 * 32  # a mean and a log-std per pixel of 1x32x32 shapes
    assert (toy_run / "checkpoints" / "last.ckpt").is_file()
    assert (toy_run / "samples" / "final.png").is_file()
    assert (toy_run / "samples" / "interp_final.png").is_file()  # its deterministic decoder: a latent grid
    (record,) = (toy_run / "wandb").glob("offline-run-*/run-*.wandb")
    data = record.read_bytes()
    assert b"plugin_test" in data and TOY.encode() in data  # the family is one of the W&B run's tags


def test_eval_scores_the_plugin_checkpoint_with_its_exact_likelihood(toy_run: Path) -> None:
    r = run_with_plugin(
        "genbench.evaluate",
        f"ckpt_path={toy_run / 'checkpoints' / 'last.ckpt'}",
        *TINY_EVAL,
        f"paths.cache_dir={toy_run.parent / 'cache'}",
    )
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    result = json.loads((toy_run / "checkpoints" / "metrics.json").read_text())["latest"]
    assert result["family"] == TOY and result["source"] == "genbench-eval"
    assert result["likelihood"] == "exact (discretised Gaussian per pixel)"
    assert result["fid"] > 0 and result["num_samples"] == 64
    # the bits/dim genbench computed through the plug-in's likelihood_bounds, against scipy on the
    # same test images (the evaluation's fixed subset) and the checkpoint's own mean and std
    import numpy as np
    import torch
    from hydra.utils import instantiate
    from scipy.stats import norm

    from conftest import compose_train
    from genbench.metrics.likelihood import fixed_subset

    state = torch.load(toy_run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]
    mean, std = state["mean"].double().numpy(), state["log_std"].double().exp().numpy()
    images = instantiate(compose_train(["data=synthetic"]).data).real_images("test")
    x = images[fixed_subset(len(images), result["likelihood_images"])].double().numpy() / 127.5 - 1
    upper = np.where(x > 0.999, 1.0, norm.cdf((x + 1 / 255 - mean) / std))
    lower = np.where(x < -0.999, 0.0, norm.cdf((x - 1 / 255 - mean) / std))
    bits_per_dim = -np.log2(upper - lower).reshape(len(x), -1).mean()
    assert result["bpd_exact"] == result["bpd"]
    assert abs(result["bpd"] - bits_per_dim) < 1e-4 * bits_per_dim, (result["bpd"], bits_per_dim)


def test_eval_without_the_plugin_says_the_family_is_unknown(toy_run: Path) -> None:
    """The same checkpoint where the package is not installed: one clear line, nothing written."""
    before = sorted(p.name for p in (toy_run / "checkpoints").iterdir())
    r = run_cli("genbench.evaluate", f"ckpt_path={toy_run / 'checkpoints' / 'last.ckpt'}", *TINY_EVAL)
    assert r.returncode != 0
    assert f"unknown family ('{TOY}')" in r.stderr and "Traceback" not in r.stderr
    assert sorted(p.name for p in (toy_run / "checkpoints").iterdir()) == before


@pytest.fixture(scope="module")
def toy_benchmark(tmp_path_factory) -> Path:
    """genbench-benchmark budget=tiny families=[gan,gaussian] wandb=true."""
    out, cache = tmp_path_factory.mktemp("toybench") / "report", tmp_path_factory.mktemp("cache")
    return run_tiny_benchmark(out, cache, f"families=[gan,{TOY}]", "wandb=true", env=plugin_env())


def test_benchmark_puts_the_plugin_family_on_the_leaderboard(toy_benchmark: Path) -> None:
    rows = json.loads((toy_benchmark / "leaderboard.json").read_text())
    assert [r["family"] for r in rows] == ["gan", TOY, "real vs real (floor)"]
    gan, toy = rows[0], rows[1]
    assert toy["status"] == "ok" and toy["fid"] > 0
    final = json.loads((toy_benchmark / "runs" / TOY / "0" / "eval" / "final.json").read_text())
    assert toy["bpd"] == final["bpd"] and toy["likelihood"] == "exact (discretised Gaussian per pixel)"
    assert gan["likelihood"] == "none (implicit model: no likelihood)"  # from the GAN's spec
    # the tiny budget gave the toy its own tiny overrides (FamilySpec.tiny_overrides: lr 0.1)
    config = (toy_benchmark / "runs" / TOY / "0" / "config_resolved.yaml").read_text()
    assert "lr: 0.1" in config
    overrides = (toy_benchmark / "runs" / TOY / "0" / ".hydra" / "overrides.yaml").read_text()
    assert "- section=tiny" in overrides  # the budget's section: the toy has no settings file for it


def test_benchmark_report_shows_the_plugin_family(toy_benchmark: Path) -> None:
    for name in ("samples", "interp", "pairs"):
        assert (toy_benchmark / "grids" / f"{TOY}_{name}.png").is_file(), name
    for plot in ("metrics_vs_images.png", "samples_side_by_side.png", "quality_vs_cost.png"):
        assert (toy_benchmark / plot).stat().st_size > 0, plot
    html = (toy_benchmark / "report.html").read_text()
    verdict = html[html.index("Verdict") :]
    assert f"{TOY} " in verdict and "has no likelihood" in verdict  # ranked beside the GAN, by name
    md = (toy_benchmark / "leaderboard.md").read_text()
    assert re.search(rf"^\| {TOY} \| [0-9.]+ \|", md, re.M), md
    # W&B: the report's run and the toy's own training run
    (record,) = (toy_benchmark / "wandb").glob("offline-run-*/run-*.wandb")
    assert TOY.encode() in record.read_bytes()
    assert list((toy_benchmark / "runs" / TOY / "0" / "wandb").glob("offline-run-*"))


def test_compare_includes_the_plugin_family(toy_benchmark: Path, tmp_path: Path) -> None:
    r = run_with_plugin("genbench.compare", str(toy_benchmark / "runs"), "--out", str(tmp_path / "cmp"))
    assert r.returncode == 0, r.stderr[-2000:]
    rebuilt = json.loads((tmp_path / "cmp" / "leaderboard.json").read_text())
    original = [row for row in json.loads((toy_benchmark / "leaderboard.json").read_text()) if row["seeds"]]
    assert [row["family"] for row in rebuilt] == ["gan", TOY]
    assert rebuilt == original


# --- a sampler from outside genbench: genbench_toy.samplers.QuadraticDDIMSampler ------------------


@pytest.fixture(scope="module")
def ddpm_run(tmp_path_factory) -> Path:
    """A tiny DDPM trained by genbench-train (the plug-in installed, but not used for training)."""
    run = tmp_path_factory.mktemp("ddpm") / "run"
    r = run_with_plugin("genbench.train", *tiny("ddpm"), *QUIET, "tags=[plugin_test]", f"hydra.run.dir={run}")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    return run


def test_eval_samples_with_the_plugin_sampler(ddpm_run: Path) -> None:
    r = run_with_plugin(
        "genbench.evaluate",
        f"ckpt_path={ddpm_run / 'checkpoints' / 'last.ckpt'}",
        "sampler=ddim_quad",
        "sampler.steps=3",
        *TINY_EVAL,
        "latent_grids=false",
        f"paths.cache_dir={ddpm_run.parent / 'cache'}",
    )
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    latest = json.loads((ddpm_run / "checkpoints" / "metrics.json").read_text())["latest"]
    assert latest["sampler"] == {"name": "ddim_quad", "steps": 3, "nfe": 3, "eta": 0.0}
    assert latest["fid"] > 0


def test_api_samples_with_the_plugin_sampler_by_name(ddpm_run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """api.sample(sampler="ddim_quad") builds the plug-in's sampler from its config: the same images
    as the sampler object itself, and not DDIM's (other timesteps)."""
    import torch

    from genbench import api

    monkeypatch.syspath_prepend(str(PLUGINS))
    assert "ddim_quad" in api.sampler_names()
    from genbench_toy.samplers import QuadraticDDIMSampler

    model = api.load(ddpm_run)
    by_name = api.sample(model, 8, seed=3, sampler="ddim_quad", steps=3)
    direct = api.sample(model, 8, seed=3, sampler=QuadraticDDIMSampler(steps=3))
    ddim = api.sample(model, 8, seed=3, sampler="ddim", steps=3)
    assert torch.equal(by_name, direct) and not torch.equal(by_name, ddim)


def test_benchmark_times_and_scores_the_plugin_sampler(tmp_path: Path) -> None:
    out, cache = tmp_path / "report", tmp_path / "cache"
    sampler = "{_target_: genbench_toy.samplers.QuadraticDDIMSampler, steps: 3}"
    run_tiny_benchmark(
        out,
        cache,
        "families=[ddpm]",
        "floor=false",
        f"+family_overrides.ddpm=['+callbacks.sampling.samplers.quad={sampler}']",
        env=plugin_env(),
    )
    sampling = {s["sampler"]: s for s in json.loads((out / "runs" / "ddpm" / "0" / "sampling.json").read_text())}
    assert sampling["ddim_quad-3"]["nfe"] == 3 and "eval/fid" in sampling["ddim_quad-3"]["metrics"]
    (row,) = json.loads((out / "leaderboard.json").read_text())
    assert "ddim_quad-3" in row["sampling_images_per_second"]
    assert (out / "quality_vs_steps.png").is_file()


def test_readme_shows_the_plugin_files_verbatim() -> None:
    """The README's "Add your own family" is this plug-in: its module, its config and its entry points."""
    import configparser
    import tomllib

    readme = (PROJECT_ROOT / "README.md").read_text()
    section = readme[readme.index("## Add your own family") : readme.index("## Architecture")]
    blocks = dict(re.findall(r"```(\w+)\n(.*?)```", section, re.S))
    assert blocks["python"] == (PLUGINS / "genbench_toy" / "__init__.py").read_text()
    assert blocks["yaml"] == (PLUGINS / "genbench_toy" / "conf" / "model" / f"{TOY}.yaml").read_text()
    declared = tomllib.loads(blocks["toml"])["project"]["entry-points"]
    installed = configparser.ConfigParser()
    installed.read(PLUGINS / "genbench_toy-0.1.dist-info" / "entry_points.txt")
    assert declared == {group: dict(installed[group]) for group in installed.sections()}
