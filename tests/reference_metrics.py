"""Reference metrics for the tests: pure functions of feature tensors, written from the papers
with numpy/scipy.

The numbers genbench reports come from torch-fidelity (see ``genbench.metrics.fidelity``); these
independent implementations exist only so that tests can check torch-fidelity's results against
the formulas (test_metrics.py). KID has no second implementation here: its test writes the
unbiased MMD^2 out by hand on a tiny case.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg
import scipy.spatial.distance
import torch

ArrayLike = np.ndarray | torch.Tensor


def _np(x: ArrayLike) -> np.ndarray:
    return x.detach().cpu().double().numpy() if torch.is_tensor(x) else np.asarray(x, dtype=np.float64)


def gaussian_statistics(features: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (unbiased, N-1) covariance of N×D features: the Gaussian FID fits to a set."""
    f = _np(features)
    return f.mean(axis=0), np.cov(f, rowvar=False)


def frechet_distance(mu1: ArrayLike, sigma1: ArrayLike, mu2: ArrayLike, sigma2: ArrayLike) -> float:
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^{1/2}) (Heusel et al., 2017), with scipy's sqrtm.

    A tiny ridge is added only when sqrtm fails to converge to a finite value (singular products)."""
    mu1, mu2, s1, s2 = _np(mu1), _np(mu2), _np(sigma1), _np(sigma2)
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    if not np.isfinite(covmean).all():
        eps = np.eye(s1.shape[0]) * 1e-6
        covmean = scipy.linalg.sqrtm((s1 + eps) @ (s2 + eps))
    covmean = np.real(covmean)
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def fid_from_features(features1: ArrayLike, features2: ArrayLike) -> float:
    return frechet_distance(*gaussian_statistics(features1), *gaussian_statistics(features2))


def inception_score(logits: ArrayLike, splits: int = 1) -> tuple[float, float]:
    """exp(E_x KL(p(y|x) || p(y))) per split (Salimans et al., 2016); mean and population std
    over splits (torch-fidelity's convention). Takes logits: the softmax is applied here."""
    z = _np(logits)
    z = z - z.max(axis=1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    scores = []
    for chunk in np.array_split(log_p, splits):
        p = np.exp(chunk)
        log_py = np.log(p.mean(axis=0))
        scores.append(float(np.exp((p * (chunk - log_py)).sum(axis=1).mean())))
    return float(np.mean(scores)), float(np.std(scores))


def precision_recall(generated: ArrayLike, real: ArrayLike, k: int = 3) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al., 2019): precision is the share of
    generated samples inside the real manifold (union of balls reaching each real sample's k-th
    neighbour), recall the share of real samples inside the generated manifold."""
    g, r = _np(generated), _np(real)

    def radii(a: np.ndarray) -> np.ndarray:
        d = scipy.spatial.distance.cdist(a, a)
        return np.sort(d, axis=1)[:, k]  # index 0 is the point itself

    rg, rr = radii(g), radii(r)
    d_gr = scipy.spatial.distance.cdist(g, r)
    precision = float((d_gr <= rr[None, :]).any(axis=1).mean())
    recall = float((rg[None, :] >= d_gr.T).any(axis=1).mean())
    return precision, recall
