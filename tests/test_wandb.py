"""What reaches W&B, read back from the files of real offline runs: checkpoints as model
artifacts, the evaluation's samples table and class histograms, a benchmark's report; the
benchmark's training jobs in its project and group; credentials found by W&B's own resolver."""

from __future__ import annotations

import base64
import hashlib
import json
import logging
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import tiny
from genbench import GenbenchError, api
from genbench.metrics.evaluator import sample_share
from wandb_records import artifacts, history, run_file

SEED = 1234  # the evaluation callback's sampling seed
EVAL = [
    "callbacks=[default,eval]",
    "callbacks.sample_grid=null",
    "callbacks.evaluation.num_samples=64",
    "callbacks.evaluation.every_n_epochs=null",  # one evaluation, at the end of training
    f"callbacks.evaluation.seed={SEED}",
    "callbacks.evaluation.metrics.kid_subset_size=32",
    "callbacks.evaluation.metrics.kid_subsets=5",
    "callbacks.evaluation.metrics.isc_splits=2",
    "+callbacks.evaluation.metrics.extractor_training={epochs: 1, feature_dim: 16, width: 8, min_steps: 20}",
]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """A tiny VAE trained with logger=wandb log_model=true and the evaluation callback, W&B offline."""
    root = tmp_path_factory.mktemp("wandb")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("WANDB_MODE", "offline")
        mp.setenv("WANDB_SILENT", "true")
        mp.setenv("WANDB_DATA_DIR", str(root / "wandb_data"))  # artifact staging, instead of ~/.local/share
        overrides = [*tiny("vae"), "data=synthetic", "debug=fast", "print_config=false", *EVAL]
        overrides += ["logger=wandb", "logger.wandb.log_model=true", f"paths.cache_dir={root / 'cache'}"]
        result = api.train(api.compose(overrides, output_dir=root / "run"))
    _flush()
    return SimpleNamespace(root=root, dir=result.run_dir, record=run_file(result.run_dir))


def _flush() -> None:
    """Make W&B write out its runs' files: a run that is not the process's first is only complete
    on disk once W&B's service is torn down (run.finish() alone left it empty)."""
    import wandb

    wandb.teardown()


def _md5(path: Path) -> str:
    return base64.b64encode(hashlib.md5(path.read_bytes()).digest()).decode()


def test_last_and_best_checkpoints_are_model_artifacts(run: SimpleNamespace) -> None:
    """last.ckpt (written by genbench's resume callback, outside ModelCheckpoint) is uploaded beside
    the best checkpoint: the artifacts' files are the run's files, byte for byte."""
    run_id = (run.dir / "wandb_run_id").read_text().strip()
    models = [a for a in artifacts(run.record) if a.type == "model"]
    by_file = {json.loads(a.metadata)["original_filename"]: a for a in models}
    best = next(p for p in (run.dir / "checkpoints").glob("*.ckpt") if p.name != "last.ckpt")
    assert set(by_file) == {"last.ckpt", best.name}
    assert {a.name for a in models} == {f"model-{run_id}"}  # one artifact, two versions
    assert "best" in by_file[best.name].aliases and list(by_file["last.ckpt"].aliases) == ["latest"]
    for name, artifact in by_file.items():
        (entry,) = artifact.manifest.contents
        assert entry.path == "model.ckpt" and entry.digest == _md5(run.dir / "checkpoints" / name)


def test_evaluation_logs_a_samples_table_and_class_histograms(run: SimpleNamespace) -> None:
    """The table shows the evaluated samples (the callback's seed, re-drawn from last.ckpt) with the
    classifier's prediction and the nearest-training distance; the histograms are the coverage
    numbers of the evaluation's own record."""
    logged = history(run.record)
    final = json.loads((run.dir / "eval" / "final.json").read_text())
    k = final["num_classes"]
    for key in ("class_hist", "real_class_hist"):
        assert logged[f"eval/{key}/_type"] == "histogram"
        assert logged[f"eval/{key}/bins"] == list(range(k + 1))  # one bin per class
        assert logged[f"eval/{key}/values"] == pytest.approx(final[key])
    assert logged["eval/samples/_type"] == "table-file" and logged["eval/samples/nrows"] == 32
    # the table's own artifact: its json and one PNG per row, staged for `wandb sync`
    (table,) = [a for a in artifacts(run.record) if a.type == "run_table"]
    files = {e.path: Path(e.local_path) for e in table.manifest.contents}
    content = json.loads(files["eval/samples.table.json"].read_text())
    assert content["columns"] == ["image", "predicted_class", "confidence", "nn_train_distance"]
    rows = content["data"]
    model = api.load(run.dir / "checkpoints" / "last.ckpt")
    expected = sample_share(model, 64, SEED)[0][:32]  # the evaluation's images: seeded chunks (evaluator)
    shown = torch.stack([torch.from_numpy(np.asarray(Image.open(files[row[0]["path"]]))) for row in rows])
    assert torch.equal(shown.reshape(expected.shape), expected)
    predicted = torch.tensor([row[1] for row in rows])
    assert all(1 / k - 1e-4 <= row[2] <= 1 for row in rows) and all(row[3] >= 0 for row in rows)
    # the table's predictions are a part of the counts behind the evaluation's class histogram
    counts = torch.bincount(predicted, minlength=k)
    assert all(c <= round(f * final["num_samples"]) for c, f in zip(counts.tolist(), final["class_hist"], strict=True))


def test_genbench_eval_adds_its_samples_table_to_the_runs_wandb_run(
    run: SimpleNamespace, monkeypatch: pytest.MonkeyPatch
) -> None:
    from genbench.evaluate import evaluate

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DATA_DIR", str(run.root / "wandb_data"))
    settings = ["kid_subsets=5", "kid_subset_size=32", "isc_splits=2", "likelihood.enabled=false"]
    settings += ["extractor_training.epochs=1", "extractor_training.feature_dim=16", "extractor_training.width=8"]
    overrides = [f"ckpt_path={run.dir / 'checkpoints' / 'last.ckpt'}", "metrics.num_samples=64", "latent_grids=false"]
    overrides += [f"metrics.{s}" for s in settings] + ["metrics.extractor_training.min_steps=20"]
    result = evaluate(api.compose([*overrides, f"paths.cache_dir={run.root / 'cache'}"], "eval"))
    _flush()
    run_id = (run.dir / "wandb_run_id").read_text().strip()
    assert result["wandb_run_id"] == run_id
    training, evaluation = sorted((run.dir / "wandb").glob(f"offline-run-*-{run_id}/run-*.wandb"))
    logged = history(evaluation)
    assert logged["eval/samples/_type"] == "table-file" and logged["eval/samples/nrows"] == 32
    assert logged["eval/class_hist/values"] == pytest.approx(result["class_hist"])
    assert logged["eval/fid"] == pytest.approx(result["fid"])


def test_report_is_an_artifact(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import wandb

    from genbench.loggers import log_file_artifact

    monkeypatch.setenv("WANDB_DATA_DIR", str(tmp_path / "wandb_data"))
    report = tmp_path / "report.html"
    report.write_text("<html>leaderboard</html>")
    run = wandb.init(project="genbench", dir=str(tmp_path), mode="offline", job_type="benchmark-report")
    log_file_artifact(run, report, "report-bench1", "report")
    run.finish()
    _flush()
    (artifact,) = artifacts(next(tmp_path.glob("wandb/offline-run-*/run-*.wandb")))
    assert (artifact.name, artifact.type) == ("report-bench1", "report")
    (entry,) = artifact.manifest.contents
    assert entry.path == "report.html" and entry.digest == _md5(report)


def test_benchmark_training_jobs_log_into_its_project_and_group(tmp_path: Path) -> None:
    from genbench.benchmark import training_command

    cfg = api.compose(["wandb=true", "wandb_project=my-bench", "budget=tiny"], "benchmark", output_dir=tmp_path / "b7")
    cmd = training_command(cfg, "vae", tmp_path / "b7" / "runs" / "vae")
    overrides = [c for c in cmd if c.startswith("logger")]
    assert overrides == ["logger=[csv,wandb]", "logger.wandb.project=my-bench", "logger.wandb.group=b7"]
    train_cfg = api.compose(["model=vae", *overrides])  # what the job composes
    assert (train_cfg.logger.wandb.project, train_cfg.logger.wandb.group) == ("my-bench", "b7")


KEY = "a" * 40  # the shape of a W&B API key


@pytest.fixture
def clean_wandb_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """No W&B credentials anywhere: a fresh home, netrc and W&B config dir; W&B's process-wide
    settings re-read (W&B reads its environment once per process)."""
    import wandb

    for var in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_BASE_URL", "WANDB_IDENTITY_TOKEN_FILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("NETRC", str(tmp_path / ".netrc"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb_config"))
    wandb.teardown()
    yield tmp_path
    wandb.teardown()


def _fresh(monkeypatch: pytest.MonkeyPatch, **env: str) -> bool:
    import wandb

    from genbench.loggers import wandb_has_credentials

    for name, value in env.items():
        monkeypatch.setenv(name, value)
    wandb.teardown()
    return wandb_has_credentials()


def test_credentials_are_whatever_wandb_itself_finds(
    clean_wandb_env: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from genbench.loggers import wandb_mode

    home = clean_wandb_env
    with caplog.at_level(logging.INFO, logger="genbench"):
        assert wandb_mode() == "offline"
    assert "wandb login" in caplog.text and "--host" in caplog.text  # one line saying how to log in
    # a self-hosted server: its own netrc entry counts, api.wandb.ai's does not
    (home / ".netrc").write_text(f"machine api.wandb.ai\n  login user\n  password {KEY}\n")
    assert _fresh(monkeypatch)
    assert not _fresh(monkeypatch, WANDB_BASE_URL="https://wandb.example.org")
    (home / ".netrc").write_text(f"machine wandb.example.org\n  login user\n  password {KEY}\n")
    assert _fresh(monkeypatch)
    assert wandb_mode() == "online"
    # the server `wandb login --host` saved in W&B's settings file, no environment variable
    monkeypatch.delenv("WANDB_BASE_URL")
    (home / "wandb_config").mkdir()
    (home / "wandb_config" / "settings").write_text("[default]\nbase_url = https://wandb.example.org\n")
    assert _fresh(monkeypatch)
    (home / ".netrc").unlink()
    assert not _fresh(monkeypatch)
    # an identity token file (workload identity federation), and a key in the environment
    token = home / "token.jwt"
    token.write_text("header.payload.signature")
    assert _fresh(monkeypatch, WANDB_IDENTITY_TOKEN_FILE=str(token))
    monkeypatch.delenv("WANDB_IDENTITY_TOKEN_FILE")
    assert _fresh(monkeypatch, WANDB_API_KEY=KEY)
    # a key W&B cannot use is one line, not a run that fails at its first upload
    with pytest.raises(GenbenchError, match="wandb login --relogin") as e:
        _fresh(monkeypatch, WANDB_API_KEY="x")
    assert "\n" not in str(e.value)
