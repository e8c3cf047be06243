"""Mode coverage and memorisation: the pure functions against hand and brute-force computations.

(Their use through an Evaluator with a real extractor is tested in tests/test_metrics.py, which
has the session's trained extractor.)
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.spatial.distance
import torch

from genbench import GenbenchError
from genbench.metrics import SCALAR_RESULTS, MetricsConfig, scalar_results
from genbench.metrics import coverage as cov
from genbench.metrics import memorisation as mem


def one_hot_logits(classes: list[int], k: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(torch.tensor(classes), k).float() * 5 - 1


def test_class_counts_histogram_and_the_covered_rule():
    # 200 samples over 4 classes: 150, 48, 2, 0 -> class 2 holds exactly 1 % (covered), class 3 none
    logits = one_hot_logits([0] * 150 + [1] * 48 + [2] * 2, 4)
    counts = cov.class_counts(logits, 4)
    assert counts.tolist() == [150, 48, 2, 0]
    assert cov.histogram(counts) == [0.75, 0.24, 0.01, 0.0]
    assert cov.classes_covered(counts, 0.01) == 3
    assert cov.classes_covered(counts, 0.011) == 2  # 2 samples are below 1.1 % of 200
    assert cov.classes_covered(counts, 0.0) == 3  # at least one sample, always


def test_smoothed_kl_matches_a_hand_computation():
    real, gen = torch.tensor([2, 2]), torch.tensor([4, 0])
    # +0.5 per class: p = [2.5, 2.5] / 5, q = [4.5, 0.5] / 5
    expected = 0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(0.5 / 0.1)
    assert cov.smoothed_kl(real, gen, 0.5) == pytest.approx(expected, rel=1e-12)
    assert cov.smoothed_kl(real, real, 0.5) == 0.0
    assert cov.smoothed_kl(real, gen, 0.0) == math.inf  # unsmoothed, a missing class is infinitely surprising
    # a collapsed model is further from the real mix than a balanced one
    assert cov.smoothed_kl(torch.tensor([50, 50]), torch.tensor([99, 1])) > cov.smoothed_kl(
        torch.tensor([50, 50]), torch.tensor([60, 40])
    )
    with pytest.raises(GenbenchError, match="different lengths"):
        cov.smoothed_kl(torch.tensor([1, 2, 3]), gen)


def test_coverage_metrics_have_the_agreed_keys():
    out = cov.coverage_metrics(one_hot_logits([0, 0, 1, 1], 3), torch.tensor([1, 1, 1]))
    assert out["classes_covered"] == 2 and out["num_classes"] == 3
    assert out["class_hist"] == [0.5, 0.5, 0.0] and out["real_class_hist"] == pytest.approx([1 / 3] * 3)
    p = np.array([1.5, 1.5, 1.5]) / 4.5
    q = np.array([2.5, 2.5, 0.5]) / 5.5
    assert out["class_kl"] == pytest.approx(float((p * np.log(p / q)).sum()), rel=1e-12)


def test_nearest_neighbours_match_brute_force():
    g = torch.Generator().manual_seed(0)
    queries, reference = torch.randn(37, 5, generator=g), torch.randn(53, 5, generator=g)
    dist, idx = mem.nearest_neighbours(queries, reference, batch_size=8)  # several batches
    brute = scipy.spatial.distance.cdist(queries.double().numpy(), reference.double().numpy())
    assert np.allclose(dist.numpy(), brute.min(axis=1), rtol=0, atol=1e-12)
    assert (idx.numpy() == brute.argmin(axis=1)).all()
    # an exact copy is at distance ~0 (float64 keeps the matrix-product formula's cancellation tiny)
    assert mem.nearest_neighbours(reference[:3] * 10, reference * 10)[0].max() < 1e-6


def test_memorisation_metrics_by_hand():
    heldout = torch.tensor([0.5, 0.7, 0.9], dtype=torch.float64)
    generated = torch.tensor([0.0, 0.1, 0.5, 0.6, 2.0], dtype=torch.float64)
    out = mem.memorisation_metrics(generated, heldout)
    # below the smallest held-out distance (0.5, strictly): 0.0 and 0.1
    assert out == {"nn_train_median": 0.5, "nn_heldout_median": 0.7, "memorised_frac": 0.4}
    assert mem.memorisation_metrics(generated[:4], heldout)["nn_train_median"] == pytest.approx(0.3)  # even count


def test_closest_pairs_grid_puts_each_sample_above_its_neighbour(tmp_path):
    from PIL import Image

    generated = torch.stack([torch.full((1, 4, 4), v, dtype=torch.uint8) for v in (10, 200, 90)])
    train = torch.stack([torch.full((1, 4, 4), v, dtype=torch.uint8) for v in (0, 100, 255)])
    dist = torch.tensor([3.0, 1.0, 2.0])
    idx = torch.tensor([0, 2, 1])
    path = mem.save_closest_pairs(generated, train, dist, idx, tmp_path / "pairs.png", pairs=2)
    img = np.asarray(Image.open(path).convert("L"))
    # 2 columns (the two closest: samples 1 then 2), 2 rows, 4 px cells with 2 px padding
    assert img.shape == (2 + 2 * 6, 2 + 2 * 6)
    cell = lambda r, c: int(img[2 + 6 * r + 1, 2 + 6 * c + 1])  # noqa: E731
    assert [cell(0, 0), cell(1, 0), cell(0, 1), cell(1, 1)] == [200, 255, 90, 100]


def test_scalar_results_are_the_one_list_and_skip_texts():
    result = {"fid": 3, "class_kl": 0.1, "class_hist": [0.5, 0.5], "likelihood": "none", "bpd": None, "x": 1.0}
    assert scalar_results(result, "eval/") == {"eval/fid": 3.0, "eval/class_kl": 0.1}
    for key in ("classes_covered", "memorised_frac", "bpd", "cpu_seconds", "load_avg", "images_seen"):
        assert key in SCALAR_RESULTS
    # a family's likelihood bounds are scalars by name (bpd_<bound>), known bounds or new ones
    from genbench.metrics.catalogue import is_scalar, metric

    assert all(is_scalar(k) for k in ("bpd_iwae", "bpd_vlb", "bpd_exact")) and not is_scalar("bpd_")
    assert scalar_results({"bpd_exact": 2.5, "bpd_se": 0.1}) == {"bpd_exact": 2.5, "bpd_se": 0.1}
    assert metric("bpd_iwae").title == "bpd (IWAE)" and metric("bpd_exact").lower_is_better is True


def test_new_settings_are_checked():
    cfg = MetricsConfig.from_mapping({"coverage": {"min_fraction": 0.05}, "likelihood": {"when": "every"}})
    assert cfg.coverage.min_fraction == 0.05 and cfg.memorisation.train_subset == 10_000
    assert cfg.likelihood.due(final=False) and not MetricsConfig().likelihood.due(final=False)
    with pytest.raises(GenbenchError, match=r"metrics.coverage setting\(s\) min_frac"):
        MetricsConfig.from_mapping({"coverage": {"min_frac": 0.05}})
    with pytest.raises(GenbenchError, match="metrics.likelihood.when=sometimes"):
        MetricsConfig.from_mapping({"likelihood": {"when": "sometimes"}})
    with pytest.raises(GenbenchError, match="train_subset must be >= 1"):
        MetricsConfig.from_mapping({"memorisation": {"train_subset": 0}})
