"""``genbench-eval``: metrics of a checkpoint, or of one image source against another.

genbench-eval ckpt_path=outputs/train/runs/<run>/checkpoints/last.ckpt
genbench-eval ckpt_path=... metrics.num_samples=2000 sampler=ddim sampler.steps=50
genbench-eval data=fashion_mnist input1=data:test:0-5000 input2=data:test:5000-   # real-vs-real floor
genbench-eval data=fashion_mnist input1=/path/to/png/folder                            # a folder vs the test split

A checkpoint carries its model and data config, so any family evaluates without more flags. The
result is appended to ``metrics.json`` beside the checkpoint (``latest`` + ``history``: an earlier
evaluation, e.g. with another sampler or sample count, is never overwritten). A checkpoint's record
carries the same fields as the training callback's records (``eval/metrics.jsonl``): every metric
key, ``step``, ``epoch``, ``images_seen`` (from the checkpoint's budget state), ``evaluated_at``,
plus ``source: "genbench-eval"`` and ``ckpt``; the likelihood (``metrics.likelihood``) is computed
too, and the memorisation check's picture of the closest pairs is written beside metrics.json.
"""

from __future__ import annotations

import json
import logging
import re
import time
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from genbench import CONFIG_DIR
from genbench.callbacks.sample_grid import class_grid_samples
from genbench.config import build
from genbench.data.folder import load_image_folder
from genbench.devices import resolve_device
from genbench.errors import GenbenchError, user_errors
from genbench.io import atomic_write_json, check_writable, read_json
from genbench.latents import save_grid, write_latent_grids
from genbench.metrics import Evaluator, MetricsConfig, check_images, scalar_results
from genbench.metrics import conditional as cond
from genbench.metrics.evaluator import sample_share
from genbench.metrics.fidelity import check_sample_counts
from genbench.metrics.record import CLI, EvalRecord
from genbench.rundir import CHECKPOINTS, RunLayout
from genbench.schema import validate_config
from genbench.summary import print_summary, setup_run_logging

log = logging.getLogger("genbench.evaluate")

#: data:<split> or data:<split>:<start>-<stop> (either bound may be left out); no brackets, so no
#: quoting is needed on a Hydra command line
_DATA_SOURCE = re.compile(r"^data:(?P<split>\w+)(?::(?P<start>\d*)-(?P<stop>\d*))?$")


def append_result(path: Path, result: dict[str, Any]) -> None:
    """Add ``result`` to the json at ``path`` as ``latest`` and at the end of ``history``."""
    previous = read_json(path)
    history = previous.get("history", []) if isinstance(previous, dict) else []
    if previous is not None and not isinstance(previous, dict):
        path.rename(path.with_suffix(f".unreadable-{int(time.time())}.json"))
    atomic_write_json(path, {"latest": result, "history": [*history, result]})


def _datamodule(cfg: DictConfig, ckpt_data: dict[str, Any] | None = None) -> Any | None:
    data_cfg = cfg.get("data") or ckpt_data
    if not data_cfg:
        return None
    dm = build(data_cfg, "datamodule")
    dm.setup()
    return dm


def load_source(
    source: str, datamodule: Any | None, num_samples: int, seed: int, device: torch.device
) -> tuple[torch.Tensor, str]:
    """An image source -> (uint8 images, label): ``data:<split>[:<start>-<stop>]``, a folder or a .ckpt."""
    m = _DATA_SOURCE.match(source)
    if m:
        if datamodule is None:
            raise GenbenchError(f"Source {source} needs a dataset: add data=<name> (e.g. data=fashion_mnist).")
        images = datamodule.real_images(m["split"])
        if m["start"] is not None:
            start = int(m["start"]) if m["start"] else None
            stop = int(m["stop"]) if m["stop"] else None
            images = images[start:stop]
        return images, f"{datamodule.name}:{source[5:]}"
    path = Path(source).expanduser()
    if path.is_dir():
        return load_image_folder(path)[0], str(path)
    if path.suffix == ".ckpt":
        from genbench.models import load_model_from_checkpoint

        model = load_model_from_checkpoint(path, device)
        return sample_share(model, num_samples, seed)[0], str(path)  # the checkpoint's evaluation images
    raise GenbenchError(
        f"Unknown image source '{source}': use data:<split> (optionally a range: data:test:0-5000), a folder of "
        "images, or a .ckpt file."
    )


def _match(images: torch.Tensor, shape: tuple[int, ...], what: str) -> torch.Tensor:
    """Bring a folder's images to the reference's channels and size (as the datamodules do)."""
    from genbench.data.base import fit_channels, fit_size

    if tuple(images.shape[1:]) == tuple(shape):
        return images
    log.warning("Converting %s images from %s to %s.", what, tuple(images.shape[1:]), tuple(shape))
    if images.shape[-1] != images.shape[-2]:
        raise GenbenchError(f"The {what} images are not square ({tuple(images.shape[-2:])}); crop them first.")
    return fit_channels(fit_size(images, shape[-1]), shape[0])


def budget_progress(ckpt: dict[str, Any]) -> dict[str, Any]:
    """What the run's TrainingBudget had recorded when the checkpoint was written (images seen,
    CPU seconds, mean load): the same cost fields the callback's records carry."""
    for key, state in (ckpt.get("callbacks") or {}).items():
        if str(key).startswith("TrainingBudget") and isinstance(state, dict) and "images_seen" in state:
            samples = state.get("load_samples") or 0
            out = {"images_seen": state["images_seen"], "train_seconds": round(float(state.get("train_seconds", 0)), 3)}
            if "cpu_seconds" in state:
                out["cpu_seconds"] = round(float(state["cpu_seconds"]), 3)
            if samples:
                out["load_avg"] = round(float(state.get("load_sum", 0.0)) / samples, 3)
            return out
    return {}


def pairs_location(out: Path, stem: str) -> tuple[Path, Path]:
    """(PNG path, the directory its recorded path is relative to): beside metrics.json, relative to
    the run directory when metrics.json is the run's ``checkpoints/metrics.json``."""
    base = out.parent.parent if out.parent.name == CHECKPOINTS else out.parent
    return out.parent / f"closest_pairs-{stem}.png", base


def _relative_pairs(result: dict[str, Any], base: Path) -> None:
    if "closest_pairs" in result:
        result["closest_pairs"] = Path(result["closest_pairs"]).resolve().relative_to(base.resolve()).as_posix()


def output_path(cfg: DictConfig) -> Path:
    """Where the result goes: ``output``, else beside the checkpoint, else in the run directory."""
    if cfg.get("output"):
        return Path(str(cfg.output)).expanduser()
    if not cfg.get("input1") and cfg.get("ckpt_path"):
        return RunLayout.of_checkpoint(str(cfg.ckpt_path)).eval_results
    return RunLayout(cfg.paths.output_dir).metrics


def sampler_kwargs(cfg: DictConfig, model: Any) -> dict[str, Any]:
    """``sample()``'s keyword for the command line's ``sampler=<name>`` (any config of the sampler
    group, with its overrides), or nothing for the model's own sampler. A family without samplers
    ignores it with a warning, so one command line serves every checkpoint of a benchmark."""
    sampler = build(cfg.sampler, "sampler") if cfg.get("sampler") else None
    if sampler is not None and not model.supports_samplers:
        log.warning("sampler=%s is ignored: a %s has no sampler.", getattr(sampler, "name", sampler), model.family)
        sampler = None
    return {"sampler": sampler} if sampler is not None else {}


def evaluation_labels(model: Any, n: int, labels: Any) -> torch.Tensor | None:
    """The classes ``genbench-eval`` asks a conditional model for: ``labels=`` one class for all,
    or a list of classes taken in turn (a list of ``n`` gives each sample its own); null: every
    class in turn (a balanced sample). None for an unconditional model; asking one for a class is
    an error (:meth:`~genbench.models.base.GenerativeModel.class_labels`)."""
    if OmegaConf.is_config(labels):
        labels = OmegaConf.to_container(labels)
    if isinstance(labels, list | tuple) and 0 < len(labels) < n:
        labels = [labels[i % len(labels)] for i in range(n)]
    return model.class_labels(n, labels)


def guidance_kwargs(cfg: DictConfig, model: Any) -> dict[str, Any]:
    """``sample()``'s ``guidance=w`` for the command line's ``guidance=<w>`` (null: the model's own)."""
    if cfg.get("guidance") is None:
        return {}
    if not cond.guided(model):
        raise GenbenchError(
            f"guidance={cfg.guidance}: this {model.family} takes no guidance (it needs a conditional model of a family "
            "with classifier-free guidance); leave guidance=null."
        )
    return {"guidance": float(cfg.guidance)}


def guidance_sweep(
    cfg: DictConfig, model: Any, evaluator: Evaluator, mcfg: MetricsConfig, kwargs: dict[str, Any]
) -> dict[str, Any]:
    """The guidance sweep of a guided model (``metrics.conditional``): balanced classes, the same
    seed at every scale."""
    n = mcfg.conditional.guidance_samples or mcfg.num_samples
    labels = cond.balanced_labels(n, model.num_classes)

    def evaluate_at(w: float) -> dict[str, Any]:
        log.info("Guidance sweep: %d samples at w=%g...", n, w)
        images, _ = sample_share(model, n, cfg.seed, labels=labels, **{**kwargs, "guidance": w})
        return evaluator.evaluate(images, labels=labels, num_classes=model.num_classes)

    return {cond.GUIDANCE: cond.guidance_sweep(mcfg.conditional.guidance_scales, evaluate_at), "guidance_samples": n}


#: what a checkpoint's evaluation shows on its run's W&B run beside the numbers: the first samples,
#: their per-sample metrics and their asked classes (see genbench.loggers.evaluation_media)
Media = tuple[torch.Tensor, dict[str, list[Any]], torch.Tensor | None]


def evaluate_checkpoint(cfg: DictConfig) -> tuple[dict[str, Any], Path, Media | None]:
    """Sample the checkpoint and evaluate it: (result, metrics.json path, the samples table's
    content when the checkpoint's run logs to W&B, else None)."""
    from genbench.models import checkpoint_family, load_model_from_checkpoint, read_checkpoint

    ckpt_path = Path(str(cfg.ckpt_path)).expanduser()
    ckpt = read_checkpoint(ckpt_path)
    checkpoint_family(ckpt, ckpt_path)
    ckpt_cfg = ckpt["genbench"].get("config") or {}
    if not cfg.get("data") and not ckpt_cfg.get("data"):
        raise GenbenchError(f"{ckpt_path} carries no data config; pass data=<dataset> to say what it was trained on.")
    device = resolve_device(cfg.device)
    model = load_model_from_checkpoint(ckpt_path, device)
    datamodule = _datamodule(cfg, ckpt_cfg.get("data"))
    if tuple(model.image_shape) != tuple(datamodule.image_shape):
        raise GenbenchError(
            f"The checkpoint's model makes {model.image_shape} images but the data gives {datamodule.image_shape}."
        )
    mcfg = MetricsConfig.from_mapping(cfg.metrics)
    evaluator = Evaluator.for_datamodule(datamodule, mcfg, cache_dir=cfg.paths.cache_dir)
    # the counts KID's subsets and FID's covariance need are known now: refuse them before sampling
    check_sample_counts(mcfg.num_samples, len(evaluator.real), evaluator.spec, mcfg)
    kwargs = sampler_kwargs(cfg, model)
    sampler = kwargs.get("sampler")
    kwargs.update(guidance_kwargs(cfg, model))
    labels = evaluation_labels(model, mcfg.num_samples, cfg.get("labels"))
    log.info("Drawing %d samples from %s (%s)...", mcfg.num_samples, ckpt_path, model.family)
    start = time.perf_counter()
    # the evaluation images of the training callback's protocol: the same at a seed under any number of ranks
    generated, _ = sample_share(model, mcfg.num_samples, cfg.seed, labels=labels, progress=True, **kwargs)
    sampling_seconds = time.perf_counter() - start
    out = output_path(cfg)
    pairs, base = pairs_location(out, f"{ckpt_path.stem}-n{mcfg.num_samples}")
    result = evaluator.evaluate(generated, pairs_path=pairs, labels=labels, num_classes=model.num_classes)
    _relative_pairs(result, base)
    media = None
    if RunLayout.of_checkpoint(ckpt_path).wandb_run_id.is_file():  # a W&B run: its samples table too
        from genbench.loggers import TABLE_SAMPLES
        from genbench.metrics.per_sample import per_sample_metrics

        shown = generated[:TABLE_SAMPLES]
        media = (shown, per_sample_metrics(evaluator, shown), None if labels is None else labels[:TABLE_SAMPLES])
    if labels is not None:
        result["labels_asked"] = sorted(set(labels.tolist()))
    if mcfg.likelihood.due(final=True):
        log.info("Computing the test-set likelihood (metrics.likelihood)...")
        with torch.no_grad():
            result.update(evaluator.likelihood(model, torch.Generator().manual_seed(cfg.seed)))
    if cond.guided(model) and mcfg.conditional.sweep_due(final=True) and "guidance" not in kwargs:
        result.update(guidance_sweep(cfg, model, evaluator, mcfg, kwargs))
    if cfg.get("latent_grids", True):  # the pictures a user of each family expects, beside the numbers
        val_labels = datamodule.dataset("val").labels[:8] if model.num_classes is not None else None
        grids = write_latent_grids(
            model,
            out.parent,
            real=datamodule.real_images("val")[:8],
            tag=ckpt_path.stem,
            seed=cfg.seed,
            labels=val_labels,  # a conditional encoder family reconstructs with the true classes
        )
        if model.num_classes is not None:  # a row per class
            images, nrow = class_grid_samples(
                model, 8 * model.num_classes, torch.Generator().manual_seed(cfg.seed), **kwargs
            )
            grids["classes"] = save_grid(images, out.parent / f"classes_{ckpt_path.stem}.png", nrow=nrow)
        result["grids"] = {name: path.name for name, path in grids.items()}  # relative to metrics.json
    used = sampler if sampler is not None else getattr(model, "sampler", None)  # None: a family without samplers
    record = EvalRecord(
        CLI,
        model.family,
        ckpt.get("epoch"),
        ckpt.get("global_step"),
        cfg.seed,
        used.describe() if used is not None else None,
    )
    record.stamp(
        result,
        ckpt=ckpt_path.name,
        **budget_progress(ckpt),
        sampling_seconds=round(sampling_seconds, 2),
        sampling_images_per_s=round(mcfg.num_samples / max(sampling_seconds, 1e-9), 1),
    )
    return result, out, media


def compare_sources(cfg: DictConfig) -> tuple[dict[str, Any], Path]:
    mcfg = MetricsConfig.from_mapping(cfg.metrics)
    datamodule = _datamodule(cfg)
    device = resolve_device(cfg.device)
    input2 = cfg.get("input2") or f"data:{mcfg.split}"
    real, real_label = load_source(str(input2), datamodule, mcfg.num_samples, cfg.seed + 1, device)
    real = check_images(real, "input2")

    def make_evaluator() -> Evaluator:
        return Evaluator.for_datamodule(
            datamodule, mcfg, cache_dir=cfg.paths.cache_dir, real=real, real_label=real_label
        )

    evaluator = None
    if Path(str(cfg.input1)).suffix == ".ckpt":  # sampled: its count is checkable before the (slow) sampling
        evaluator = make_evaluator()
        check_sample_counts(mcfg.num_samples, len(real), evaluator.spec, mcfg)
    # a split or a folder loads in seconds (or names a bad source) before the extractor is resolved
    generated, gen_label = load_source(str(cfg.input1), datamodule, mcfg.num_samples, cfg.seed, device)
    generated = _match(check_images(generated, "input1"), tuple(real.shape[1:]), "input1")
    out = output_path(cfg)
    pairs, base = pairs_location(out, f"{out.stem}-{len(generated)}")
    result = (evaluator or make_evaluator()).evaluate(generated, pairs_path=pairs)
    _relative_pairs(result, base)
    EvalRecord(CLI, seed=cfg.seed).stamp(result, input1=gen_label, input2=real_label)
    return result, out


def log_to_run_wandb(ckpt_path: Path, result: dict[str, Any], media: Media | None = None) -> str | None:
    """Add genbench-eval's scalars to the W&B run of the checkpoint's training run, when it had
    one (``<run>/wandb_run_id``, written by genbench.loggers): the run is resumed by its id, with
    the project and entity it was trained with, offline without credentials. So the dashboard
    holds a run's numbers whichever path computed them; ``media`` adds the samples table and the
    class histograms, as the training's evaluations log them. Returns the W&B run id, or None."""
    layout = RunLayout.of_checkpoint(ckpt_path)
    run_dir, id_file = layout.root, layout.wandb_run_id
    if not id_file.is_file() or not id_file.read_text().strip():
        return None
    from genbench.extras import require_extra

    try:  # the numbers are saved already: without W&B, say so and skip only the dashboard
        require_extra("wandb", f"adding these numbers to the W&B run of {run_dir}")
    except GenbenchError as e:
        log.warning("%s", e)
        return None
    import wandb

    from genbench import rundir
    from genbench.loggers import evaluation_media, wandb_mode

    config = rundir.read_config(run_dir)
    conf = ((config.get("logger") or {}).get("wandb")) or {}
    mode = wandb_mode()
    run = wandb.init(
        id=id_file.read_text().strip(),
        resume="allow",
        project=conf.get("project") or "genbench",
        entity=conf.get("entity"),
        dir=str(run_dir),
        job_type="eval",
        **({"mode": mode} if mode else {}),
    )
    try:
        scalars = {**scalar_results(result, "eval/"), **cond.sweep_scalars(result.get(cond.GUIDANCE) or [])}
        if media is not None:
            images, per_sample, labels = media
            scalars.update(evaluation_media(images, result, per_sample, labels))
        run.log({**scalars, "trainer/global_step": result.get("step") or 0})
        run.summary.update({"eval/source": "genbench-eval", "eval/ckpt": result.get("ckpt")})
        log.info("Logged the evaluation to W&B run %s (%s).", run.id, run.settings.mode)
    finally:
        run.finish()
    return run.id


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Run the evaluation the config asks for and append the result to its metrics.json.

    The config's values and the output path are checked first: a typo or an unwritable path costs
    seconds, not the sampling and feature extraction before them.
    """
    validate_config(cfg)
    check_writable(output_path(cfg))
    media = None
    if cfg.get("input1"):
        result, out = compare_sources(cfg)
    elif cfg.get("ckpt_path"):
        result, out, media = evaluate_checkpoint(cfg)
    else:
        raise GenbenchError(
            "Nothing to evaluate: pass ckpt_path=<run>/checkpoints/last.ckpt, or input1=<source> "
            "[input2=<source>] with sources data:<split>, a folder of images or a .ckpt."
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    append_result(out, result)
    result["metrics_json"] = str(out)
    if result.get("source") == CLI:
        result["wandb_run_id"] = log_to_run_wandb(Path(str(cfg.ckpt_path)).expanduser(), result, media)
    log.info("%s -> %s", json.dumps(scalar_results(result)), out)
    print(json.dumps({k: v for k, v in result.items() if k != "history"}, indent=2))
    return result


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="eval")
def main(cfg: DictConfig) -> None:
    setup_run_logging()
    with user_errors():
        if cfg.get("print_config"):
            print(OmegaConf.to_yaml(cfg, resolve=True))
        result = evaluate(cfg)
        shown = ("fid", "kid_mean", "is_mean", "precision", "recall", "bpd", "classes_covered", "memorised_frac")
        shown += ("cond_accuracy", "intra_fid")
        print_summary(
            "genbench-eval: done",
            {
                "evaluated": cfg.get("ckpt_path") or f"{cfg.get('input1')} vs {cfg.get('input2') or 'the test split'}",
                "metrics": {k: result[k] for k in shown if k in result},
                "written": result["metrics_json"],
            },
        )


if __name__ == "__main__":
    main()
