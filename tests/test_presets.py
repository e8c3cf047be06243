"""Every runnable experiment preset trains for a few steps, in-process through ``train(cfg)``.

tests/test_configs.py only composes the presets; here each Fashion-MNIST and synthetic one runs
(`debug=fast`: a few batches) with its own data, model, trainer and callbacks, and only its cost
shrunk by overrides: fewer evaluation samples, a small in-domain extractor trained once per session
(a session-scoped ``paths.cache_dir``) on a 512-image slice, smaller sampling benchmarks and
budgets that end after a few batches. The GPU presets (trainer=gpu: the CIFAR-10 ones, which have
no data here, and benchmark/full_*) are only composed (test_every_runnable_preset_is_run_here).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from conftest import compose_train
from genbench import CONFIG_DIR, PROJECT_ROOT
from genbench.benchmark import training_command
from genbench.models import read_checkpoint
from genbench.registry import family_of_target
from genbench.train import train

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
needs_fashion_mnist = pytest.mark.skipif(
    not FASHION_MNIST_DIR.is_dir(),
    reason="Debian package dataset-fashion-mnist not installed (make data / apt-get install dataset-fashion-mnist)",
)

QUIET = ["debug=fast", "print_config=false", "callbacks.progress_bar=null", "callbacks.model_summary=null"]

# A cheap evaluation protocol for the benchmark presets (their EvaluationCallback): 64 samples
# (> the 16 feature dims of the small extractor) and a tiny extractor trained for a few steps.
CHEAP_EVAL = [
    "callbacks.evaluation.num_samples=64",
    "callbacks.evaluation.metrics.kid_subsets=5",
    "++callbacks.evaluation.metrics.kid_subset_size=32",
    "callbacks.evaluation.metrics.isc_splits=2",
    "++callbacks.evaluation.metrics.extractor_training={epochs: 1, min_steps: 8, feature_dim: 16, width: 8}",
    "callbacks.sampling.num_images=8",
]

# preset -> (family, datamodule class, one value the preset sets that no default has)
FASHION_MNIST_PRESETS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "fashion_mnist_gan": ("gan", "FashionMNISTDataModule", {"data.batch_size": 128}),
    "fashion_mnist_vae": ("vae", "FashionMNISTDataModule", {"data.batch_size": 128}),
    "fashion_mnist_ddpm": ("ddpm", "FashionMNISTDataModule", {"data.batch_size": 64}),
}
# A benchmark job is the budget's protocol experiment + model=<family> + the family's settings for the
# budget (conf/family_settings/<family>.yaml), as genbench-benchmark composes it (training_command).
# "<budget>:<family>" -> (family, datamodule class, one value the protocol or the family's settings set)
BENCHMARK_JOBS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "cpu:gan": ("gan", "FashionMNISTDataModule", {"callbacks.budget.eval_at": [0.25, 0.5, 1.0]}),
    "cpu:vae": ("vae", "FashionMNISTDataModule", {"callbacks.budget.eval_at": [0.25, 0.5, 1.0]}),
    "cpu:ddpm": ("ddpm", "FashionMNISTDataModule", {"model.net.base_channels": 16}),
    "tiny:gan": ("gan", "SyntheticDataModule", {"model.generator.width": 8}),
    "tiny:vae": ("vae", "SyntheticDataModule", {"model.latent_dim": 8}),
    "tiny:ddpm": ("ddpm", "SyntheticDataModule", {"model.net.base_channels": 8}),
    "cpu:flow_matching": ("flow_matching", "FashionMNISTDataModule", {"model.net.base_channels": 16}),
    "tiny:flow_matching": ("flow_matching", "SyntheticDataModule", {"model.sample_batch_size": 200}),
}
#: the samplers each family's benchmark job times: (tiny, cpu); a family without samplers has "default"
JOB_SAMPLERS = {
    "ddpm": ({"ddim-4", "ddim-2", "ancestral-100"}, {"dpmpp_2m-10", "ddim-5", "ddim-10", "dpmpp_2m-5", "edm_heun-11"}),
    "flow_matching": ({"euler-4", "heun-4", "dopri5-tol0.05"}, {"euler-10", "euler-5", "heun-10"}),
}
# Not run here besides the GPU presets: the sweep definition (hydra.mode=MULTIRUN over model x
# seed: its jobs are plain `model=<family>` runs), and the protocols, which run as BENCHMARK_JOBS.
NOT_RUN = {"sweep_families", "benchmark/cpu", "benchmark/tiny"}

# Per-preset cost cuts on top of QUIET. The budgets end training after a few batches (tiny: 3 of 32
# images; cpu: 2 of 128, the DDPM 4 of 64), having evaluated at an eval_at fraction and at the end.
SHRINK: dict[str, list[str]] = {
    "fashion_mnist_ddpm": ["model.sampler.steps=5"],  # the final sample grid: 5 DDIM steps, not 50
    "cpu": [
        "data.limit_train=512",  # also what the in-domain extractor trains on
        "callbacks.budget.max_train_seconds=null",
        "callbacks.budget.max_images=256",
        # bits/dim on 16 test images, not 500 (flow matching's is an ODE solve per image batch)
        "callbacks.evaluation.metrics.likelihood.num_images=16",
        *CHEAP_EVAL,
    ],
    "tiny": ["callbacks.budget.max_images=96", *CHEAP_EVAL],
}


def _presets() -> list[str]:
    root = CONFIG_DIR / "experiment"
    return sorted(str(p.relative_to(root).with_suffix("")) for p in root.rglob("*.yaml") if not p.name.startswith("_"))


def job_overrides(budget: str, family: str, tmp_path: Path, *extra: str) -> list[str]:
    """The overrides of genbench-benchmark's training job for ``family`` under ``budget``."""
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        bench = compose(config_name="benchmark", overrides=[f"budget={budget}", *extra])
    cmd = training_command(bench, family, tmp_path)
    args = cmd[cmd.index("genbench.train") + 1 :]
    return [a for a in args if a != "-m" and not a.startswith(("hydra.", "seed=", "print_config=", "fail_soft="))]


@pytest.fixture(scope="session")
def preset_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache for the whole session: each dataset's in-domain extractor is trained once."""
    return tmp_path_factory.mktemp("preset_cache")


def _run(preset: str, cache: Path, run: Path) -> dict[str, Any]:
    if ":" in preset:  # a benchmark job
        budget, family = preset.split(":")
        overrides = [*job_overrides(budget, family, run), *QUIET, *SHRINK[budget]]
    else:
        overrides = [f"experiment={preset}", *QUIET, *SHRINK.get(preset, [])]
    return train(compose_train([*overrides, f"paths.cache_dir={cache}"], run))


def _check_run(expected: tuple[str, str, dict[str, Any]], metrics: dict[str, Any], run: Path) -> None:
    family, datamodule, preset_values = expected
    assert metrics["family"] == family
    assert json.loads((run / "metrics.json").read_text())["family"] == family
    losses = {k: v for k, v in metrics.items() if k.startswith("train/") and "loss" in k}
    assert losses and all(math.isfinite(v) for v in losses.values()), losses
    assert (run / "checkpoints" / "last.ckpt").is_file()
    ckpt = read_checkpoint(run / "checkpoints" / "last.ckpt")
    assert ckpt["genbench"]["family"] == family
    resolved = OmegaConf.load(run / "config_resolved.yaml")
    assert family_of_target(resolved.model._target_) == family
    assert resolved.data._target_ == f"genbench.data.{datamodule}"
    for key, value in preset_values.items():  # the preset itself was applied, not only the group defaults
        assert OmegaConf.select(resolved, key) == value, key


def _check_benchmark_run(preset: str, run: Path, images: int, samplers: set[str]) -> None:
    family = preset.split(":")[1]
    budget = json.loads((run / "budget.json").read_text())
    assert budget["max_images"] == images and budget["images_seen"] == images  # the budget stopped it
    assert budget["budget_fraction"] == 1.0
    # what the machine gave the run (#12.6): CPU time, load while training, its cores
    assert budget["cpu_seconds"] > 0 and budget["load_avg"] >= 0 and budget["cpu_count"] >= 1
    final = json.loads((run / "eval" / "final.json").read_text())
    assert final["num_samples"] == 64 and math.isfinite(final["fid"]) and final["fid"] >= 0
    assert final["extractor"].startswith("in-domain:")
    history = [json.loads(line) for line in (run / "eval" / "metrics.jsonl").read_text().splitlines()]
    fractions = [h["budget_fraction"] for h in history]
    assert len(history) >= 2 and fractions == sorted(fractions) and fractions[-1] == 1.0, fractions
    assert all(h["cpu_seconds"] > 0 and "load_avg" in h for h in history)  # each evaluation records them
    sampling = {s["sampler"]: s for s in json.loads((run / "sampling.json").read_text())}
    assert set(sampling) == samplers, (family, set(sampling))
    assert all(s["num_images"] == 8 and s["images_per_second"] > 0 for s in sampling.values())


def test_every_runnable_preset_is_run_here(tmp_path: Path) -> None:
    """A new preset must be run here or be a GPU preset: nothing is silently left out."""
    covered = set(FASHION_MNIST_PRESETS) | NOT_RUN
    gpu_only = set()
    for preset in sorted(set(_presets()) - covered):
        cfg = compose_train([f"experiment={preset}"], tmp_path)
        assert cfg.trainer.accelerator == "gpu", f"{preset} runs on a CPU but is not run in tests/test_presets.py"
        gpu_only.add(preset)
    assert {"cifar10_ddpm", "benchmark/full_cifar10", "benchmark/full"} <= gpu_only
    assert covered - NOT_RUN <= set(_presets())  # no stale names here


def test_every_family_has_a_benchmark_job_run_here() -> None:
    from genbench.registry import family_names

    assert {job.split(":")[1] for job in BENCHMARK_JOBS} == set(family_names())


@pytest.mark.parametrize("preset", sorted(j for j in BENCHMARK_JOBS if j.startswith("tiny:")))
def test_synthetic_preset_runs(preset: str, preset_cache: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    metrics = _run(preset, preset_cache, run)
    _check_run(BENCHMARK_JOBS[preset], metrics, run)
    family = preset.split(":")[1]
    _check_benchmark_run(preset, run, images=96, samplers=JOB_SAMPLERS.get(family, ({"default"},))[0])
    if preset.endswith("ddpm"):  # the 100-step ancestral sampler is timed, not evaluated (timing_only)
        sampling = {s["sampler"]: s for s in json.loads((run / "sampling.json").read_text())}
        assert "metrics" not in sampling["ancestral-100"] and "eval/fid" in sampling["ddim-2"]["metrics"]
        # the own sampler (ddim-4) evaluated at one more seed: its FID's sampling noise, and the choice
        noise = sampling["ddim-4"]["noise"]
        final = json.loads((run / "eval" / "final.json").read_text())
        assert noise["seeds"] == [1234, 1235] and noise["values"]["eval/fid"][0] == final["fid"]
        fids = noise["values"]["eval/fid"]
        assert fids[1] != fids[0] and noise["std"]["eval/fid"] == pytest.approx(abs(fids[1] - fids[0]) / 2**0.5)
        assert [s["sampler"] for s in sampling.values() if s.get("recommended")] in (["ddim-4"], ["ddim-2"])


FASHION_MNIST_RUNS = {**FASHION_MNIST_PRESETS, **{j: v for j, v in BENCHMARK_JOBS.items() if j.startswith("cpu:")}}


@needs_fashion_mnist
@pytest.mark.parametrize("preset", sorted(FASHION_MNIST_RUNS))
def test_fashion_mnist_preset_runs(preset: str, preset_cache: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    metrics = _run(preset, preset_cache, run)
    _check_run(FASHION_MNIST_RUNS[preset], metrics, run)
    if ":" in preset:
        family = preset.split(":")[1]
        _check_benchmark_run(preset, run, images=256, samplers=JOB_SAMPLERS.get(family, (None, {"default"}))[1])
    else:
        assert metrics["global_step"] == 6  # debug=fast's max_steps (the GAN: 3 batches x 2 optimisers)
        assert (run / "samples" / "final.png").is_file()


def test_image_budget_preset_gives_each_family_a_fixed_image_count(tmp_path: Path) -> None:
    """budget=cpu_images: the cpu experiments with an image count per family instead of 120 s; each
    count is a whole number of batches, so the budget stops at exactly that many images."""
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        bench = compose(config_name="benchmark", overrides=["budget=cpu_images"])
    # the flow family shares the DDPM's UNet and batch, so its count is the DDPM's
    expected = {"gan": 43776, "vae": 212608, "ddpm": 29952, "flow_matching": 29952}
    assert bench.budget.experiment == "benchmark/cpu" and list(bench.families) == list(expected)
    for family, images in expected.items():
        cfg = compose_train(job_overrides("cpu_images", family, tmp_path), tmp_path)
        assert cfg.callbacks.budget.max_images == images and cfg.callbacks.budget.max_train_seconds is None
        assert images % cfg.data.batch_size == 0, (family, images, cfg.data.batch_size)
        assert list(cfg.callbacks.budget.eval_at) == [0.25, 0.5, 1.0]  # the cpu protocol otherwise
        # fp32 on every CPU (the counts are fp32 ones), while the time budget lets auto pick bf16
        assert cfg.trainer.precision == "32-true"
        assert compose_train(job_overrides("cpu", family, tmp_path), tmp_path).trainer.precision == "auto"
    # the README says make demo uses the time budget (bounded duration) and names the alternative
    makefile = (PROJECT_ROOT / "Makefile").read_text()
    assert "BUDGET ?= cpu\n" in makefile and "genbench-benchmark budget=$(BUDGET)" in makefile


def test_long_cpu_budget_is_four_times_cpu_with_its_points_inside(tmp_path: Path) -> None:
    """budget=cpu_long: 4 x 120 s per family, evaluated at 30, 60, 120, 240 and 480 s, so its first
    points repeat budget=cpu's (25/50/100 % of 120 s) and the curves extend them."""
    for family in ("gan", "vae", "ddpm"):
        cfgs = [compose_train(job_overrides(budget, family, tmp_path), tmp_path) for budget in ("cpu", "cpu_long")]
        cpu, cpu_long = (c.callbacks.budget for c in cfgs)
        assert cpu_long.max_train_seconds == 4 * cpu.max_train_seconds == 480
        times = [f * cpu_long.max_train_seconds for f in cpu_long.eval_at]
        assert times == [30, 60, 120, 240, 480]
        assert set(times) >= {f * cpu.max_train_seconds for f in cpu.eval_at}
        assert cfgs[0].model == cfgs[1].model and cfgs[0].data == cfgs[1].data  # only the budget differs
        assert cfgs[0].trainer == cfgs[1].trainer and cfgs[1].trainer.precision == "auto"
