"""Metrics: correctness against independent formulas, caching, extractors and input checks.

Everything runs on the synthetic shapes dataset with a tiny in-domain extractor trained once per
session into a temporary cache (a few seconds on 2 CPU cores).
"""

from __future__ import annotations

import math
import time
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import reference_metrics as ref  # tests/: the formulas written independently of torch-fidelity
from genbench import GenbenchError
from genbench.data import SyntheticDataModule
from genbench.metrics import (
    RESULT_NAMES,
    Evaluator,
    InDomainExtractor,
    MetricsConfig,
    UInt8ImageDataset,
    check_images,
    compute_metrics,
    ensure_in_domain_extractor,
    in_domain_spec,
    inception_spec,
    resolve_extractor,
)
from genbench.metrics.in_domain import build_domain_cnn, load_extractor_file
from genbench.metrics.in_domain_training import classifier_accuracy, extractor_report
from genbench.metrics.inception import INCEPTION_FILENAME
from genbench.metrics.real_cache import RealFeatureCache

FAST = {"kid_subsets": 10, "isc_splits": 2}


@pytest.fixture(scope="session")
def synth(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    cache = tmp_path_factory.mktemp("metrics_cache")
    dm = SyntheticDataModule(num_train=768, num_test=512, batch_size=64)
    start = time.perf_counter()
    training = {"epochs": 3, "batch_size": 64, "feature_dim": 16, "width": 8, "lr": 5e-3, "min_steps": 0}
    path = ensure_in_domain_extractor(dm, cache, progress=False, **training)
    seconds = time.perf_counter() - start
    real = dm.real_images("test")
    spec = in_domain_spec(path)
    return SimpleNamespace(dm=dm, cache=cache, path=path, spec=spec, real=real, seconds=seconds, training=training)


def features_of(path, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The extractor's (features, logits), computed here independently of torch-fidelity."""
    ext = InDomainExtractor("genbench-in-domain", ["features", "logits"], feature_extractor_weights_path=str(path))
    with torch.no_grad():
        return ext(images)


def noisy(images: torch.Tensor, sigma: float, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = images.float() / 127.5 - 1
    return (x + sigma * torch.randn(x.shape, generator=g)).clamp(-1, 1)


# --- the in-domain extractor ---------------------------------------------------------------------


def test_in_domain_extractor_accuracy_recorded_and_reproducible(synth):
    report = extractor_report(synth.path)
    # 4 shape classes, 3 epochs of a width-8 CNN: ~0.85-0.95 test accuracy (chance is 0.25).
    assert report["test_accuracy"] >= 0.75
    assert report["weights_sha256"] == synth.spec.weights_hash
    net = build_domain_cnn(load_extractor_file(synth.path))
    labels = synth.dm.dataset("test").labels
    assert classifier_accuracy(net, synth.real, labels) == pytest.approx(report["test_accuracy"])
    assert synth.spec.feature_dim == 16 and synth.spec.input_shape == (1, 32, 32)


def test_in_domain_extractor_is_reused_not_retrained(synth, monkeypatch):
    import genbench.metrics.in_domain_training as ext

    def boom(*a, **k):
        raise AssertionError("retrained although the extractor exists")

    monkeypatch.setattr(ext, "train_in_domain_extractor", boom)
    assert ensure_in_domain_extractor(synth.dm, synth.cache, **synth.training) == synth.path


def test_missing_extractor_without_training_is_a_clear_error(synth, tmp_path):
    with pytest.raises(GenbenchError, match="genbench-train-extractor data=synthetic"):
        ensure_in_domain_extractor(synth.dm, tmp_path, train_if_missing=False)


def test_corrupt_extractor_file_is_a_clear_error(tmp_path):
    bad = tmp_path / "extractor.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(GenbenchError, match="corrupt"):
        in_domain_spec(bad)


def test_extractor_weights_of_wrong_shape_are_a_clear_error(synth, tmp_path):
    payload = load_extractor_file(synth.path)
    payload["state_dict"]["head.2.weight"] = torch.zeros(7, 16)
    torch.save(payload, tmp_path / "extractor.pt")
    with pytest.raises(GenbenchError, match="do not fit"):
        InDomainExtractor(
            "genbench-in-domain", ["features"], feature_extractor_weights_path=str(tmp_path / "extractor.pt")
        )


# --- correctness -------------------------------------------------------------------------------


def test_real_vs_real_floor_is_far_below_noise(synth):
    ev = Evaluator(synth.real[256:], synth.spec, {**FAST, "cache": False})
    floor = ev.evaluate(synth.real[:256])["fid"]
    noise = torch.randint(0, 256, (256, 1, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    vs_noise = ev.evaluate(noise)["fid"]
    assert 0 <= floor < 0.05 * vs_noise, (floor, vs_noise)


def test_fid_rises_monotonically_with_noise(synth):
    ev = Evaluator(
        synth.real[256:], synth.spec, {"fid": True, "kid": False, "isc": False, "prc": False, "cache": False}
    )
    fids = [ev.evaluate(noisy(synth.real[:256], s))["fid"] for s in (0.0, 0.1, 0.2, 0.4, 0.8)]
    assert all(a < b for a, b in zip(fids, fids[1:], strict=False)), fids


def test_reported_fid_equals_independent_scipy_frechet_distance(synth):
    gen, real = noisy(synth.real[:256], 0.15), synth.real[256:]
    reported = compute_metrics(gen, real, synth.spec, {"kid": False, "isc": False, "prc": False, "cache": False})["fid"]
    from genbench.data import to_uint8

    f_gen, _ = features_of(synth.path, to_uint8(gen))
    f_real, _ = features_of(synth.path, real)
    expected = ref.fid_from_features(f_gen, f_real)
    assert reported == pytest.approx(expected, rel=1e-3)


def test_kid_and_is_match_a_hand_computation_on_a_tiny_case(synth):
    gen, real = synth.real[:20], synth.real[100:120]
    cfg = {"fid": False, "prc": False, "kid_subsets": 1, "kid_subset_size": 20, "isc_splits": 1, "cache": False}
    got = compute_metrics(gen, real, synth.spec, cfg)
    fx, logits = (t.double().numpy() for t in features_of(synth.path, gen))
    fy = features_of(synth.path, real)[0].double().numpy()

    # KID: with one subset holding every sample, it is the unbiased MMD^2 with k(a,b)=(a.b/d+1)^3.
    m, d = len(fx), fx.shape[1]

    def k(a, b):
        return (float(np.dot(a, b)) / d + 1) ** 3

    xx = sum(k(fx[i], fx[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(fy[i], fy[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(fx[i], fy[j]) for i in range(m) for j in range(m)) / (m * m)
    assert got["kid_mean"] == pytest.approx(xx + yy - 2 * xy, rel=1e-4, abs=1e-6)
    assert got["kid_std"] == 0.0

    # IS: exp(mean_x KL(p(y|x) || p(y))) from softmax probabilities, one split.
    p = [np.exp(row - row.max()) / np.exp(row - row.max()).sum() for row in logits]
    py = np.mean(p, axis=0)
    kl = [sum(pi[c] * math.log(pi[c] / py[c]) for c in range(len(py))) for pi in p]
    assert got["is_mean"] == pytest.approx(math.exp(np.mean(kl)), rel=1e-5)
    assert got["is_std"] == 0.0
    assert got["is_mean"] == pytest.approx(ref.inception_score(logits, splits=1)[0], rel=1e-6)


def test_precision_recall_real_vs_real_near_one_and_noise_near_zero(synth):
    ev = Evaluator(synth.real[256:], synth.spec, {"fid": False, "kid": False, "isc": False, "cache": False})
    rr = ev.evaluate(synth.real[:256])
    # k-NN precision/recall of two samples of one distribution is near 1 but not 1: with 256 samples
    # and k=3 it varies run to run between about 0.88 and 0.96 (measured), hence 0.85
    assert rr["precision"] >= 0.85 and rr["recall"] >= 0.85, rr
    noise = torch.randint(0, 256, (256, 1, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    rn = ev.evaluate(noise)
    assert rn["precision"] <= 0.1, rn
    # and torch-fidelity agrees with the independent implementation (input1 = generated)
    f_gen, _ = features_of(synth.path, synth.real[:256])
    f_real, _ = features_of(synth.path, synth.real[256:])
    p, r = ref.precision_recall(f_gen, f_real, k=3)
    assert (rr["precision"], rr["recall"]) == pytest.approx((p, r), abs=1 / 256)


def test_frechet_distance_of_1d_gaussians_is_analytic():
    # d^2 = (m1 - m2)^2 + (s1 - s2)^2 for 1-D Gaussians N(m, s^2)
    got = ref.frechet_distance(np.array([1.0]), np.array([[4.0]]), np.array([-1.0]), np.array([[9.0]]))
    assert got == pytest.approx(4.0 + 1.0)
    s = np.diag([1.0, 2.0, 3.0])
    assert ref.frechet_distance(np.zeros(3), s, np.zeros(3), s) == pytest.approx(0.0, abs=1e-9)


# --- the real-statistics cache ------------------------------------------------------------------


def test_metrics_are_identical_to_torch_fidelity_calculate_metrics(synth):
    # genbench drives torch-fidelity's metric functions itself (to cache the real side's radii);
    # the numbers must be exactly those of its one-call API
    import torch_fidelity

    gen, real = noisy(synth.real[:200], 0.2), synth.real[256:]
    ours = compute_metrics(gen, real, synth.spec, {**FAST, "batch_size": 64})
    theirs = torch_fidelity.calculate_metrics(
        input1=UInt8ImageDataset(check_images(gen, "g")),
        input2=UInt8ImageDataset(real),
        fid=True,
        kid=True,
        isc=True,
        prc=True,
        kid_subsets=FAST["kid_subsets"],
        kid_subset_size=200,
        isc_splits=FAST["isc_splits"],
        batch_size=64,
        cuda=False,
        save_cpu_ram=True,
        verbose=False,
        **synth.spec.torch_fidelity_kwargs(),
    )
    for theirs_key, ours_key in RESULT_NAMES.items():
        # KID: the same subsets, cubes summed in float64 here vs float32 there
        rel, abs_ = (1e-4, 1e-7) if ours_key.startswith("kid") else (1e-12, 1e-15)
        assert ours[ours_key] == pytest.approx(theirs[theirs_key], rel=rel, abs=abs_), ours_key


def test_second_evaluation_does_not_recompute_real_statistics(synth, tmp_path):
    ev = Evaluator(synth.real[256:], synth.spec, FAST, cache_dir=tmp_path, dataset="synthetic", split="test")
    gen = noisy(synth.real[:256], 0.1)
    before = InDomainExtractor.images_seen
    first = ev.evaluate(gen)
    assert InDomainExtractor.images_seen - before == 256 + 256  # generated + real
    before = InDomainExtractor.images_seen
    second = Evaluator(
        synth.real[256:], synth.spec, FAST, cache_dir=tmp_path, dataset="synthetic", split="test"
    ).evaluate(gen)
    assert InDomainExtractor.images_seen - before == 256  # generated only: real features came from the cache
    # cached and cold give identical metrics, every one of them
    skip = {"eval_seconds"}
    assert {k: v for k, v in second.items() if k not in skip} == {k: v for k, v in first.items() if k not in skip}
    # one verified file per item, named by the real set's key and the extractor
    cache = RealFeatureCache(tmp_path / "fidelity", ev.real_key)
    items = {f.name.removeprefix(f"{ev.real_key}-genbench-in-domain-").removesuffix(".pt") for f in cache.files()}
    assert items == {
        "features-features",
        "features-logits",
        "stat-fid-features",
        "prc-radii-k3-features",
        "class-counts",
        "kid-real-sums-n256-m256-s10-seed2020-features",  # KID's real-only kernel sums, per subset
    }
    assert cache.is_complete([f.name for f in cache.files()])
    radii = torch.load(cache.path("genbench-in-domain-prc-radii-k3-features"), weights_only=True)
    real_features = features_of(synth.path, synth.real[256:])[0].double()
    d = torch.cdist(real_features, real_features)
    assert torch.allclose(radii.double(), d.sort(dim=1).values[:, 3], atol=1e-4)  # k=3: index 0 is the point itself


def test_cache_key_changes_with_images_split_and_weights(synth, tmp_path):
    spec = synth.spec
    base = Evaluator(synth.real[256:], spec, FAST, cache_dir=tmp_path, dataset="synthetic", split="test").real_key
    other_imgs = Evaluator(synth.real[255:], spec, FAST, cache_dir=tmp_path, dataset="synthetic", split="test").real_key
    other_split = Evaluator(synth.real[256:], spec, FAST, cache_dir=tmp_path, dataset="synthetic", split="val").real_key
    payload = load_extractor_file(synth.path)
    payload["state_dict"]["head.2.bias"] = payload["state_dict"]["head.2.bias"] + 1
    torch.save(payload, tmp_path / "retrained.pt")
    retrained = in_domain_spec(tmp_path / "retrained.pt")
    other_weights = Evaluator(synth.real[256:], retrained, FAST, cache_dir=tmp_path, dataset="synthetic", split="test")
    assert len({base, other_imgs, other_split, other_weights.real_key}) == 4
    # a changed key recomputes the real side
    Evaluator(synth.real[256:], spec, FAST, cache_dir=tmp_path, dataset="synthetic", split="test").evaluate(
        synth.real[:64]
    )
    before = InDomainExtractor.images_seen
    other_weights.evaluate(synth.real[:64])
    assert InDomainExtractor.images_seen - before == 64 + 256


def test_corrupt_cache_file_is_detected_and_recomputed(synth, tmp_path):
    def make() -> Evaluator:
        return Evaluator(synth.real[256:], synth.spec, FAST, cache_dir=tmp_path, dataset="synthetic", split="test")

    gen = synth.real[:128]
    first = make().evaluate(gen)
    cache = RealFeatureCache(tmp_path / "fidelity", make().real_key)
    files = cache.files()
    assert len(files) == 6  # features, logits, FID statistics, k-NN radii, class counts, KID real sums
    for kind in ("features-features", "stat-fid", "prc-radii"):
        victim = next(f for f in files if kind in f.name)
        data = bytearray(victim.read_bytes())
        data[len(data) // 2] ^= 0xFF  # one flipped byte: torch.load might still succeed, so hashes must catch it
        victim.write_bytes(bytes(data))
        before = InDomainExtractor.images_seen
        second = make().evaluate(gen)
        # a corrupt features file: the real images go through the extractor again; corrupt
        # statistics or radii are recomputed from the (verified) cached features
        assert InDomainExtractor.images_seen - before == 128 + (256 if kind.startswith("features") else 0)
        assert victim.read_bytes() != bytes(data)  # rewritten
        for key in ("fid", "kid_mean", "precision", "recall", "class_kl"):
            assert second[key] == pytest.approx(first[key], rel=1e-9), (kind, key)
        assert cache.is_complete([f.name for f in cache.files()])
    # garbage in place of the manifest: nothing is trusted, everything recomputed
    cache.manifest_path.write_text("{not json")
    before = InDomainExtractor.images_seen
    assert make().evaluate(gen)["fid"] == pytest.approx(first["fid"], rel=1e-9)
    assert InDomainExtractor.images_seen - before == 128 + 256


# --- mode coverage and memorisation ------------------------------------------------------------


def test_coverage_counts_the_classifiers_predictions_and_sees_a_collapse(synth, tmp_path):
    real = synth.real[256:]
    ev = Evaluator(real, synth.spec, FAST, cache_dir=tmp_path, dataset="synthetic", split="test")
    real_pred = features_of(synth.path, real)[1].argmax(1)
    pool = synth.real[:256]
    pool_pred = features_of(synth.path, pool)[1].argmax(1)
    k = int(max(real_pred.max(), pool_pred.max())) + 1
    diverse = ev.evaluate(pool)
    collapsed = ev.evaluate(pool[pool_pred == 0])  # a "model" that only draws class 0
    real_hist = np.bincount(real_pred.numpy(), minlength=k) / len(real)
    assert diverse["real_class_hist"] == pytest.approx(real_hist.tolist(), abs=1e-12)
    assert diverse["class_hist"] == pytest.approx((np.bincount(pool_pred.numpy(), minlength=k) / 256).tolist())
    assert collapsed["class_hist"][0] == 1.0 and collapsed["classes_covered"] == 1
    assert diverse["classes_covered"] == diverse["num_classes"] == k
    # KL(real || generated) with 0.5 pseudo-counts, by hand
    p = np.bincount(real_pred.numpy(), minlength=k) + 0.5
    q = np.bincount(np.zeros(int((pool_pred == 0).sum()), dtype=int), minlength=k) + 0.5
    p, q = p / p.sum(), q / q.sum()
    assert collapsed["class_kl"] == pytest.approx(float((p * np.log(p / q)).sum()), rel=1e-9)
    assert collapsed["class_kl"] > 10 * diverse["class_kl"]


def test_memorisation_flags_copies_of_training_images_and_not_held_out_ones(synth, tmp_path):
    train = synth.dm.real_images("train")[:300]
    real = synth.real[256:]

    def make() -> Evaluator:
        return Evaluator(
            real, synth.spec, FAST, cache_dir=tmp_path, dataset="synthetic", split="test", train_images=train
        )

    copies = make().evaluate(train[:128], pairs_path=tmp_path / "pairs.png")
    heldout = make().evaluate(synth.real[:128])  # test images: never trained on
    assert copies["memorised_frac"] >= 0.99 and copies["nn_train_median"] < 1e-3
    assert heldout["memorised_frac"] <= 0.05
    assert (tmp_path / "pairs.png").is_file() and copies["closest_pairs"] == str(tmp_path / "pairs.png")
    # the medians, brute force from the extractor's features
    f_train = features_of(synth.path, train)[0].double().numpy()
    f_gen = features_of(synth.path, synth.real[:128])[0].double().numpy()
    f_real = features_of(synth.path, real)[0].double().numpy()
    import scipy.spatial.distance

    nn_gen = scipy.spatial.distance.cdist(f_gen, f_train).min(1)
    nn_real = scipy.spatial.distance.cdist(f_real, f_train).min(1)
    assert heldout["nn_train_median"] == pytest.approx(float(np.median(nn_gen)), rel=1e-3)  # float32 batches
    assert heldout["nn_heldout_median"] == pytest.approx(float(np.median(nn_real)), rel=1e-3)
    assert heldout["memorised_frac"] == pytest.approx(float((nn_gen < nn_real.min()).mean()), abs=1e-9)
    # the training subset's features are cached too: a third evaluation extracts the generated images only
    before = InDomainExtractor.images_seen
    make().evaluate(synth.real[:128])
    assert InDomainExtractor.images_seen - before == 128


# --- InceptionV3 ---------------------------------------------------------------------------------


@pytest.fixture
def empty_hub(tmp_path, monkeypatch):
    hub = tmp_path / "hub"
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub))
    return hub


def test_missing_inception_weights_fail_at_once_saying_where_to_put_them(empty_hub, synth):
    start = time.perf_counter()
    with pytest.raises(GenbenchError) as e:
        resolve_extractor("inception-v3-compat", synth.dm, synth.cache)
    assert time.perf_counter() - start < 2
    msg = str(e.value)
    assert str(empty_hub / "checkpoints" / INCEPTION_FILENAME) in msg and "metrics.inception_weights" in msg
    with pytest.raises(GenbenchError, match="does not exist"):
        inception_spec(empty_hub / "nowhere.pth")


@pytest.fixture(scope="session")
def inception_weights(tmp_path_factory) -> str:
    """A randomly initialised torch-fidelity InceptionV3 state dict: real shapes, no download."""
    from unittest import mock

    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    with (
        mock.patch("torch_fidelity.feature_extractor_inceptionv3.load_state_dict_from_url", return_value={}),
        mock.patch.object(FeatureExtractorInceptionV3, "load_state_dict", lambda self, sd: None),
    ):
        torch.manual_seed(0)
        net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048", "logits_unbiased"])
    path = tmp_path_factory.mktemp("inception") / INCEPTION_FILENAME
    torch.save(net.state_dict(), path)
    return str(path)


def test_inception_plumbing_with_a_local_weights_file(inception_weights, synth, empty_hub):
    spec = resolve_extractor("inception-v3-compat", synth.dm, synth.cache, inception_weights=inception_weights)
    assert spec.rgb and spec.feature_dim == 2048
    isc_only = {"fid": False, "kid": False, "prc": False, "isc_splits": 2, "cache": False}
    got = compute_metrics(synth.real[:4], synth.real[4:8], spec, isc_only)
    assert math.isfinite(got["is_mean"]) and got["is_mean"] >= 1.0
    # ImageNet logits say nothing about the dataset's classes: no coverage keys, the reason logged once
    assert "classes_covered" not in got and "class_kl" not in got
    # 10 samples cannot give a 2048-d covariance: refused before any work
    with pytest.raises(GenbenchError, match="more samples than feature dimensions"):
        compute_metrics(synth.real[:10], synth.real[10:20], spec, {"cache": False})


def test_inception_weights_of_the_wrong_shape_are_a_clear_error(tmp_path, inception_weights):
    sd = torch.load(inception_weights, weights_only=True)
    sd["fc.weight"] = torch.zeros(10, 2048)
    torch.save(sd, tmp_path / "wrong.pth")
    with pytest.raises(GenbenchError, match="fc.weight should be"):
        inception_spec(tmp_path / "wrong.pth")


def test_unknown_extractor_is_a_clear_error(synth):
    with pytest.raises(GenbenchError, match="Unknown extractor 'vgg'"):
        resolve_extractor("vgg", synth.dm, synth.cache)


# --- bad inputs --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("images", "match"),
    [
        (torch.rand(64, 1, 32, 32) * 255, r"outside \[-1, 1\]"),
        (torch.zeros(64, 32, 32), "N×C×H×W"),
        (torch.zeros(64, 2, 32, 32), "N×C×H×W"),
        (torch.zeros(64, 1, 32, 32, dtype=torch.int32), "uint8"),
        (torch.full((64, 1, 32, 32), float("nan")), "NaN"),
        (np.zeros((64, 1, 32, 32), dtype=np.uint8), "torch.Tensor"),
        (torch.zeros(64, 1, 28, 28, dtype=torch.uint8), "same resolution"),
    ],
)
def test_bad_images_are_clear_errors(synth, images, match):
    with pytest.raises(GenbenchError, match=match):
        compute_metrics(images, synth.real, synth.spec, {**FAST, "cache": False})


def test_too_few_samples_are_clear_errors(synth):
    with pytest.raises(GenbenchError, match="FID needs more samples than feature dimensions"):
        compute_metrics(synth.real[:16], synth.real, synth.spec, {**FAST, "cache": False})
    with pytest.raises(GenbenchError, match="kid_subset_size <= 100"):
        compute_metrics(synth.real[:100], synth.real, synth.spec, {**FAST, "kid_subset_size": 500, "cache": False})
    # left unset, the subset size adapts to min(1000, n)
    got = compute_metrics(synth.real[:100], synth.real[100:], synth.spec, {**FAST, "cache": False})
    assert math.isfinite(got["kid_mean"])


def test_unknown_metrics_setting_is_a_clear_error():
    with pytest.raises(GenbenchError, match="Unknown metrics setting"):
        MetricsConfig.from_mapping({"num_sample": 10})
