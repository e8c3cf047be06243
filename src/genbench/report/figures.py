"""Pictures for reports built from image files: sample grids placed side by side with labels, and
grids enlarged to a readable cell size.

A 28- or 32-pixel cell is a thumbnail on a modern screen; the report enlarges every grid by a whole
factor with nearest-neighbour resampling, so each pixel of a sample stays a crisp square (no
interpolation blur that would flatter or hide artefacts).

Plots of numbers are in :mod:`genbench.report.plots`."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw

#: the cell size (pixels) the report aims for: 28 px -> x3 (84 px), 32 px -> x2 (64 px)
READABLE_CELL = 72


def readable_factor(cell_px: int, target: int = READABLE_CELL) -> int:
    """The whole factor that brings a ``cell_px`` image cell closest to ``target`` pixels (>= 1)."""
    return max(1, round(target / max(1, int(cell_px))))


def upscale(src: Path, dst: Path, factor: int) -> Path:
    """``src`` enlarged ``factor`` times with nearest-neighbour resampling, saved to ``dst``."""
    im = Image.open(src)
    if factor > 1:
        im = im.resize((im.width * factor, im.height * factor), Image.Resampling.NEAREST)
    dst.parent.mkdir(parents=True, exist_ok=True)
    im.save(dst)
    return dst


def side_by_side(images: dict[str, Path], path: Path, gap: int = 12, label_height: int = 18) -> Path:
    """Place labelled PNGs (e.g. each family's sample grid and real images) in one row."""
    loaded = {name: Image.open(p).convert("RGB") for name, p in images.items()}
    height = max(im.height for im in loaded.values()) + label_height
    width = sum(im.width for im in loaded.values()) + gap * (len(loaded) - 1)
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    x = 0
    for name, im in loaded.items():
        draw.text((x + 4, 2), name, fill="black")
        canvas.paste(im, (x, label_height))
        x += im.width + gap
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    return path
