"""`make demo`: a short CPU training of the three families on Fashion-MNIST, side by side.

Runs the three Fashion-MNIST experiment presets as one Hydra multirun (so each family gets its
own run directory under one demo directory), then puts their final sample grids next to real
test images in comparison.png and prints their final metrics.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

from genbench import PROJECT_ROOT
from genbench.callbacks.sample_grid import image_grid
from genbench.data import FashionMNISTDataModule, to_unit_range
from genbench.report.figures import side_by_side

FAMILIES = ("gan", "vae", "ddpm")


def main() -> int:
    out = PROJECT_ROOT / "outputs" / "demo" / time.strftime("%Y-%m-%d_%H-%M-%S")
    experiments = ",".join(f"fashion_mnist_{f}" for f in FAMILIES)
    cmd = [
        sys.executable,
        "-m",
        "genbench.train",
        "-m",
        f"experiment={experiments}",
        "print_config=false",
        f"hydra.sweep.dir={out}",
    ]
    print("running:", " ".join(cmd), flush=True)
    rc = subprocess.call(cmd, cwd=PROJECT_ROOT)
    grids, rows = {}, []
    for job, family in enumerate(FAMILIES):
        run = out / str(job)
        final = run / "samples" / "final.png"
        if final.is_file():
            grids[family.upper()] = final
        metrics = json.loads((run / "metrics.json").read_text()) if (run / "metrics.json").is_file() else {}
        rows.append((family, metrics))
    real = FashionMNISTDataModule().real_images("test")[:64]
    real_png = out / "real.png"
    from torchvision.utils import save_image

    save_image(image_grid(to_unit_range(real)), real_png)
    side_by_side({"real": real_png, **grids}, out / "comparison.png")
    print(f"\nrun directories and comparison.png under {out}")
    for family, m in rows:
        losses = {k: round(v, 4) for k, v in m.items() if k.startswith("val/") and isinstance(v, float)}
        print(f"  {family:5s} steps={m.get('global_step', '-')} {losses}")
    return rc


if __name__ == "__main__":
    raise SystemExit(main())
