"""The GPU check's CPU smoke run: `scripts/gpu_check.py --tiny`.

The GPU check is run rarely (on a lent GPU machine, once), so nothing but this test keeps it from
rotting in between: it runs the same code path on the CPU (tiny networks, synthetic data,
budget=tiny, DDP over gloo) and checks that every section of the JSON holds real numbers and that
the markdown has its tables. About 90 s on 2 cores.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest

from genbench import PROJECT_ROOT

SCRIPT = PROJECT_ROOT / "scripts" / "gpu_check.py"
FAMILIES = ("gan", "vae", "ddpm")


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
    assert list(report["steps"]) == ["environment", "throughput", "gpu_tests", "overhead", "ddp", "benchmark"]
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
def test_benchmark_leaderboard_has_the_three_families(tiny_check: tuple[Path, dict[str, Any], str]) -> None:
    out, report, _ = tiny_check
    bench = report["steps"]["benchmark"]
    rows = {r["family"]: r for r in bench["leaderboard"]}
    assert set(FAMILIES) <= set(rows)
    for family in FAMILIES:
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
    ]


@pytest.mark.slow
def test_markdown_has_the_tables_and_is_printed(tiny_check: tuple[Path, dict[str, Any], str]) -> None:
    out, _, stdout = tiny_check
    md = (out / "gpu_check.md").read_text()
    headings = ("## Environment", "## Training throughput", "## GPU tests", "## Framework overhead", "## DDP multirun")
    for heading in (*headings, "## Mini benchmark", "### DDPM samplers", "## Steps"):
        assert heading in md, heading
    assert "| family | setting | precision |" in md and "| family | FID ↓" in md and "| job | metrics.json |" in md
    assert all(f"| {family} | bf16+channels_last+compile |" in md for family in FAMILIES)
    assert md.strip() in stdout  # printed at the end, for a tool that shows only the output


def test_wrapper_is_valid_bash() -> None:
    """The wrapper only runs on a GPU loan (and in the slow test's absence, nowhere): parse it."""
    r = subprocess.run(["bash", "-n", str(PROJECT_ROOT / "scripts" / "gpu_check.sh")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
