"""Memorisation: are generated samples closer to the training set than new real images are?

A model that reproduces its training images scores well on FID and precision alike. The check
here (in the extractor's feature space) compares, for each generated sample, the distance to its
nearest training image with the same distance for held-out real images (the test split), which
were never trained on and so show how close "new" images naturally come to the training set:

* ``nn_train_median``: median generated -> nearest-training-image distance;
* ``nn_heldout_median``: median held-out -> nearest-training-image distance;
* ``memorised_frac``: fraction of generated samples strictly closer to a training image than any
  held-out image is (below the minimum held-out -> train distance). Near 0 for a model that
  generalises, near 1 for one that copies; it depends on the training subset's size (a larger
  subset lowers both kinds of distance), so compare it only at equal ``train_subset``.

Distances are computed in float64 (``torch.cdist`` with the matrix-product formula loses the
small distances of near-copies in float32).
"""

from __future__ import annotations

from pathlib import Path

import torch

from genbench.errors import GenbenchError


def nearest_neighbours(
    queries: torch.Tensor, reference: torch.Tensor, batch_size: int = 2048
) -> tuple[torch.Tensor, torch.Tensor]:
    """Euclidean distance from each query row to its nearest ``reference`` row, and that row's
    index (float64 distances, int64 indices), computed in query batches to bound memory."""
    if queries.ndim != 2 or reference.ndim != 2 or queries.shape[1] != reference.shape[1]:
        raise GenbenchError(
            f"Nearest neighbours need N×D and M×D features, got {tuple(queries.shape)} and {tuple(reference.shape)}."
        )
    if len(reference) == 0:
        raise GenbenchError("Nearest neighbours need at least one reference (training) image.")
    ref = reference.double()
    dists, idx = [], []
    for chunk in queries.double().split(batch_size):
        d, i = torch.cdist(chunk, ref).min(dim=1)
        dists.append(d)
        idx.append(i)
    return torch.cat(dists), torch.cat(idx)


def _median(x: torch.Tensor) -> float:
    """The usual median (mean of the two middle values for an even count; torch.median takes the lower)."""
    return float(torch.quantile(x.double(), 0.5))


def memorisation_metrics(generated_nn: torch.Tensor, heldout_nn: torch.Tensor) -> dict[str, float]:
    """The agreed keys from the two nearest-training-image distance vectors."""
    if len(generated_nn) == 0 or len(heldout_nn) == 0:
        raise GenbenchError("Memorisation needs at least one generated and one held-out image.")
    threshold = heldout_nn.min()
    return {
        "nn_train_median": _median(generated_nn),
        "nn_heldout_median": _median(heldout_nn),
        "memorised_frac": float((generated_nn < threshold).double().mean()),
    }


def save_closest_pairs(
    generated_u8: torch.Tensor,
    train_u8: torch.Tensor,
    generated_nn: torch.Tensor,
    nn_index: torch.Tensor,
    path: str | Path,
    pairs: int = 16,
) -> Path:
    """A PNG of the ``pairs`` generated samples closest to a training image: generated on the top
    row, each one's nearest training image below it (what a reader checks for copies)."""
    from torchvision.utils import save_image

    from genbench.io import atomic_path

    order = generated_nn.argsort()[: max(1, pairs)]
    top, bottom = generated_u8[order], train_u8[nn_index[order]]
    images = torch.cat([top, bottom]).float() / 255.0
    path = Path(path)
    with atomic_path(path.with_suffix(".png")) as tmp:
        save_image(images, tmp, nrow=len(order), padding=2, pad_value=1.0, format="png")
    return path.with_suffix(".png")
