"""Pictures for reports built from image files: sample grids placed side by side with labels.

Plots of numbers are in :mod:`genbench.report.plots`."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw


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
