"""The real-vs-real reference row: real training images scored against the real test split with
the runs' own extractor, sample count and settings, the best any model could hope for at this n.
Shared by ``genbench-benchmark`` and ``genbench-compare``. For conditional runs the real images are
class-balanced at the runs' per-class count and carry their classes, so the row also gives the
floor of the class accuracy (the classifier on real images) and of the intra-class FID.

The protocol is read from what the runs hold, so the floor works for any runs, not only a
benchmark's: the evaluation callback's settings in the run's config where training evaluated, else
the recorded result (sample count, extractor, real split) of a ``genbench-eval``; the dataset always
from the run's ``data`` config.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from genbench.report.collect import RunResult

log = logging.getLogger("genbench.report")


@dataclass
class FloorProtocol:
    """What the floor must repeat: the dataset config, the metrics settings (sample count,
    extractor, split) and the cache holding the extractor."""

    run: RunResult
    data: dict[str, Any]
    metrics: dict[str, Any]
    cache_dir: str | None
    weights_sha256: str | None  # the runs' extractor, to check the floor used the same one


def _extractor_setting(label: Any) -> str | None:
    """A recorded extractor label ("in-domain:fashion_mnist_32px_1ch", "inception-v3-compat") as
    the ``metrics.extractor`` setting that makes it."""
    if not label:
        return None
    return "in-domain" if str(label).startswith("in-domain") else str(label).split(":")[0]


def find_extractor(cache_dir: str | None, weights_sha256: str | None) -> Path | None:
    """The in-domain extractor file under ``cache_dir/extractors/`` whose sha256 starts with the
    recorded ``weights_sha256``. The extractor's directory name hashes its training settings,
    which a ``genbench-eval`` result does not record: the floor finds the very weights the runs
    were scored with instead of training another extractor with default settings."""
    if not cache_dir or not weights_sha256:
        return None
    from genbench.io import sha256_file

    for path in sorted((Path(cache_dir) / "extractors").glob("*/*.pt")):
        try:
            if sha256_file(path).startswith(weights_sha256):
                return path
        except OSError:
            continue
    return None


def floor_protocol(runs: list[RunResult]) -> tuple[FloorProtocol | None, str | None]:
    """(protocol, None), or (None, why there can be no floor for these runs)."""
    ok = [r for r in runs if r.status == "ok"]
    if not ok:
        return None, "no run finished, so there is no evaluation protocol to repeat"
    with_data = [r for r in ok if r.config.get("data")]
    if not with_data:
        return None, "no finished run has a data config (config_resolved.yaml) naming its dataset"
    for run in with_data:  # a run evaluated during training carries the whole metrics config
        ev = (run.config.get("callbacks") or {}).get("evaluation")
        if ev and run.final:
            metrics = {**(ev.get("metrics") or {}), "num_samples": ev["num_samples"]}
            cache = ev.get("cache_dir") or (run.config.get("paths") or {}).get("cache_dir")
            return FloorProtocol(
                run, run.config["data"], metrics, cache, run.final.get("extractor_weights_sha256")
            ), None
    for run in with_data:  # evaluated by genbench-eval: its result names the sample count and extractor
        final = run.final
        if final.get("num_samples"):
            metrics: dict[str, Any] = {"num_samples": int(final["num_samples"])}
            if _extractor_setting(final.get("extractor")):
                metrics["extractor"] = _extractor_setting(final.get("extractor"))
            cache = (run.config.get("paths") or {}).get("cache_dir")
            if metrics.get("extractor") == "in-domain":
                found = find_extractor(cache, final.get("extractor_weights_sha256"))
                if found is not None:
                    metrics["extractor_path"] = str(found)
            split = str(final.get("real") or "").partition(":")[2]
            if split:
                metrics["split"] = split
            return FloorProtocol(run, run.config["data"], metrics, cache, final.get("extractor_weights_sha256")), None
    first = with_data[0]
    return None, (
        "none of the runs has been evaluated, so the sample count and extractor to repeat are unknown: "
        f"evaluate first, e.g. genbench-eval ckpt_path={first.last_ckpt}"
    )


def conditional_floor_count(runs: list[RunResult]) -> int | None:
    """The per-class sample count of the runs' intra-class FID (the smallest, should they differ),
    or None when no finished run is conditional."""
    from genbench.metrics.catalogue import INTRA_FID_SAMPLES

    counts = [int(r.final[INTRA_FID_SAMPLES]) for r in runs if r.status == "ok" and r.final.get(INTRA_FID_SAMPLES)]
    return min(counts) if counts else None


def real_floor(runs: list[RunResult], out_dir: Path | None = None) -> tuple[dict[str, Any] | None, Path | None]:
    """(floor metrics, grid of real test images) for the runs' dataset; (None, None) when the
    runs carry no evaluation protocol to copy (:func:`floor_protocol` says why; logged). The grid
    goes to ``out_dir/real.png``."""
    from hydra.utils import instantiate

    from genbench.data import to_unit_range
    from genbench.latents import save_grid
    from genbench.metrics import Evaluator, MetricsConfig

    protocol, why = floor_protocol(runs)
    if protocol is None:
        log.warning("No real-vs-real floor: %s.", why)
        return None, None
    datamodule = instantiate(protocol.data)
    datamodule.setup()
    metrics_cfg = MetricsConfig.from_mapping(protocol.metrics)
    evaluator = Evaluator.for_datamodule(datamodule, metrics_cfg, cache_dir=protocol.cache_dir)
    train = datamodule.real_images("train")
    per_class = conditional_floor_count(runs)
    if per_class and datamodule.num_classes:
        # the runs are conditional: the floor's real images are class-balanced at the runs' per-class count,
        # so its class accuracy and intra-class FID are those of real images at the same n per class
        from genbench.metrics.conditional import balanced_indices

        labels = datamodule.dataset("train").labels
        idx = balanced_indices(labels, per_class, datamodule.num_classes)
        floor = evaluator.evaluate(train[idx], labels=labels[idx], num_classes=datamodule.num_classes)
    else:
        floor = evaluator.evaluate(train[: metrics_cfg.num_samples])
    floor["protocol_from"] = str(protocol.run.run_dir)
    if protocol.weights_sha256 and floor.get("extractor_weights_sha256") != protocol.weights_sha256:
        floor["warning"] = (
            f"the floor's extractor ({floor.get('extractor_weights_sha256')}) is not the one the runs were scored "
            f"with ({protocol.weights_sha256}): the runs used another cache_dir; their numbers are not comparable"
        )
        log.warning("Real-vs-real floor: %s.", floor["warning"])
    grid = None
    if out_dir is not None:
        grid = save_grid(to_unit_range(datamodule.real_images("test")[:64]), Path(out_dir) / "real.png")
    return floor, grid
