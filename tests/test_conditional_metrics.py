"""Conditional metrics: class accuracy and intra-class FID against independent computations, the
evaluator applying the in-domain classifier as a hand-run would, the evaluation callback on a
small conditional family (balanced classes, guidance sweep), per-class grids, and the report's
conditional section."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import pytorch_lightning as pl
import scipy.linalg
import torch

from conditional_standin import SPEC, ClassBank
from genbench.errors import GenbenchError
from genbench.metrics import conditional as cond
from genbench.metrics.evaluator import Evaluator
from genbench.metrics.in_domain import build_domain_cnn, in_domain_spec, load_extractor_file


def hand_fid(a: np.ndarray, b: np.ndarray) -> float:
    """The Fréchet distance written out with scipy's matrix square root (not torch-fidelity's eigenvalues)."""
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def test_class_accuracy_is_the_per_class_share_of_correct_predictions() -> None:
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(50, 4, generator=g)
    labels = torch.tensor([0, 1, 2] * 16 + [0, 1])  # class 3 never asked for
    out = cond.class_accuracy(logits, labels, 4)
    predicted = logits.argmax(1).tolist()
    by_hand = []
    for c in range(3):
        asked = [i for i, y in enumerate(labels.tolist()) if y == c]
        by_hand.append(sum(predicted[i] == c for i in asked) / len(asked))
    assert out["cond_accuracy_per_class"][:3] == pytest.approx(by_hand) and out["cond_accuracy_per_class"][3] is None
    assert out["cond_accuracy"] == pytest.approx(sum(by_hand) / 3)
    with pytest.raises(GenbenchError, match="outside the 4 classes"):
        cond.class_accuracy(logits, torch.full((50,), 4), 4)


def test_intra_class_fid_equals_fid_run_per_class_by_hand() -> None:
    g = torch.Generator().manual_seed(2)
    d, k = 5, 3
    real_labels = torch.arange(300) % k
    real = torch.randn(300, d, generator=g) + real_labels[:, None].float()  # class-dependent means
    labels = torch.arange(60) % k
    gen = torch.randn(60, d, generator=g) * 1.3 + labels[:, None].float() * 0.5
    out = cond.intra_class_fid(gen, labels, real, real_labels, k)
    by_hand = [hand_fid(gen[labels == c].double().numpy(), real[real_labels == c].double().numpy()) for c in range(k)]
    assert out["intra_fid_per_class"] == pytest.approx(by_hand, rel=1e-4)
    assert out["intra_fid"] == pytest.approx(np.mean(by_hand), rel=1e-4)
    assert out["intra_fid_samples_per_class"] == 20
    # the unconditional FID of the same features is a different number: the classes matter
    from genbench.metrics.fidelity import fid_from_features

    assert abs(fid_from_features(gen, real) - out["intra_fid"]) > 0.1
    with pytest.raises(GenbenchError, match="more images per class than feature dimensions"):
        cond.intra_class_fid(gen[:12], labels[:12], real, real_labels, k)


def test_balanced_indices_and_labels() -> None:
    labels = torch.tensor([2, 0, 0, 1, 2, 1, 0, 2, 1])
    idx = cond.balanced_indices(labels, 2, 3)
    assert labels[idx].tolist() == [0, 1, 2, 0, 1, 2] and idx.tolist() == [1, 3, 0, 2, 5, 4]
    assert cond.balanced_labels(7, 3).tolist() == [0, 1, 2, 0, 1, 2, 0]
    with pytest.raises(GenbenchError, match="4 real images of class 0 but the split has 3"):
        cond.balanced_indices(labels, 4, 3)


def test_guidance_sweep_keeps_the_sweep_metrics_in_order() -> None:
    seen = []

    def evaluate_at(w: float) -> dict:
        seen.append(w)
        return {"fid": 10 - w, "precision": 0.5, "recall": 0.4, "cond_accuracy": w / 10, "kid_mean": 1.0}

    sweep = cond.guidance_sweep([0, 1, 4], evaluate_at)
    assert seen == [0.0, 1.0, 4.0]
    assert sweep[2] == {"guidance": 4.0, "fid": 6.0, "precision": 0.5, "recall": 0.4, "cond_accuracy": 0.4}
    assert cond.sweep_scalars(sweep)["eval/guidance_w4/fid"] == 6.0


def test_guidance_is_a_capability_of_conditional_families_only(standin_registered: None) -> None:
    from genbench.registry import FamilySpec

    with pytest.raises(GenbenchError, match="guidance=True needs conditional=True"):
        FamilySpec(name="toy", model="x:Y", guidance=True)
    assert cond.guided(ClassBank(1, 8, num_classes=4))
    assert not cond.guided(ClassBank(1, 8, conditional=False))  # the family guides, but this model has no classes


# --- with the in-domain extractor ------------------------------------------------------------------


@pytest.fixture(scope="module")
def extractor(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    from genbench.data import SyntheticDataModule
    from genbench.metrics import ensure_in_domain_extractor

    cache = tmp_path_factory.mktemp("cond_cache")
    dm = SyntheticDataModule(num_train=512, num_test=256, batch_size=32)
    path = ensure_in_domain_extractor(
        dm, cache, epochs=8, batch_size=64, feature_dim=16, width=8, lr=5e-3, min_steps=0, progress=False
    )
    dm.setup()
    return SimpleNamespace(path=path, cache=cache, dm=dm)


METRICS = {"extractor": "in-domain", "kid": False, "isc": False, "cache": False, "memorisation": {"enabled": False}}


def test_evaluator_applies_the_classifier_and_fid_as_a_hand_run_does(extractor: SimpleNamespace) -> None:
    dm = extractor.dm
    real, real_labels = dm.real_images("test"), dm.dataset("test").labels
    evaluator = Evaluator(
        real, in_domain_spec(extractor.path), {**METRICS, "extractor_path": str(extractor.path)},
        real_labels=real_labels, num_classes=4,
    )  # fmt: skip
    # "generated": real training images, each asked for its true class or (a third of them) another one
    images, true = dm.real_images("train")[:240], dm.dataset("train").labels[:240]
    asked = torch.where(torch.arange(240) % 3 == 0, (true + 1) % 4, true)
    result = evaluator.evaluate(images, labels=asked)

    net = build_domain_cnn(load_extractor_file(extractor.path))
    with torch.no_grad():
        features, logits = net(images.float() / 127.5 - 1)
        real_features, _ = net(real.float() / 127.5 - 1)
    predicted = logits.argmax(1)
    per_class = [float((predicted[asked == c] == c).double().mean()) for c in range(4)]
    assert result["cond_accuracy_per_class"] == pytest.approx(per_class)
    assert result["cond_accuracy"] == pytest.approx(np.mean(per_class))
    fids = [
        hand_fid(features[asked == c].double().numpy(), real_features[real_labels == c].double().numpy())
        for c in range(4)
    ]
    assert result["intra_fid_per_class"] == pytest.approx(fids, rel=1e-3)
    assert result["intra_fid"] == pytest.approx(np.mean(fids), rel=1e-3)
    # without labels (an unconditional model) there are no conditional metrics
    assert "cond_accuracy" not in evaluator.evaluate(images) and "intra_fid" not in evaluator.evaluate(images)


@pytest.fixture
def standin_registered(monkeypatch: pytest.MonkeyPatch) -> None:
    """The stand-in's FamilySpec in the registry for one test (genbench's own families stay)."""
    from genbench import registry

    registry.families()
    monkeypatch.setitem(registry._REGISTRY, SPEC.name, SPEC)


@pytest.fixture(scope="module")
def conditional_run(extractor: SimpleNamespace, tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """A tiny run of the stand-in conditional family (registered while this module runs), with the
    evaluation callback (guidance sweep at w = 0 and 3) and the sample grid, written as a run
    directory the report can read."""
    import yaml
    from pytorch_lightning.loggers import CSVLogger

    from genbench import registry
    from genbench.callbacks import EvaluationCallback, SampleGrid
    from genbench.data import SyntheticDataModule

    run_dir = tmp_path_factory.mktemp("cond_run")
    metrics = {
        **METRICS,
        "extractor_path": str(extractor.path),
        "conditional": {"guidance_scales": [0, 3], "guidance_samples": 120},
    }
    data = {"_target_": "genbench.data.SyntheticDataModule", "num_train": 512, "num_test": 256, "batch_size": 32}
    with pytest.MonkeyPatch.context() as mp:
        registry.families()  # genbench's own first; the stand-in joins them for this module only
        mp.setitem(registry._REGISTRY, SPEC.name, SPEC)
        cb = EvaluationCallback(
            num_samples=200, metrics=metrics, cache_dir=str(extractor.cache), output_dir=str(run_dir)
        )
        grid = SampleGrid(num_samples=12, every_n_epochs=1, interpolation_rows=0)
        pl.seed_everything(0)
        model = ClassBank(1, 32, num_classes=4)
        trainer = pl.Trainer(
            accelerator="cpu", max_epochs=1, limit_train_batches=12, limit_val_batches=0,
            logger=CSVLogger(str(run_dir), name="csv"), callbacks=[cb, grid], enable_progress_bar=False,
            enable_model_summary=False, enable_checkpointing=False, default_root_dir=str(run_dir),
        )  # fmt: skip
        trainer.fit(model, datamodule=SyntheticDataModule(**{k: v for k, v in data.items() if k != "_target_"}))
        config = {
            "seed": 0,
            "data": data,
            "model": {"_target_": "conditional_standin.ClassBank", "conditional": True, "num_classes": 4},
            "callbacks": {"evaluation": {"num_samples": 200, "metrics": metrics, "cache_dir": str(extractor.cache)}},
        }
        (run_dir / "config_resolved.yaml").write_text(yaml.safe_dump(config))
        (run_dir / "metrics.json").write_text(json.dumps({"family": SPEC.name}))
        yield SimpleNamespace(dir=run_dir, trainer=trainer, model=model, callback=cb, metrics=metrics)


def test_callback_scores_a_conditional_model_with_balanced_classes_and_sweeps_guidance(
    conditional_run: SimpleNamespace,
) -> None:
    from genbench.callbacks import EvaluationCallback

    run_dir, trainer, model = conditional_run.dir, conditional_run.trainer, conditional_run.model
    record = json.loads((run_dir / "eval" / "final.json").read_text())
    assert record["num_samples"] == 200 and record["intra_fid_samples_per_class"] == 50  # balanced: 200 / 4
    assert len(record["cond_accuracy_per_class"]) == 4 and 0 <= record["cond_accuracy"] <= 1
    for key in ("eval/cond_accuracy", "eval/intra_fid", "eval/guidance_w0/fid", "eval/guidance_w3/cond_accuracy"):
        assert key in trainer.callback_metrics, key
    sweep = record["guidance"]
    assert [p["guidance"] for p in sweep] == [0.0, 3.0] and record["guidance_samples"] == 120
    assert {"fid", "precision", "recall", "cond_accuracy", "intra_fid"} <= set(sweep[0])

    # the model's classes matter: a copy whose classes are shuffled scores far worse
    shuffled = ClassBank(1, 32, num_classes=4)
    order = torch.tensor([1, 2, 3, 0])
    shuffled.bank, shuffled.count = model.bank[order], model.count[order]
    cb = EvaluationCallback(
        num_samples=200, metrics=conditional_run.metrics, cache_dir=str(conditional_run.callback.cache_dir),
        output_dir=str(run_dir),
    )  # fmt: skip
    cb._evaluator = conditional_run.callback._evaluator
    stub_trainer = SimpleNamespace(world_size=1, global_rank=0, is_global_zero=True, global_step=0, loggers=[])
    result = cb.evaluate(stub_trainer, shuffled)
    assert record["cond_accuracy"] > 0.5 and result["cond_accuracy"] < record["cond_accuracy"] - 0.3
    assert result["intra_fid"] > record["intra_fid"]

    # the sample grid of a conditional model: a row per class
    from PIL import Image

    png = Image.open(run_dir / "samples" / "final.png")
    cell = 32 + 2
    assert png.height == 4 * cell + 2 and png.width == 3 * cell + 2  # 4 classes x 12 // 4 per class


def test_report_renders_the_conditional_section_from_the_runs_files(
    conditional_run: SimpleNamespace, tmp_path: Path
) -> None:
    from genbench.report.build import write_report
    from genbench.report.collect import find_runs
    from genbench.report.floor import real_floor

    runs = find_runs([conditional_run.dir])
    floor, _ = real_floor(runs)
    assert floor is not None and floor["num_samples"] == 200  # 50 real training images of each of the 4 classes
    assert floor["intra_fid_samples_per_class"] == 50 and floor["intra_fid"] >= 0
    record = runs[0].final
    report = write_report(runs, tmp_path, floor=floor)
    rows = {r["family"]: r for r in report["rows"]}
    assert rows["class_bank"]["intra_fid"] == pytest.approx(record["intra_fid"])
    assert rows["real vs real (floor)"]["cond_accuracy"] == pytest.approx(floor["cond_accuracy"])
    html = (tmp_path / "report.html").read_text()
    conditional = html[html.index("<h2>Conditional</h2>") :]
    assert "class accuracy" in conditional and "intra-class FID" in conditional
    assert "a row per class" in html and "Guidance sweep" in html
    assert (tmp_path / "guidance_curves.png").is_file()
    sentence = next(s for s in report_verdict(report, runs) if s.startswith("Conditional quality"))
    assert "class_bank" in sentence and "best at w=" in sentence
    assert "intra-class FID" in (tmp_path / "leaderboard.md").read_text()


def report_verdict(report: dict, runs: list) -> list[str]:
    from genbench.report.verdict import verdict

    return verdict(report["rows"], runs)


def test_genbench_eval_labels_are_one_class_or_classes_in_turn(standin_registered: None) -> None:
    from omegaconf import OmegaConf

    from genbench.evaluate import evaluation_labels, guidance_kwargs

    model = ClassBank(1, 8, num_classes=4)
    assert evaluation_labels(model, 6, None).tolist() == [0, 1, 2, 3, 0, 1]  # balanced
    assert evaluation_labels(model, 4, 3).tolist() == [3, 3, 3, 3]
    assert evaluation_labels(model, 5, OmegaConf.create([0, 3])).tolist() == [0, 3, 0, 3, 0]
    with pytest.raises(GenbenchError, match="Classes must lie in 0..3"):
        evaluation_labels(model, 4, 7)
    with pytest.raises(GenbenchError, match="unconditional"):
        evaluation_labels(ClassBank(1, 8, conditional=False), 4, 1)
    assert guidance_kwargs(OmegaConf.create({"guidance": 2}), model) == {"guidance": 2.0}
    with pytest.raises(GenbenchError, match="takes no guidance"):
        guidance_kwargs(OmegaConf.create({"guidance": 2}), ClassBank(1, 8, conditional=False))


def test_conditional_benchmark_reports_accuracy_intra_fid_guidance_and_class_grids(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """One tiny conditional benchmark of a guided family (its sampling-speed table and likelihood
    left out: they are the unconditional benchmark's tests)."""
    from conftest import run_tiny_benchmark

    cache = tmp_path_factory.mktemp("cond_bench_cache")
    out = run_tiny_benchmark(
        tmp_path_factory.mktemp("cond_bench") / "report",
        cache,
        "conditional=true",
        "families=[ddpm]",
        f'train_overrides=["paths.cache_dir={cache}","callbacks.sampling=null",'
        '"++callbacks.evaluation.metrics.likelihood.when=never"]',
    )
    family = "ddpm"
    record = json.loads((out / "runs" / family / "0" / "eval" / "final.json").read_text())
    config = (out / "runs" / family / "0" / "config_resolved.yaml").read_text()
    assert "conditional: true" in config and "num_classes: 4" in config
    assert record["intra_fid_samples_per_class"] == 50 and [p["guidance"] for p in record["guidance"]] == [0.0, 2.0]
    rows = {r["family"]: r for r in json.loads((out / "leaderboard.json").read_text())}
    assert rows[family]["intra_fid"] == pytest.approx(record["intra_fid"])
    floor = rows["real vs real (floor)"]
    assert floor["intra_fid"] is not None and floor["cond_accuracy"] is not None
    html = (out / "report.html").read_text()
    assert "class-conditional" in html and "<h2>Conditional</h2>" in html and "Conditional quality" in html
    assert (out / "guidance_curves.png").is_file() and "a row per class" in html
    from PIL import Image

    grid = Image.open(out / "runs" / family / "0" / "samples" / "final.png")  # 16 samples: 4 classes x 4
    assert grid.size == (4 * 34 + 2, 4 * 34 + 2)
