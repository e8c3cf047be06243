"""The GPU check's CPU smoke run: `scripts/gpu_check.py --tiny`.

The GPU check is run rarely (on a GPU machine, once in a while), so nothing but this test keeps it
from rotting in between: it runs the same code path on the CPU (tiny networks, synthetic data,
budget=gpu on the tiny protocol, DDP over gloo, scripts/perf_gpu.py --tiny) and checks that every
section of the JSON holds real numbers, that the results folder has its layout and that the markdown
has its tables. About 110 s on 2 cores, one run for every slow test here. The FLOP count and MFU
arithmetic of perf_gpu.py and budget=gpu's composition are checked without training.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest

from conftest import compose_train
from genbench import PROJECT_ROOT

SCRIPT = PROJECT_ROOT / "scripts" / "gpu_check.py"
FAMILIES = ("gan", "vae", "ddpm")


def _load_script(name: str):  # noqa: ANN202 - a module
    sys.path.insert(0, str(PROJECT_ROOT / "scripts"))  # perf_gpu imports perf_train and gpu_check
    spec = importlib.util.spec_from_file_location(name, PROJECT_ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tiny_check(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any], str]:
    """Run the check once for the whole module: (out dir, gpu_check.json, stdout)."""
    root = tmp_path_factory.mktemp("gpu_check")
    out = root / "out"
    r = subprocess.run(
        [sys.executable, str(SCRIPT), "--tiny", "--out", str(out), "--work-dir", str(root / "work")],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "WANDB_MODE": "offline"},
    )
    report_file = out / "gpu_check.json"
    assert report_file.is_file(), r.stdout[-3000:] + r.stderr[-3000:]
    report = json.loads(report_file.read_text())
    failed = {k: v.get("error") for k, v in report["steps"].items() if not v.get("ok")}
    assert r.returncode == 0 and not failed, f"{failed}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return out, report, r.stdout


def _positive(x: Any) -> bool:
    return isinstance(x, int | float) and math.isfinite(x) and x > 0


@pytest.mark.slow
def test_every_step_ran_within_the_time_limit(tiny_check: tuple[Path, dict[str, Any], str]) -> None:
    _, report, _ = tiny_check
    assert report["mode"] == "tiny" and report["ok"] is True
    assert list(report["steps"]) == [
        "environment",
        "throughput",
        "gpu_tests",
        "overhead",
        "ddp",
        "benchmark",
        "perf_gpu",
    ]
    # tests/test_gpu.py ran: on a CPU every test in it skips (it needs CUDA), and none failed
    tests = report["steps"]["gpu_tests"]
    assert tests["counts"].get("skipped", 0) >= 4 and not tests["counts"].get("failed") and not tests["failed_tests"]
    assert all(_positive(s["wall_seconds"]) and s["wall_seconds"] <= s["limit_s"] for s in report["steps"].values())
    assert report["elapsed_s"] < report["time_limit_s"]
    env = report["steps"]["environment"]["result"]
    assert env["torch"] and env["lightning"] and env["cpu_count"] >= 1 and env["bf16_supported"] is True
    assert report["data"]["used"] == "synthetic"


@pytest.mark.slow
def test_throughput_of_every_family_and_setting(tiny_check: tuple[Path, dict[str, Any], str]) -> None:
    _, report, _ = tiny_check
    families = report["steps"]["throughput"]["families"]
    settings = [s["name"] for s in report["plan"]["settings"]]
    assert settings == ["fp32", "bf16", "bf16+channels_last+compile"]
    for family in FAMILIES:
        results = families[family]["settings"]
        assert set(results) == set(settings), family
        for name, r in results.items():
            assert r["ok"] is True, (family, name, r.get("error"))
            assert _positive(r["images_per_second"]) and _positive(r["ms_per_batch"]), (family, name)
            assert _positive(r["num_parameters"]) and r["timed_batches"] >= 2
            assert r["peak_memory_mib"] is None  # CPU: no CUDA allocator to ask
        assert results["fp32"]["precision"] == "32-true" and results["bf16"]["precision"] == "bf16-mixed"
        compiled = results["bf16+channels_last+compile"]
        # the model configs have no compile/channels_last options yet: the script applies them
        assert compiled["channels_last"] in ("gpu_check", "model option")
        assert compiled["compile"] in ("gpu_check", "model option")
        assert compiled["compile_seconds"] >= 0 and results["fp32"]["speedup_vs_fp32"] == 1.0
        # the same seed, weights and first batch: fp32 and bf16 start from (almost) the same loss
        fp32, bf16 = results["fp32"], results["bf16"]
        assert math.isfinite(fp32["loss_first_batch"]) and fp32["loss_rel_diff_vs_fp32"] == 0.0
        assert bf16["loss_first_batch"] == pytest.approx(fp32["loss_first_batch"], rel=0.05), family
        assert math.isfinite(compiled["loss_rel_diff_vs_fp32"])


@pytest.mark.slow
def test_overhead_against_a_hand_written_loop(tiny_check: tuple[Path, dict[str, Any], str]) -> None:
    """perf_train.py overhead ran (CPU here, cuda on the GPU) and both sides trained."""
    _, report, _ = tiny_check
    ov = report["steps"]["overhead"]
    assert "perf_train.py overhead" in ov["command"] and "--device cpu" in ov["command"]
    assert set(ov["families"]) == {"gan", "vae"}
    for family, r in ov["families"].items():
        assert _positive(r["plain_images_per_second"]) and _positive(r["genbench_images_per_second"]), family
        assert r["ratio_wall_median"] == pytest.approx(
            r["genbench_images_per_second"] / r["plain_images_per_second"], rel=1e-6
        )


@pytest.mark.slow
def test_ddp_multirun_jobs_both_finished(tiny_check: tuple[Path, dict[str, Any], str]) -> None:
    out, report, _ = tiny_check
    ddp = report["steps"]["ddp"]
    assert "trainer=ddp_cpu" in ddp["command"] and ddp["distributed_backend"] == ["gloo"]
    assert [j["job"] for j in ddp["jobs"]] == ["0", "1"]
    for job in ddp["jobs"]:
        assert job["metrics_json"] is True
        assert job["metrics"]["family"] == "vae" and job["metrics"]["global_step"] == 6
        assert math.isfinite(job["metrics"]["val/loss"])
        assert job["ddp_sync"]["world_size"] == 2 and job["ddp_sync"]["max_abs_diff_parameters"] == 0.0
    with tarfile.open(out / "details.tar.gz") as tar:  # the files themselves, beside the JSON
        names = set(tar.getnames())
    assert {f"details/ddp/{job}/metrics.json" for job in ("0", "1")} <= names


@pytest.mark.slow
def test_benchmark_leaderboard_has_every_family(tiny_check: tuple[Path, dict[str, Any], str]) -> None:
    """budget=gpu on the tiny protocol: every registered family, each with its budget=gpu settings
    (the fast solvers of conf/family_settings/<family>/gpu.yaml at the tiny step counts)."""
    from genbench.registry import family_names

    out, report, _ = tiny_check
    bench = report["steps"]["benchmark"]
    assert "budget=gpu" in bench["command"] and "budget.experiment=benchmark/tiny" in bench["command"]
    rows = {r["family"]: r for r in bench["leaderboard"]}
    assert set(family_names()) <= set(rows)
    assert rows["ddpm"]["sampler"] == "dpmpp_2m-4" and rows["flow_matching"]["sampler"] == "heun-8"
    for family in family_names():
        assert rows[family]["status"] == "ok", family
        assert math.isfinite(rows[family]["fid"]) and _positive(rows[family]["train_images_per_second"]), family
        assert bench["runs"][family]["metrics.json"]["family"] == family
    # the DDPM's samplers: the own one at one more seed (tiny protocol) and the choice made from it
    sampling = bench["runs"]["ddpm"]["sampling.json"]
    assert len(sampling[0]["noise"]["values"]["eval/fid"]) == 2
    assert sum(bool(e.get("recommended")) for e in sampling) == 1
    assert json.loads((out / "leaderboard.json").read_text()) == bench["leaderboard"]
    assert (out / "leaderboard.md").read_text() == bench["leaderboard_md"]
    assert (out / "report.html").is_file()


@pytest.mark.slow
def test_out_holds_few_files(tiny_check: tuple[Path, dict[str, Any], str]) -> None:
    """A device tool brings back at most 8 files from OUT: everything else is in details.tar.gz."""
    out, _, _ = tiny_check
    files = sorted(p.name for p in out.rglob("*") if p.is_file())
    assert files == [
        "details.tar.gz",
        "gpu_check.json",
        "gpu_check.md",
        "leaderboard.json",
        "leaderboard.md",
        "report.html",
        "results.tar.gz",
    ]


@pytest.mark.slow
def test_results_folder_layout(tiny_check: tuple[Path, dict[str, Any], str]) -> None:
    """What docs/results/<date>-<device>/ keeps of a GPU run, here from the tiny run: the leaderboard,
    the report, the grids, environment.json and perf_gpu's numbers, and the same folder in
    OUT/results.tar.gz (the one file to bring back)."""
    from genbench.registry import family_names

    out, report, _ = tiny_check
    evidence = report["steps"]["benchmark"]["evidence"]
    folder = Path(evidence["dir"])
    assert folder.name == f"{report['started'][:10]}-cpu" and folder.parent.name == "results"
    assert not str(folder).startswith(str(PROJECT_ROOT / "docs"))  # tiny mode writes into the work dir
    assert json.loads((folder / "leaderboard.json").read_text()) == json.loads((out / "leaderboard.json").read_text())
    assert (folder / "report.html").read_bytes() == (out / "report.html").read_bytes()
    grids = {p.name for p in (folder / "grids").glob("*.png")}
    assert {f"{family}_samples.png" for family in family_names()} | {"real.png"} <= grids
    env = json.loads((folder / "environment.json").read_text())
    step_env = report["steps"]["environment"]["result"]
    assert env["device"] == "cpu" and env["gpu_name"] is None and env["variant"] == "check"
    assert env["torch"] == step_env["torch"] and env["git_commit"] == step_env["git_commit"]
    assert env["date"] == report["started"][:10] and env["data"] == "synthetic"
    perf = json.loads((folder / "perf_gpu.json").read_text())
    assert perf == report["steps"]["perf_gpu"]["result"]
    files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
    assert set(files) == set(evidence["files"]) | {"perf_gpu.json", "perf_gpu.md"}  # perf_gpu's added after
    with tarfile.open(out / "results.tar.gz") as tar:
        packed = sorted(m.name.split("/", 1)[1] for m in tar.getmembers() if m.isfile())
    assert packed == files and "perf_gpu.md" in files and "environment.json" in files


@pytest.mark.slow
def test_perf_gpu_tiny_measured_every_setting(tiny_check: tuple[Path, dict[str, Any], str]) -> None:
    """scripts/perf_gpu.py --tiny: each setting trained, its MFU is FLOPs per image x images/s /
    peak (recomputed here), and genbench's overhead ratio is its images/s over the loop's."""
    _, report, _ = tiny_check
    res = report["steps"]["perf_gpu"]["result"]
    assert res["mode"] == "tiny" and res["experiment"] == "cifar10_ddpm" and res["flops_per_image"] > 0
    assert list(res["settings"]) == ["fp32", "bf16", "bf16+channels_last", "bf16+channels_last+compile"]
    peak = res["peak"]["flops_per_second"]
    for name, r in res["settings"].items():
        assert r["ok"] is True, (name, r.get("error"))
        assert _positive(r["images_per_second"]) and math.isfinite(r["loss_first"])
        assert r["mfu"] == pytest.approx(res["flops_per_image"] * r["images_per_second"] / peak, rel=1e-12)
    assert res["settings"]["fp32"]["loss_first"] == pytest.approx(res["settings"]["bf16"]["loss_first"], rel=0.05)
    ov = res["overhead"]
    assert ov["ok"] is True and ov["ratio_per_round"] == pytest.approx(
        [g / p for g, p in zip(ov["genbench_images_per_second"], ov["plain_images_per_second"], strict=True)]
    )


@pytest.mark.slow
def test_markdown_has_the_tables_and_is_printed(tiny_check: tuple[Path, dict[str, Any], str]) -> None:
    out, _, stdout = tiny_check
    md = (out / "gpu_check.md").read_text()
    headings = ("## Environment", "## Training throughput", "## GPU tests", "## Framework overhead", "## DDP multirun")
    for heading in (*headings, "## Benchmark (budget=gpu", "### DDPM samplers", "## Large UNet", "## Steps"):
        assert heading in md, heading
    assert "| family | setting | precision |" in md and "| family | FID ↓" in md and "| job | metrics.json |" in md
    assert all(f"| {family} | bf16+channels_last+compile |" in md for family in FAMILIES)
    assert md.strip() in stdout  # printed at the end, for a tool that shows only the output


def test_wrapper_is_valid_bash() -> None:
    """The wrapper only runs on a GPU loan (and in the slow test's absence, nowhere): parse it."""
    r = subprocess.run(["bash", "-n", str(PROJECT_ROOT / "scripts" / "gpu_check.sh")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_flop_count_matches_a_hand_count() -> None:
    """perf_gpu.count_flops (FlopCounterMode) over one training step of a small conv + linear net
    against 2 x multiply-accumulates counted by hand: forward, then backward = the weight gradients
    of both layers + the input gradient of the linear layer only (the image needs no gradient)."""
    import torch

    perf_gpu = _load_script("perf_gpu")
    conv, lin = torch.nn.Conv2d(2, 4, 3, padding=1), torch.nn.Linear(4 * 8 * 8, 5)
    net = torch.nn.Sequential(conv, torch.nn.ReLU(), torch.nn.Flatten(), lin)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)

    def step(x: torch.Tensor) -> None:
        loss = net(x).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()

    batch = 3
    conv_macs = batch * 4 * 8 * 8 * (2 * 3 * 3)  # output elements x (input channels x kernel)
    lin_macs = batch * (4 * 8 * 8) * 5
    forward = 2 * (conv_macs + lin_macs)
    backward = 2 * (conv_macs + lin_macs) + 2 * lin_macs  # weight grads of both, input grad of the linear
    assert perf_gpu.count_flops(step, torch.randn(batch, 2, 8, 8)) == forward + backward


def test_mfu_arithmetic_and_peaks() -> None:
    perf_gpu = _load_script("perf_gpu")
    # 37.3 GFLOP per image at 10,000 images/s on a 989 TFLOP/s GPU: 373 / 989 of the peak
    assert perf_gpu.mfu(37.3e9, 10_000, 989e12) == pytest.approx(37.3e9 * 1e4 / 989e12)
    assert perf_gpu.mfu(1e9, 500, 1e12) == pytest.approx(0.5)
    assert perf_gpu.peak_bf16_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert perf_gpu.peak_bf16_flops("NVIDIA H100 PCIe") == 756e12  # before the generic H100 entry
    assert perf_gpu.peak_bf16_flops("NVIDIA H200") == 989e12
    assert perf_gpu.peak_bf16_flops("NVIDIA L40S") == 362e12 and perf_gpu.peak_bf16_flops("NVIDIA L4") == 121e12
    assert perf_gpu.peak_bf16_flops("Some Future GPU") is None


def test_gpu_budget_gives_every_family_the_same_images_and_protocol(tmp_path: Path) -> None:
    """budget=gpu as genbench-benchmark composes each family's job: one image count for all, the
    10,000-sample evaluation, the GPU trainer, each family's best sampler, and a description that
    states the same count."""
    from hydra import compose, initialize_config_dir

    from genbench import CONFIG_DIR
    from test_presets import job_overrides  # the training job's overrides, as genbench-benchmark builds them

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        bench = compose(config_name="benchmark", overrides=["budget=gpu"])
    jobs = {f: compose_train(job_overrides("gpu", f, tmp_path), tmp_path) for f in bench.families}
    images = {f: c.callbacks.budget.max_images for f, c in jobs.items()}
    assert len(set(images.values())) == 1 and set(jobs) >= {"gan", "vae", "ddpm", "flow_matching"}, images
    (n,) = set(images.values())
    assert n % 128 == 0 and f"{n:,}" in bench.budget.description
    for family, cfg in jobs.items():
        assert cfg.callbacks.budget.max_train_seconds is None and list(cfg.callbacks.budget.eval_at) == [0.5, 1.0]
        assert cfg.callbacks.evaluation.num_samples == 10_000 and cfg.data.batch_size == 128, family
        assert cfg.trainer.accelerator == "gpu" and cfg.data._target_.endswith("FashionMNISTDataModule"), family
        assert not cfg.callbacks.sampling.samplers, family  # every extra sampler would cost 10,000 more samples
    assert jobs["ddpm"].model.sampler._target_.endswith("DPMSolverSampler") and jobs["ddpm"].model.sampler.steps == 20
    assert jobs["flow_matching"].model.sampler._target_.endswith("HeunSolver")
    assert jobs["ddpm"].model.net == jobs["flow_matching"].model.net  # the same UNet: equal network cost
