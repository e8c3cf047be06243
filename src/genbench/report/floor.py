"""The real-vs-real reference row: real training images scored against the real test split with
the runs' own extractor, sample count and settings, the best any model could hope for at this n.
Shared by ``genbench-benchmark`` and ``genbench-compare``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.utils import instantiate

from genbench.callbacks.sample_grid import save_grid
from genbench.data import to_unit_range
from genbench.metrics import Evaluator, MetricsConfig
from genbench.report.collect import RunResult


def real_floor(runs: list[RunResult], out_dir: Path | None = None) -> tuple[dict[str, Any] | None, Path | None]:
    """(floor metrics, grid of real test images) for the runs' dataset; (None, None) when no
    finished run carries an evaluation protocol to copy. The grid goes to ``out_dir/real.png``."""
    ok = [r for r in runs if r.status == "ok" and r.config.get("callbacks", {}).get("evaluation")]
    if not ok:
        return None, None
    conf = ok[0].config
    ev = conf["callbacks"]["evaluation"]
    datamodule = instantiate(conf["data"])
    metrics_cfg = MetricsConfig.from_mapping(ev.get("metrics")).replace(num_samples=ev["num_samples"])
    evaluator = Evaluator.for_datamodule(datamodule, metrics_cfg, cache_dir=ev.get("cache_dir"))
    floor = evaluator.evaluate(datamodule.real_images("train")[: ev["num_samples"]])
    grid = None
    if out_dir is not None:
        grid = save_grid(to_unit_range(datamodule.real_images("test")[:64]), Path(out_dir) / "real.png")
    return floor, grid
