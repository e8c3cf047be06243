"""genbench-eval: a checkpoint of any family -> metrics.json beside it; or source against source."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import open_dict

from genbench import CONFIG_DIR, PROJECT_ROOT, GenbenchError
from genbench.evaluate import evaluate

# a tiny extractor: trained on demand by the first evaluation, reused by the others
TINY_METRICS = [
    "metrics.kid_subsets=5",
    "metrics.isc_splits=2",
    "metrics.extractor_training.epochs=2",
    "metrics.extractor_training.width=8",
    "metrics.extractor_training.feature_dim=16",
    "metrics.extractor_training.batch_size=64",
    "metrics.extractor_training.min_steps=60",
    "metrics.likelihood.num_images=32",
    "metrics.likelihood.iwae_k=4",
]


def cli(module: str, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=PROJECT_ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """A VAE trained for a few steps on synthetic data by the real genbench-train."""
    root = tmp_path_factory.mktemp("eval")
    env = {"GENBENCH_CACHE": str(root / "cache"), "WANDB_MODE": "disabled"}
    r = cli(
        "genbench.train",
        "model=vae",
        "data=synthetic",
        "debug=fast",
        "print_config=false",
        "model.encoder.width=8",
        "model.decoder.width=8",
        f"hydra.run.dir={root / 'run'}",
        env=env,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    ckpt = root / "run" / "checkpoints" / "last.ckpt"
    assert ckpt.is_file()
    return SimpleNamespace(root=root, env=env, ckpt=ckpt)


def compose_eval(run: SimpleNamespace, *overrides: str):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name="eval", overrides=[*TINY_METRICS, *overrides])
    with open_dict(cfg):
        cfg.paths.cache_dir = run.env["GENBENCH_CACHE"]
        cfg.paths.output_dir = str(run.root / "eval_out")
    return cfg


def test_genbench_eval_writes_metrics_json_beside_the_checkpoint_and_keeps_history(run):
    r = cli(
        "genbench.evaluate",
        f"ckpt_path={run.ckpt}",
        "metrics.num_samples=64",
        *TINY_METRICS,
        f"hydra.run.dir={run.root / 'eval1'}",
        env=run.env,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    out = run.ckpt.parent / "metrics.json"
    data = json.loads(out.read_text())
    latest = data["latest"]
    assert latest["family"] == "vae" and latest["num_samples"] == 64 and latest["ckpt"] == "last.ckpt"
    assert latest["extractor"] == "in-domain:synthetic_32px_1ch"
    for key in ("fid", "kid_mean", "kid_std", "is_mean", "is_std", "precision", "recall", "class_kl", "memorised_frac"):
        assert np.isfinite(latest[key]), key
    # the fields of the training callback's records, so the report can merge both paths
    assert latest["source"] == "genbench-eval" and latest["step"] == latest["global_step"] > 0
    assert isinstance(latest["epoch"], int) and "evaluated_at" in latest
    assert latest["num_classes"] == len(latest["class_hist"]) == len(latest["real_class_hist"])
    # the picture of the closest pairs beside metrics.json, its path relative to the run directory
    assert latest["closest_pairs"] == "checkpoints/closest_pairs-last-n64.png"
    assert (run.root / "run" / latest["closest_pairs"]).is_file()
    # the likelihood is always stated; with a discretised decoder it is a number on 32 test images
    if latest["likelihood"].startswith("none"):
        assert "bpd" not in latest
    else:
        assert np.isfinite(latest["bpd"]) and latest["likelihood_images"] == 32 and latest["iwae_k"] == 4
    # one extractor, in the slot named by dataset, geometry and the hash of how it was trained
    assert len(list((Path(run.env["GENBENCH_CACHE"]) / "extractors").glob("synthetic_32px_1ch-*/extractor.json"))) == 1

    # a second evaluation with other settings is added, the first one is kept
    evaluate(compose_eval(run, f"ckpt_path={run.ckpt}", "metrics.num_samples=80"))
    data = json.loads(out.read_text())
    assert [h["num_samples"] for h in data["history"]] == [64, 80] and data["latest"]["num_samples"] == 80
    assert data["history"][0]["fid"] == latest["fid"]


def test_genbench_eval_compares_sources_real_vs_real_and_a_folder(run, tmp_path):
    rr = evaluate(
        compose_eval(
            run, "data=synthetic", "input1=data:test:0-128", "input2=data:test:128-", f"output={tmp_path / 'rr.json'}"
        )
    )
    assert rr["input1"] == "synthetic:test:0-128" and rr["num_samples"] == 128 and rr["num_real"] == 128
    from PIL import Image

    folder = tmp_path / "noise"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(64):
        Image.fromarray(rng.integers(0, 256, (32, 32), dtype=np.uint8)).save(folder / f"{i:03d}.png")
    vs_noise = evaluate(compose_eval(run, "data=synthetic", f"input1={folder}", f"output={tmp_path / 'noise.json'}"))
    assert vs_noise["num_samples"] == 64
    assert rr["fid"] < 0.2 * vs_noise["fid"], (rr, vs_noise)
    assert rr["precision"] > vs_noise["precision"], (rr, vs_noise)
    assert json.loads((tmp_path / "rr.json").read_text())["latest"]["fid"] == rr["fid"]


def test_genbench_eval_rejects_unknown_family_and_empty_requests(run, tmp_path):
    ckpt = torch.load(run.ckpt, map_location="cpu", weights_only=False)
    ckpt["genbench"]["family"] = "flow"
    torch.save(ckpt, tmp_path / "flow.ckpt")
    with pytest.raises(GenbenchError, match=r"unknown family \('flow'\)"):
        evaluate(compose_eval(run, f"ckpt_path={tmp_path / 'flow.ckpt'}"))
    with pytest.raises(GenbenchError, match="Nothing to evaluate"):
        evaluate(compose_eval(run))
    with pytest.raises(GenbenchError, match="Unknown image source"):
        evaluate(compose_eval(run, "data=synthetic", "input1=nowhere.txt"))
