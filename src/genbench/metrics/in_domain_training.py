"""Training the in-domain extractor once per dataset, resolution and channels, into the cache.

Concurrent jobs that need the same extractor train it once: the first takes an exclusive lock,
the others wait and then reuse the file it wrote atomically.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from genbench.data.base import to_unit_range
from genbench.errors import GenbenchError
from genbench.io import atomic_torch_save, atomic_write_json, file_lock, read_json, sha256_file, tensor_digest
from genbench.metrics.in_domain import FILE_FORMAT, DomainCNN, extractor_dir, load_extractor_file
from genbench.stopping import check_stop

log = logging.getLogger("genbench.metrics")


def _labels(datamodule: Any, split: str) -> torch.Tensor:
    labels = datamodule.dataset(split).labels
    if labels is None or bool((labels < 0).any()):
        raise GenbenchError(
            f"{datamodule.name} has no class labels, so no in-domain extractor can be trained on it. "
            "Use metrics.extractor=inception-v3-compat (with local weights) or a labelled dataset."
        )
    return labels.long()


@torch.no_grad()
def classifier_accuracy(net: DomainCNN, images_u8: torch.Tensor, labels: torch.Tensor, batch_size: int = 500) -> float:
    net.eval()
    correct = 0
    for i in range(0, len(images_u8), batch_size):
        _, logits = net(to_unit_range(images_u8[i : i + batch_size]))
        correct += int((logits.argmax(1) == labels[i : i + batch_size]).sum())
    return correct / max(1, len(images_u8))


def train_in_domain_extractor(
    datamodule: Any,
    epochs: int = 2,
    batch_size: int = 128,
    lr: float = 3e-3,
    feature_dim: int = 64,
    width: int = 16,
    seed: int = 0,
    min_steps: int = 200,
    progress: bool = True,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Train a :class:`DomainCNN` on the datamodule's training labels; return (file payload, report).

    A plain loop rather than a Lightning Trainer: it runs inside other jobs (a training run's
    evaluation callback, genbench-eval) where a nested Trainer would fight for loggers and hooks.
    Adam with a one-cycle schedule reaches >90% on Fashion-MNIST in 2 epochs on 2 CPU cores.
    ``min_steps`` raises the epoch count on small datasets (the synthetic one has a few batches
    per epoch), so the extractor is never left barely trained.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    datamodule.setup()
    images, labels = datamodule.real_images("train"), _labels(datamodule, "train")
    test_images, test_labels = datamodule.real_images("test"), _labels(datamodule, "test")
    num_classes = int(max(labels.max(), test_labels.max())) + 1
    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = DomainCNN(images.shape[1], num_classes, feature_dim=feature_dim, width=width)
    batch_size = min(batch_size, len(images))
    steps_per_epoch = len(images) // batch_size
    epochs = max(epochs, -(-min_steps // steps_per_epoch))
    total = epochs * steps_per_epoch
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=max(1, total), pct_start=0.15)
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn()]
    start = time.perf_counter()
    # the bar is transient (it sits inside a training run's own progress display); these lines stay
    # in the run's log: a quarter of the way, half, three quarters
    milestones = {max(1, total * q // 4) for q in (1, 2, 3)}
    done = 0
    net.train()
    with Progress(*columns, transient=True, disable=not progress) as bar:
        task = bar.add_task(f"training in-domain extractor ({datamodule.name})", total=total)
        for _ in range(epochs):
            perm = torch.randperm(len(images), generator=g)
            for s in range(steps_per_epoch):
                check_stop()
                idx = perm[s * batch_size : (s + 1) * batch_size]
                _, logits = net(to_unit_range(images[idx]))
                loss = F.cross_entropy(logits, labels[idx], label_smoothing=0.05)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                bar.advance(task)
                done += 1
                if done in milestones:
                    log.info(
                        "In-domain extractor (%s): step %d/%d, loss %.3f, %.0f s",
                        datamodule.name, done, total, loss.item(), time.perf_counter() - start,
                    )  # fmt: skip
    train_seconds = time.perf_counter() - start
    accuracy = classifier_accuracy(net, test_images, test_labels)
    report = {
        "dataset": datamodule.name,
        "image_size": int(images.shape[-1]),
        "channels": int(images.shape[1]),
        "num_classes": num_classes,
        "test_accuracy": accuracy,
        "num_test": len(test_images),
        "num_train": len(images),
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": lr,
        "train_seconds": round(train_seconds, 2),
        "seed": seed,
        **net.config,
    }
    payload = {
        "format": FILE_FORMAT,
        "config": net.config,
        "state_dict": {k: v.detach().clone() for k, v in net.state_dict().items()},
        "dataset": datamodule.name,
        "image_size": int(images.shape[-1]),
        "test_accuracy": accuracy,
    }
    return payload, report


#: train_in_domain_extractor's default settings: part of every training key
TRAINING_DEFAULTS = {
    name: p.default
    for name, p in inspect.signature(train_in_domain_extractor).parameters.items()
    if p.default is not inspect.Parameter.empty
}


def training_key(datamodule: Any, train_kwargs: dict[str, Any]) -> str:
    """12 hex digits of a hash of everything that determines the extractor's weights: the exact
    training and test images and labels (``limit_train``, the split seed, a resize... all change
    them) and every training setting, defaults included (``progress`` excepted)."""
    settings = {k: v for k, v in {**TRAINING_DEFAULTS, **train_kwargs}.items() if k != "progress"}
    parts = [FILE_FORMAT, json.dumps(settings, sort_keys=True, default=str)]
    for split in ("train", "test"):
        parts += [tensor_digest(datamodule.real_images(split)), tensor_digest(_labels(datamodule, split))]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:12]


def ensure_in_domain_extractor(
    datamodule: Any,
    cache_dir: str | Path,
    train_if_missing: bool = True,
    force: bool = False,
    **train_kwargs: Any,
) -> Path:
    """Path of the dataset's in-domain extractor, training it first when missing (once: concurrent
    jobs wait on a lock and then reuse the file the first one wrote atomically)."""
    datamodule.setup()
    key = training_key(datamodule, train_kwargs)
    directory = extractor_dir(cache_dir, datamodule.name, datamodule.image_size, datamodule.channels, key)
    path = directory / "extractor.pt"

    def usable() -> bool:
        if force or not path.is_file():
            return False
        try:
            load_extractor_file(path)
            return True
        except GenbenchError as e:
            log.warning("%s; retraining it.", e)
            return False

    if usable():
        return path
    if not train_if_missing:
        raise GenbenchError(
            f"No in-domain extractor for {datamodule.name} at {datamodule.image_size}px in {directory}. Train it "
            f"with `genbench-train-extractor data={datamodule.name}` or set metrics.train_extractor=true."
        )
    with file_lock(directory.parent / f".{directory.name}.lock", f"the in-domain extractor of {datamodule.name}"):
        if usable():  # another job trained it while we waited
            return path
        log.info(
            "Training the in-domain extractor for %s (%d px, %d ch) into %s; evaluation waits for it (once per dataset)",
            datamodule.name, datamodule.image_size, datamodule.channels, directory,
        )  # fmt: skip
        # callers may sit inside Lightning's validation loop (inference mode, no grad)
        with torch.inference_mode(False), torch.enable_grad():
            payload, report = train_in_domain_extractor(datamodule, **train_kwargs)
        atomic_torch_save(payload, path)
        report["weights_sha256"] = sha256_file(path)
        report["training_key"] = key
        atomic_write_json(directory / "extractor.json", report)
        log.info(
            "In-domain extractor: %.2f%% test accuracy after %d epochs (%.0f s), cached at %s",
            100 * report["test_accuracy"],
            report["epochs"],
            report["train_seconds"],
            path,
        )
    return path


def extractor_report(path: str | Path) -> dict[str, Any] | None:
    """The json written beside an extractor (test accuracy, training time...), if any."""
    return read_json(Path(path).with_name("extractor.json"))
