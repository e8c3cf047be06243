"""What a family's latent space shows: interpolation grids (every family) and reconstructions (the
families with an encoder).

Each family decodes a latent deterministically (``GenerativeModel.decode_latents``): a generator or
a decoder maps z, a diffusion model maps x_T through a deterministic sampler (DDIM with eta=0). So a path
between two latents is a path between two images, and its endpoints are exactly the images those
latents give on their own. Paths are spherical (slerp) by default: two Gaussian draws in d
dimensions have norms ~ sqrt(d) and are nearly orthogonal, and the straight line between them
passes through latents of norm ~ sqrt(d/2) that the model has never seen (White, 2016); slerp
keeps the norm of equal-norm endpoints all the way.

The sample-grid callback writes ``samples/interp_final.png`` (and, for a family with an encoder,
``samples/recon_<tag>.png``); :func:`write_latent_grids` writes the same for any loaded model
(``genbench-eval``, notebooks).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torchvision.io import encode_png
from torchvision.utils import make_grid

from genbench.data.base import to_unit_range
from genbench.errors import GenbenchError
from genbench.io import atomic_write_bytes

METHODS = ("slerp", "linear")
#: file names in a run's samples/ folder (``<name>_<tag>.png``: ``interp_final.png``, ``recon_epoch001_step0000500.png``)
INTERP = "interp"
RECON = "recon"


def lerp(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """(1 - t) a + t b for each t: (len(t), *a.shape)."""
    t = t.to(a).view(-1, *([1] * a.ndim))
    return (1 - t) * a + t * b


def slerp(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation sin((1-t) w)/sin(w) a + sin(t w)/sin(w) b, w the angle between a and
    b (flattened), for each t: (len(t), *a.shape). Equal-norm endpoints keep their norm along the
    whole path; (anti)parallel ones (sin w ~ 0) fall back to :func:`lerp`."""
    a64, b64 = a.double().flatten(), b.double().flatten()
    cos = (a64 @ b64 / (a64.norm() * b64.norm()).clamp_min(1e-300)).clamp(-1, 1)
    omega = torch.arccos(cos)
    if torch.sin(omega).abs() < 1e-6:
        return lerp(a, b, t)
    t64 = t.to(a64.device, torch.float64).view(-1, 1)
    wa, wb = torch.sin((1 - t64) * omega) / torch.sin(omega), torch.sin(t64 * omega) / torch.sin(omega)
    return (wa * a64 + wb * b64).view(len(t), *a.shape).to(a.dtype)


def interpolate(a: torch.Tensor, b: torch.Tensor, n_steps: int, method: str = "slerp") -> torch.Tensor:
    """``n_steps`` latents from ``a`` to ``b`` (both included, bit for bit): (n_steps, *a.shape)."""
    if method not in METHODS:
        raise GenbenchError(f"Unknown interpolation method '{method}': use one of {', '.join(METHODS)}.")
    if n_steps < 2:
        raise GenbenchError(f"An interpolation needs n_steps >= 2 (its two endpoints), got {n_steps}.")
    t = torch.linspace(0, 1, n_steps, dtype=torch.float64, device=a.device)
    path = (slerp if method == "slerp" else lerp)(a, b, t)
    path[0], path[-1] = a, b  # exactly the endpoints, whatever the rounding of the weights
    return path


def interpolation_latents(
    model: Any, n_rows: int, n_steps: int, generator: torch.Generator | None = None, method: str = "slerp"
) -> torch.Tensor:
    """``n_rows`` paths of ``n_steps`` latents, row-major: (n_rows * n_steps, *latent_shape). The
    start points are the first ``n_rows`` latents drawn from ``generator`` (with ``model.randn``,
    as ``sample()`` draws them), the end points the next ``n_rows``."""
    if n_rows < 1:
        raise GenbenchError(f"An interpolation grid needs n_rows >= 1, got {n_rows}.")
    starts = model.randn(n_rows, *model.latent_shape, generator=generator)
    ends = model.randn(n_rows, *model.latent_shape, generator=generator)
    return torch.cat([interpolate(a, b, n_steps, method) for a, b in zip(starts, ends, strict=True)])


def interpolation_images(
    model: Any,
    n_rows: int,
    n_steps: int,
    generator: torch.Generator | None = None,
    method: str = "slerp",
    **decode_kwargs: Any,
) -> torch.Tensor:
    """The decoded paths as images in [-1, 1], row-major (n_rows * n_steps, C, H, W)."""
    return model.decode_latents(interpolation_latents(model, n_rows, n_steps, generator, method), **decode_kwargs)


def image_grid(images: torch.Tensor, nrow: int | None = None, padding: int = 2) -> torch.Tensor:
    """[-1, 1] images -> one [0, 1] grid image (C, H, W), square-ish by default."""
    nrow = nrow or max(1, int(math.ceil(math.sqrt(images.shape[0]))))
    return make_grid(images.float().cpu().clamp(-1, 1) * 0.5 + 0.5, nrow=nrow, padding=padding, pad_value=1.0)


def to_grid_uint8(images: torch.Tensor, nrow: int | None = None) -> torch.Tensor:
    """[-1, 1] images -> one uint8 grid image (C, H, W), ``nrow`` images per row (square-ish by
    default), rounded as torchvision's ``save_image`` rounds."""
    return image_grid(images, nrow=nrow).mul(255).add_(0.5).clamp_(0, 255).to(torch.uint8)


def interpolation_grid(
    model: Any,
    n_rows: int,
    n_steps: int,
    generator: torch.Generator | None = None,
    method: str = "slerp",
    **decode_kwargs: Any,
) -> torch.Tensor:
    """A uint8 grid image (C, H, W): one row per pair of latents, ``n_steps`` columns from one
    endpoint to the other (a diffusion model: x_T decoded by its deterministic sampler; ``sampler=``
    another deterministic one)."""
    images = interpolation_images(model, n_rows, n_steps, generator, method, **decode_kwargs)
    return to_grid_uint8(images, nrow=n_steps)


def reconstruction_grid(model: Any, images: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
    """A uint8 grid image (C, H, W) of an encoder family's reconstructions: the top row the ``images`` (uint8,
    or float in [-1, 1]), the bottom row their mean reconstructions ``decode(encode(x).mu)``; a
    conditional model is given the images' ``labels``."""
    if not hasattr(model, "reconstruct"):
        family = getattr(model, "family", type(model).__name__)
        raise GenbenchError(f"Reconstructions need an encoder: a {family} has none (FamilySpec.has_encoder).")
    x = to_unit_range(images) if images.dtype == torch.uint8 else images.float()
    recon = (model.reconstruct(x) if labels is None else model.reconstruct(x, labels=labels)).cpu()
    return to_grid_uint8(torch.cat([x.cpu(), recon]), nrow=len(x))


def save_png(grid_u8: torch.Tensor, path: str | Path) -> Path:
    """Write a uint8 (C, H, W) image atomically (a kill never leaves half a PNG for the report)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, encode_png(grid_u8.cpu()).numpy().tobytes())
    return path


def save_grid(images: torch.Tensor, path: str | Path, nrow: int | None = None) -> Path:
    """[-1, 1] images -> a PNG grid at ``path`` (square-ish by default), written atomically."""
    return save_png(to_grid_uint8(images, nrow), path)


def write_latent_grids(
    model: Any,
    out_dir: str | Path,
    real: torch.Tensor | None = None,
    tag: str = "final",
    n_rows: int = 4,
    n_steps: int = 8,
    seed: int = 0,
    method: str = "slerp",
    labels: torch.Tensor | None = None,
    **decode_kwargs: Any,
) -> dict[str, Path]:
    """Write ``interp_<tag>.png`` (every family) and, for a family with an encoder given ``real`` images (e.g. the first
    8 of the validation split; a conditional one also their ``labels``), ``recon_<tag>.png`` into ``out_dir``;
    returns {"interp": path, ...}.
    The latents come from a private generator seeded with ``seed``: the same grid on every call."""
    out_dir = Path(out_dir)
    generator = torch.Generator().manual_seed(seed)
    grid = interpolation_grid(model, n_rows, n_steps, generator, method, **decode_kwargs)
    paths = {INTERP: save_png(grid, out_dir / f"{INTERP}_{tag}.png")}
    if real is not None and hasattr(model, "reconstruct"):
        paths[RECON] = save_png(reconstruction_grid(model, real, labels=labels), out_dir / f"{RECON}_{tag}.png")
    return paths


__all__ = [
    "METHODS",
    "image_grid",
    "interpolate",
    "interpolation_grid",
    "interpolation_images",
    "interpolation_latents",
    "lerp",
    "reconstruction_grid",
    "save_png",
    "slerp",
    "to_grid_uint8",
    "write_latent_grids",
]
