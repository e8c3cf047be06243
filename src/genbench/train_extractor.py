"""``genbench-train-extractor``: train a dataset's in-domain feature extractor once.

genbench-train-extractor data=fashion_mnist            # -> ${paths.cache_dir}/extractors/fashion_mnist_32px_1ch/
genbench-train-extractor data=fashion_mnist force=true # retrain (the real-statistics cache follows the new hash)

Evaluation trains it on demand too; this command exists to do it ahead of a sweep (so that jobs
do not wait on each other's lock) and to report its test accuracy.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from genbench import CONFIG_DIR
from genbench.config import build
from genbench.errors import user_errors
from genbench.metrics.in_domain_training import ensure_in_domain_extractor, extractor_report
from genbench.summary import print_summary, setup_run_logging

log = logging.getLogger("genbench.train_extractor")


def train_extractor(cfg: DictConfig) -> dict[str, Any]:
    datamodule = build(cfg.data, f"datamodule '{cfg.data._target_}'")
    training = OmegaConf.to_container(cfg.training, resolve=True)
    path = ensure_in_domain_extractor(
        datamodule, cfg.paths.cache_dir, train_if_missing=True, force=cfg.force, **training
    )
    report = extractor_report(path) or {}
    report["path"] = str(path)
    log.info("In-domain extractor at %s: test accuracy %.4f", path, report.get("test_accuracy", float("nan")))
    print(json.dumps(report, indent=2))
    print_summary(
        "genbench-train-extractor: done",
        {
            "extractor": path,
            "dataset": f"{report.get('dataset')} ({report.get('image_size')} px, {report.get('channels')} ch)",
            "test accuracy": report.get("test_accuracy"),
            "trained": (
                f"{report.get('epochs')} epochs in {report.get('train_seconds')} s" if "epochs" in report else None
            ),
            "report": path.with_name("extractor.json"),
        },
    )
    return report


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="train_extractor")
def main(cfg: DictConfig) -> None:
    setup_run_logging()
    with user_errors():
        train_extractor(cfg)


if __name__ == "__main__":
    main()
