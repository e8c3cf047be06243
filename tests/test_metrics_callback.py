"""The evaluation callback: logs eval/* to every logger, feeds ModelCheckpoint, changes nothing."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.loggers import CSVLogger

from genbench.callbacks import EvaluationCallback
from genbench.config import build
from genbench.diffusion import DDIMSampler
from genbench.metrics import ensure_in_domain_extractor


@pytest.fixture(scope="module")
def extractor(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    from genbench.data import SyntheticDataModule

    cache = tmp_path_factory.mktemp("cb_cache")
    dm = SyntheticDataModule(num_train=512, num_test=256, batch_size=32)
    path = ensure_in_domain_extractor(
        dm, cache, epochs=3, batch_size=64, feature_dim=16, width=8, lr=5e-3, min_steps=0, progress=False
    )
    return SimpleNamespace(path=path, cache=cache)


#: a few test images and Monte-Carlo samples: the likelihood's wiring, not its precision
SMALL_LIKELIHOOD = {"num_images": 32, "iwae_k": 4, "timesteps": 3, "batch_size": 32}


def make_callback(extractor: SimpleNamespace, out: Path, **kwargs) -> EvaluationCallback:
    metrics = {
        "extractor": "in-domain",
        "extractor_path": str(extractor.path),
        "kid_subsets": 5,
        "isc_splits": 2,
        "likelihood": SMALL_LIKELIHOOD,
    }
    return EvaluationCallback(
        num_samples=kwargs.pop("num_samples", 64),
        metrics=metrics,
        cache_dir=str(extractor.cache),
        output_dir=str(out),
        **kwargs,
    )


def fit(cfg, callbacks: list, out: Path, epochs: int = 2) -> tuple[pl.Trainer, pl.LightningModule]:
    pl.seed_everything(cfg.seed, workers=True)
    datamodule = build(cfg.data, "data")
    model = build(cfg.model, "model")
    trainer = pl.Trainer(
        accelerator="cpu",
        max_epochs=epochs,
        limit_train_batches=3,
        limit_val_batches=1,
        logger=CSVLogger(str(out), name="csv"),
        callbacks=callbacks,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=any(isinstance(c, ModelCheckpoint) for c in callbacks),
        log_every_n_steps=1,
    )
    trainer.fit(model, datamodule=datamodule)
    return trainer, model


def test_callback_logs_every_metric_and_checkpoint_can_monitor_fid(train_cfg, tmp_path):
    # no extractor yet: the first evaluation (inside Lightning's validation loop) trains it
    training = {"epochs": 3, "batch_size": 64, "feature_dim": 16, "width": 8, "lr": 5e-3, "min_steps": 0}
    metrics = {
        "extractor": "in-domain",
        "kid_subsets": 5,
        "isc_splits": 2,
        "extractor_training": training,
        "likelihood": SMALL_LIKELIHOOD,
    }
    cb = EvaluationCallback(
        num_samples=64, metrics=metrics, cache_dir=str(tmp_path / "cache"), output_dir=str(tmp_path)
    )
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="eval/fid", mode="min", save_top_k=1)
    # a VAE whose decoder is a distribution over the 256 levels: it has a likelihood in bits/dim
    trainer, _ = fit(train_cfg("model=vae", "model.likelihood=discretized_logistic"), [cb, ckpt], tmp_path)

    scalars = ("fid", "kid_mean", "kid_std", "is_mean", "is_std", "precision", "recall", "num_samples")
    coverage = ("classes_covered", "num_classes", "class_kl", "nn_train_median", "nn_heldout_median", "memorised_frac")
    for name in (*scalars, *coverage, "bpd", "bpd_elbo", "bpd_iwae", "iwae_k", "likelihood_images"):
        assert f"eval/{name}" in trainer.callback_metrics, name
    assert float(trainer.callback_metrics["eval/num_samples"]) == 64
    assert ckpt.best_model_score is not None and torch.isfinite(ckpt.best_model_score)
    assert Path(ckpt.best_model_path).is_file()

    # to the logger: one eval/fid per epoch, at the step it was measured
    with open(next((tmp_path / "csv").rglob("metrics.csv"))) as f:
        rows = list(csv.DictReader(f))
    fids = [r for r in rows if r.get("eval/fid")]
    assert len(fids) == 2 and int(fids[0]["step"]) < int(fids[1]["step"])
    # and to the run directory, with the extractor and sample count
    lines = (tmp_path / "eval" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2
    first, record = json.loads(lines[0]), json.loads(lines[-1])
    assert record["extractor"] == "in-domain:synthetic_32px_1ch" and record["num_samples"] == 64
    assert record["source"] == "callback" and record["step"] == trainer.global_step and "evaluated_at" in record
    for key in (*coverage, "class_hist", "real_class_hist", "closest_pairs"):
        assert key in first and key in record, key
    assert len(record["class_hist"]) == record["num_classes"] and sum(record["class_hist"]) == pytest.approx(1)
    # the likelihood only at the final evaluation (metrics.likelihood.when=final), added to its record
    assert "bpd" not in first and record["likelihood_images"] == 32 and record["iwae_k"] == 4
    assert "logistic" in record["likelihood"]
    assert record["bpd_iwae"] <= record["bpd_elbo"] + 1e-9 and record["bpd"] == record["bpd_iwae"]
    assert (tmp_path / record["closest_pairs"]).is_file() and record["closest_pairs"].startswith("eval/closest_pairs/")
    final = json.loads((tmp_path / "eval" / "final.json").read_text())
    assert final["step"] == trainer.global_step and final["fid"] == pytest.approx(
        float(trainer.callback_metrics["eval/fid"])
    )
    assert final["bpd"] == record["bpd"] == pytest.approx(float(trainer.callback_metrics["eval/bpd"]))


def test_callback_leaves_rng_streams_and_train_mode_untouched(train_cfg, extractor, tmp_path):
    cfg = train_cfg("model=vae")
    # the same seed with and without evaluations between steps gives bit-identical weights
    _, with_eval = fit(
        cfg, [make_callback(extractor, tmp_path / "a", every_n_train_steps=1, every_n_epochs=0)], tmp_path / "a", 1
    )
    _, without = fit(cfg, [], tmp_path / "b", 1)
    a, b = with_eval.state_dict(), without.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    # directly: RNG states (torch, numpy, random) and every submodule's mode survive an evaluation
    cb = make_callback(extractor, tmp_path / "c")
    trainer, model = fit(cfg, [cb], tmp_path / "c", 1)
    model.train()
    model.decoder.eval()  # a frozen part must stay frozen
    torch.manual_seed(123), np.random.seed(123), random.seed(123)
    states = torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate()
    cb.evaluate(trainer, model)
    assert torch.equal(torch.get_rng_state(), states[0])
    assert np.array_equal(np.random.get_state()[1], states[1]) and random.getstate() == states[2]
    assert model.training and model.encoder.training and not model.decoder.training


def test_the_callbacks_scored_images_are_api_sample_of_its_seed(train_cfg, extractor, tmp_path, monkeypatch):
    """Every image a training evaluation scores (here of a conditional model: every class in turn)
    is ``api.sample`` of the callback's seed and count, so genbench-sample can write them out."""
    from genbench import api
    from genbench.metrics import Evaluator

    scored: list[torch.Tensor] = []
    real_extract = Evaluator.extract

    def recording(self: Evaluator, images: torch.Tensor, labelled: bool = False) -> dict[str, torch.Tensor]:
        scored.append(images.clone())
        return real_extract(self, images, labelled)

    monkeypatch.setattr(Evaluator, "extract", recording)
    cb = make_callback(extractor, tmp_path, num_samples=70, seed=77, every_n_epochs=0)
    _, model = fit(train_cfg("model=vae", "model.conditional=true"), [cb], tmp_path, 1)
    assert scored and model.num_classes is not None
    expected = api.sample(model, 70, seed=77)
    assert all(torch.equal(images, expected) for images in scored)
    assert not torch.equal(api.sample(model, 70, seed=78), expected)


def test_callback_evaluates_a_ddpm_with_its_own_sampler_and_keeps_the_ema(train_cfg, extractor, tmp_path):
    cb = make_callback(extractor, tmp_path, sampler=DDIMSampler(steps=2))
    trainer, model = fit(train_cfg("model=ddpm"), [cb], tmp_path, 1)
    assert torch.isfinite(trainer.callback_metrics["eval/fid"])
    assert cb.sample_kwargs["sampler"].schedule is model.schedule  # the configured sampler was used
    ema = {k: v.clone() for k, v in model.ema.state_dict().items()}
    cb.evaluate(trainer, model)
    assert all(torch.equal(ema[k], v) for k, v in model.ema.state_dict().items())


def test_choose_sampler_takes_the_fastest_within_the_sampling_noise_of_the_best() -> None:
    """Best FID 10.0, noise std 0.5, 2 sigmas: FIDs up to 11.0 count as equal; of those the fastest
    wins. Hand-computed: ddim-10 (10.9 <= 11.0, 100 img/s) beats ddim-50 (10.0, 20 img/s); ddim-5
    (11.2) is outside; the timing-only ancestral sampler is not scored."""
    from genbench.callbacks.sampling_benchmark import choose_sampler

    entries = [
        {"sampler": "ddim-50", "images_per_second": 20.0, "metrics": {"eval/fid": 10.0}},
        {"sampler": "ddim-5", "images_per_second": 200.0, "metrics": {"eval/fid": 11.2}},
        {"sampler": "ddim-10", "images_per_second": 100.0, "metrics": {"eval/fid": 10.9}},
        {"sampler": "ancestral-1000", "images_per_second": 1.0},
    ]
    choice = choose_sampler(entries, noise_std=0.5)
    assert choice["recommended"] == "ddim-10" and choice["best"] == "ddim-50"
    assert choice["threshold"] == pytest.approx(11.0)
    assert [e.get("within_noise") for e in entries] == [True, False, True, None]
    assert [e.get("recommended") for e in entries] == [False, False, True, None]
    # no noise at all: only the best itself is "within" it
    assert choose_sampler(entries, noise_std=0.0)["recommended"] == "ddim-50"
    assert choose_sampler(entries[3:], noise_std=0.5)["recommended"] is None
