"""Test-set negative log-likelihood in bits/dim of 8-bit images, for the families that have one.

The data are 8-bit integers. A model that assigns a *probability* to each of the 256 levels of each
pixel (a discretised decoder: each level's bin of width 2/255 on the [-1, 1] scale, the two end bins
extended to +-infinity, as in PixelCNN++ (Salimans et al., 2017) and Ho et al. (2020)) has a
negative log-likelihood in nats that converts to bits/dim by dividing by ``dims * ln 2``, with no
Jacobian term: integrating a density over each bin already removes the [-1, 1] scaling. A uniform
model over the 256 levels scores exactly 8 bits/dim; every number here is an *upper bound* on the
model's true NLL (lower is better):

* a latent-variable model: the ELBO and the importance-weighted bound with K samples (IWAE, Burda
  et al., 2016), which is never looser than the ELBO and tightens as K grows;
* a diffusion model: the variational bound L_T + sum_{t>1} L_{t-1} + L_0 of Ho et al. (2020, eq. 5),
  the sum over timesteps estimated without bias from ``timesteps`` uniformly drawn t per image;
* an exact likelihood where the model has one (a bound equal to the NLL);
* an implicit model: no likelihood (stated, not left blank: ``FamilySpec.likelihood_note``).

A family takes part through two methods (duck-typed, so this module needs no list of families):
``likelihood_description(cfg) -> str`` (what is reported, or ``"none (why)"``) and
``likelihood_bounds(x, cfg, generator) -> dict[str, Tensor]`` (per-image bounds in nats, the
headline bound first; an empty dict when the model has none). A model without them has no likelihood.

A class-conditional model (``model.num_classes`` set) models p(x|y): its ``likelihood_bounds`` also
receives ``labels=`` (the test images' true classes, a long tensor on the model's device) and bounds
-log p(x|y). Under the uniform class prior p(y) = 1/K, p(x) = sum_y p(x|y)/K >= p(x|y_true)/K, so
-log p(x) <= -log p(x|y_true) + log K: every conditional bound here has log K added (log(K)/(D ln 2)
bits/dim: 0.0032 for 10 classes of 32x32 grey images) and so stays an upper bound on the *unconditional*
NLL, comparable with the numbers of unconditional models.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from genbench import GenbenchError
from genbench.distributed import broadcast_object, gather_rows, rank_and_world, share
from genbench.distributions import LikelihoodConfig, class_prior_nats, nats_to_bits_per_dim
from genbench.registry import IMPLICIT, find_family

#: what a model without a likelihood reports (an implicit model)
NO_LIKELIHOOD = IMPLICIT
#: seed of the fixed test subset: the same images for every model and evaluation point
SUBSET_SEED = 1234


# --- pure functions of the evaluation (the probability maths: genbench.distributions) -----------
def mean_and_se(values: torch.Tensor) -> tuple[float, float]:
    """Mean and its standard error (sample std / sqrt(n); 0 for one value)."""
    values = values.double()
    n = values.numel()
    se = float(values.std(correction=1) / math.sqrt(n)) if n > 1 else 0.0
    return float(values.mean()), se


def fixed_subset(n_total: int, n: int) -> torch.Tensor:
    """Indices of the ``n`` test images used (sorted): a seeded permutation, so every model and
    every evaluation point of a run sees the same images."""
    g = torch.Generator().manual_seed(SUBSET_SEED)
    return torch.randperm(n_total, generator=g)[: min(n, n_total)].sort().values


# --- the evaluation ----------------------------------------------------------------------------
def evaluate_likelihood(
    model: Any,
    images: torch.Tensor,
    cfg: LikelihoodConfig | None = None,
    generator: torch.Generator | None = None,
    labels: torch.Tensor | None = None,
    distributed: bool = False,
) -> dict[str, Any]:
    """Upper bounds on the test NLL of ``model`` in bits/dim of 8-bit images.

    ``images``: uint8 (N, C, H, W) test images; ``cfg.num_images`` of them (a fixed, seeded subset)
    are used. ``generator`` drives the model's sampling noise (default: seeded, so repeated calls
    agree). Returns ``bpd`` (the headline bound), ``bpd_se`` (its standard error over images, which
    includes the Monte-Carlo noise), ``bpd_<bound>`` per bound (``bpd_elbo``/``bpd_iwae`` +
    ``iwae_k`` with an IWAE bound, ``bpd_vlb`` for a diffusion bound), ``likelihood_images`` and ``likelihood`` (a
    short description); a model without a likelihood returns only ``likelihood`` ("none (...)").

    ``labels``: the images' classes, needed by a class-conditional model (``model.num_classes``), whose
    bounds are of p(x|y_true) + log K (see the module docstring); ignored for an unconditional one.

    The images go through in batches of ``cfg.batch_size``; batch b draws its noise from a generator
    seeded with ``generator``'s seed + 7919 b (only that seed counts, not the generator's state), so
    no batch's numbers depend on the batches before it. ``distributed``: every rank of the process
    group calls this and computes a contiguous share of the batches (earlier ranks one more where
    they do not divide evenly); the per-image bounds are gathered in batch order, so the mean and its
    standard error are those of one process, whatever the number of ranks."""
    cfg = cfg if cfg is not None else LikelihoodConfig()
    if not isinstance(cfg, LikelihoodConfig):
        cfg = LikelihoodConfig.from_mapping(cfg)
    describe = getattr(model, "likelihood_description", None)
    bounds_of = getattr(model, "likelihood_bounds", None)
    if describe is None or bounds_of is None:
        spec = find_family(getattr(model, "family", None))  # why it has none, in its own words
        return {"likelihood": spec.likelihood_note if spec is not None else NO_LIKELIHOOD}
    description = describe(cfg)
    if not torch.is_tensor(images) or images.dtype != torch.uint8 or images.ndim != 4:
        got = f"{images.dtype} {tuple(images.shape)}" if torch.is_tensor(images) else type(images).__name__
        raise GenbenchError(f"evaluate_likelihood needs uint8 test images shaped (N, C, H, W), got {got}.")
    expected = tuple(getattr(model, "image_shape", images.shape[1:]))
    if tuple(images.shape[1:]) != expected:
        raise GenbenchError(
            f"The test images are {tuple(images.shape[1:])} but the model makes {expected}: evaluate on "
            "the data the model was trained on (data=..., data.image_size, data.channels)."
        )
    if len(images) == 0:
        raise GenbenchError("evaluate_likelihood got no test images: the data module's test split is empty.")
    num_classes = getattr(model, "num_classes", None)
    if num_classes is not None and (
        labels is None
        or len(labels) != len(images)
        or (len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= num_classes))
    ):
        got = "none" if labels is None else f"{len(labels)} labels for {len(images)} images"
        raise GenbenchError(
            f"The likelihood of a conditional model is of p(x|y): it needs the test images' classes in "
            f"0..{num_classes - 1}, got {got}: evaluate on labelled data (data.num_classes) or without likelihood "
            "(metrics.likelihood.enabled=false)."
        )
    seed = generator.initial_seed() if generator is not None else 0
    noise_device = generator.device if generator is not None else torch.device("cpu")
    index = fixed_subset(len(images), cfg.num_images)
    subset = images[index]
    subset_labels = None if num_classes is None else torch.as_tensor(labels)[index].long()
    device = getattr(model, "device", torch.device("cpu"))
    rank, world = rank_and_world() if distributed else (0, 1)
    batches = range(0, len(subset), cfg.batch_size)
    was_training = getattr(model, "training", False)
    per_bound: dict[str, list[torch.Tensor]] = {}
    model.eval()
    try:
        with torch.no_grad():
            for b in share(len(batches), world, rank):
                start = batches[b]
                x = subset[start : start + cfg.batch_size].to(device).float().div(127.5).sub(1.0)
                given = {}
                if subset_labels is not None:
                    given["labels"] = subset_labels[start : start + cfg.batch_size].to(device)
                noise = torch.Generator(device=noise_device).manual_seed(seed + 7919 * b)
                for name, nats in bounds_of(x, cfg, noise, **given).items():
                    nats = nats.detach().double().cpu() + class_prior_nats(num_classes)
                    per_bound.setdefault(name, []).append(nats)
    finally:
        model.train(was_training)
    names = broadcast_object(list(per_bound))  # rank 0 always has the first batch
    if not names:  # e.g. a decoder trained with a likelihood that is no distribution over 8-bit levels
        return {"likelihood": description}
    dims = int(images[0].numel())
    result: dict[str, Any] = {}
    for i, name in enumerate(names):
        mine = torch.cat(per_bound[name]) if name in per_bound else torch.zeros(0, dtype=torch.float64)
        mean, se = mean_and_se(nats_to_bits_per_dim(gather_rows(mine), dims))
        if i == 0:
            result["bpd"], result["bpd_se"] = mean, se
        result[f"bpd_{name}"] = mean
    if "iwae" in per_bound:
        result["iwae_k"] = cfg.iwae_k
    result["likelihood_images"] = len(subset)
    result["likelihood"] = description
    if num_classes is not None:
        result["likelihood"] += f"; of p(x|y) at the true classes + log {num_classes} (a bound on p(x))"
    return result
