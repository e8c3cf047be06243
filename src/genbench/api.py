"""A small Python API for notebooks: compose, train, load, sample, evaluate.

The command-line tools are thin Hydra entry points; these functions are the same steps without a
command line, for a notebook or a script::

    from genbench import api

    cfg = api.compose(["model=<family>", "data=synthetic", "debug=fast"])  # any of registry.family_names()
    run = api.train(cfg)                         # run.run_dir, run.metrics, run.checkpoint
    model = api.load(run.checkpoint)             # the family comes from the checkpoint
    images = api.sample(model, 16, seed=0)       # uint8 (16, C, H, W)
    metrics = api.evaluate(model, num_samples=256)

Each function reuses what the command line runs (``genbench.train.train``,
``genbench.models.load_model_from_checkpoint``, ``genbench.metrics.Evaluator``), so a notebook's
numbers are the command line's numbers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from genbench import CONFIG_DIR
from genbench.errors import GenbenchError


def sampler_names() -> list[str]:
    """The samplers ``sample(sampler=<name>)`` knows: the configs of the ``sampler`` group
    (genbench's ``conf/sampler/`` and every plug-in's)."""
    from genbench.registry import group_options

    return list(group_options("sampler"))


def build_sampler(name: str, **kwargs: Any) -> Any:
    """The sampler ``sampler/<name>.yaml`` describes, with ``kwargs`` overriding its settings
    (unbound: the model that samples with it binds it)."""
    from hydra.utils import instantiate

    from genbench.registry import group_options

    options = group_options("sampler")
    if name not in options:
        raise GenbenchError(f"Unknown sampler '{name}': use one of {', '.join(options)} (or a Sampler).")
    return instantiate(OmegaConf.merge(OmegaConf.create(options[name].read_text()), dict(kwargs)))


@dataclass
class Run:
    """What :func:`train` returns: the run directory, the final metrics (as in its metrics.json)
    and the checkpoint to load or resume (``<run>/checkpoints/last.ckpt``; None without one)."""

    run_dir: Path
    metrics: dict[str, Any] = field(default_factory=dict)
    checkpoint: Path | None = None


def _compose(overrides: Sequence[str], config_name: str) -> DictConfig:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException

    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            return hydra_compose(config_name=config_name, overrides=list(overrides))
    except HydraException as e:  # a typo in an override: Hydra's own message says which
        raise GenbenchError(f"Cannot compose {config_name} with {list(overrides)}: {e}") from e


def compose(
    overrides: Sequence[str] = (), config_name: str = "train", output_dir: str | Path | None = None
) -> DictConfig:
    """The config a command line with these overrides gets (``config_name``: train, eval,
    benchmark), ready for :func:`train` or ``genbench.evaluate.evaluate``. Composing only reads
    the packaged configs: nothing is created on disk, so a config can be composed just to look at
    it (``print(OmegaConf.to_yaml(cfg))``).

    Outside ``@hydra.main`` nothing sets ``paths.output_dir`` (Hydra's ``runtime.output_dir``):
    ``output_dir`` sets it here; without it, it is left for training to choose: :func:`train`
    (and ``genbench.train.train``) claims a fresh run directory when it starts, as the command
    line claims its own (``outputs/<task>/runs/<time>`` under ``$GENBENCH_ROOT`` or the current
    directory). Until then the paths derived from it (``trainer.default_root_dir``...) cannot be
    resolved; pass ``output_dir`` where something needs them first (``genbench.evaluate.evaluate``
    of two image folders writes its result into the run directory)."""
    cfg = _compose(overrides, config_name)
    if output_dir is not None:
        with open_dict(cfg):
            cfg.paths.output_dir = str(Path(output_dir).absolute())
    return cfg


def train(cfg: DictConfig) -> Run:
    """Fit one model as ``genbench-train`` does (checkpoints, sample grids, metrics.json in the run
    directory) and say where it went."""
    from genbench.rundir import RunLayout
    from genbench.train import ensure_output_dir
    from genbench.train import train as train_run

    run_dir = ensure_output_dir(cfg)
    metrics = train_run(cfg)
    last = RunLayout(run_dir).last_checkpoint
    return Run(run_dir=run_dir, metrics=metrics, checkpoint=last if last.is_file() else None)


def load(path: str | Path | Run, device: str | torch.device = "cpu") -> Any:
    """A trained model from a checkpoint, a run directory (its ``checkpoints/last.ckpt``) or a
    :class:`Run`, in eval mode on ``device``. The family and architecture come from the checkpoint."""
    from genbench.models import load_model_from_checkpoint
    from genbench.rundir import RunLayout

    if isinstance(path, Run):
        path = path.checkpoint or path.run_dir
    path = Path(path).expanduser()
    if path.is_dir():
        path = RunLayout(path).last_checkpoint
    return load_model_from_checkpoint(path, device)


def _sampler(model: Any, sampler: Any, sampler_kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """``sample()``'s keyword: a Sampler, or one built from its name and kwargs."""
    if sampler is None and not sampler_kwargs:
        return {}
    if not getattr(model, "supports_samplers", False):
        raise GenbenchError(
            f"A {model.family} has one way to sample: leave out sampler= (it takes no sampler settings)."
        )
    if isinstance(sampler, str):
        sampler = build_sampler(sampler, **sampler_kwargs)
    elif sampler_kwargs:
        raise GenbenchError(
            f"Sampler settings {dict(sampler_kwargs)} need sampler=<name> ({', '.join(sampler_names())})."
        )
    return {"sampler": sampler}


def sample(
    model: Any, n: int, seed: int = 0, sampler: Any = None, labels: Any = None, **sampler_kwargs: Any
) -> torch.Tensor:
    """``n`` images as uint8 (n, C, H, W) on the CPU: the images an evaluation of ``n`` samples with
    this ``seed`` (``genbench-eval seed=``, the training evaluation's ``seed``) scores, and the
    files ``genbench-sample`` writes for the same seed and count, because all three draw them with
    :func:`genbench.metrics.evaluator.seeded_chunks` (each chunk of images from its own generator,
    seeded from ``seed`` and the chunk's index). The same arguments give the same images on every call.

    For a model with ``supports_samplers``: ``sampler="ddim", steps=50`` (any name of
    :func:`sampler_names`, with its settings), or a Sampler object; None: the model's own sampler.
    ``labels`` (a conditional model): one class for all, or a list of classes taken in turn, as
    ``genbench-eval labels=`` takes them; None: every class in turn."""
    from genbench.evaluate import evaluation_labels
    from genbench.metrics.evaluator import sample_share

    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise GenbenchError(f"sample(n={n!r}): give a whole number of images >= 1.")
    kwargs = _sampler(model, sampler, sampler_kwargs)
    images, _ = sample_share(model, n, seed, labels=evaluation_labels(model, n, labels), **kwargs)
    return images


def evaluate(
    source: Any,
    data: str | Any | None = None,
    num_samples: int = 1000,
    seed: int = 0,
    sampler: Any = None,
    cache_dir: str | Path | None = None,
    **metrics: Any,
) -> dict[str, Any]:
    """FID, KID, IS, precision/recall of a model (``num_samples`` samples drawn with ``seed`` and
    ``sampler``) or of uint8 images, against ``data``'s ``metrics.split`` (default test), through the
    same :class:`~genbench.metrics.Evaluator` as the command line; returns its flat result dict
    (``fid``, ``kid_mean``, ``is_mean``, ``precision``, ``recall``, ``num_samples``, ``extractor``...).

    ``data``: a dataset name (conf/data/<name>.yaml), a datamodule, or None for the model's own
    (from its checkpoint). ``metrics``: any ``metrics`` setting (``kid_subsets=10``,
    ``extractor="in-domain"``, ``extractor_training={...}``) over conf/metrics/default.yaml.
    ``cache_dir``: where the in-domain extractor and the real features are cached (default
    ``paths.cache_dir``)."""
    from genbench.config import build
    from genbench.metrics import Evaluator, MetricsConfig, check_images

    cfg = _compose([f"data={data}"] if isinstance(data, str) else [], "eval")
    if isinstance(data, str):
        datamodule = build(cfg.data, f"datamodule '{data}'")
    elif data is not None:
        datamodule = data
    else:
        stored = (getattr(source, "genbench_config", None) or {}).get("data")
        if not stored:
            raise GenbenchError("evaluate() needs data=<dataset name or datamodule> (images carry no dataset).")
        datamodule = build(OmegaConf.create(stored), "datamodule")
    images = check_images(source, "images") if isinstance(source, torch.Tensor) else None
    n = len(images) if images is not None else num_samples
    settings = {**OmegaConf.to_container(cfg.metrics, resolve=True), **metrics, "num_samples": n}
    mcfg = MetricsConfig.from_mapping(settings)
    evaluator = Evaluator.for_datamodule(datamodule, mcfg, cache_dir=cache_dir or cfg.paths.cache_dir, progress=False)
    if images is None:  # the extractor exists now: a bad setting fails before the sampling
        images = sample(source, n, seed, sampler)
    return evaluator.evaluate(images)


__all__ = ["Run", "build_sampler", "compose", "evaluate", "load", "sample", "sampler_names", "train"]
