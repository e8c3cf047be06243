"""``genbench-sample``: a checkpoint's samples as files, for evaluators outside genbench.

genbench-sample ckpt_path=outputs/train/runs/<run>/checkpoints/last.ckpt num_samples=50000 out=samples/
genbench-sample ckpt_path=... num_samples=50000 format=npz out=samples.npz sampler=ddim sampler.steps=50

Two formats, each the one its readers expect:

* ``format=png``: a folder of PNGs, one per image, named ``000000.png``, ``000001.png``... (zero
  padded, so the file order is the sample order). Grey images are written as 1-channel (``L``)
  PNGs: lossless, and every folder reader (clean-fid and torch-fidelity convert to RGB on load,
  ``genbench-eval input1=<folder>`` keeps them grey, as the dataset is) reads them;
* ``format=npz``: one ``.npz`` holding ``arr_0``, uint8 shaped (N, H, W, C), the file OpenAI's ADM
  evaluator (guided-diffusion ``evaluations/evaluator.py``) streams and that ``np.load(f)["arr_0"]``
  returns. Grey images are written with C = 3 (the grey value repeated): that evaluator feeds the
  array to a 3-channel InceptionV3 as it is, and a C = 1 array would fail there.

A class-conditional model's classes go beside the images (``labels.csv`` in the folder: ``file,label``;
``labels`` in the npz); ``labels=`` asks for them as genbench-eval does (one class for all, or a list
taken in turn), else the model draws every class in turn.

The images are the evaluation's images: ``seed=<s> num_samples=<n>`` writes exactly the ``n``
images that an evaluation of ``n`` samples with seed ``s`` scores (``genbench-eval seed=<s>
metrics.num_samples=<n>``, or the training evaluation's ``callbacks.evaluation.seed``, recorded as
``seed`` in its JSON results), with the same sampler, labels and guidance, and they equal
``genbench.api.sample(model, n, seed=s)``. All of them draw through
:func:`genbench.metrics.evaluator.seeded_chunks`: chunks of at most the model's
``sample_batch_size`` images, each from its own generator seeded from ``s`` and the chunk's index.
Here each chunk is written as soon as it is drawn (the npz is streamed into its zip entry), so
memory stays bounded for any N. ``batch_size=`` changes the chunks and so the images: leave it
null for the evaluation's images. The output is written under a temporary name and renamed when
complete, and an existing non-empty output is only replaced with ``overwrite=true``.
"""

from __future__ import annotations

import csv
import io
import logging
import shutil
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import hydra
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from genbench import CONFIG_DIR
from genbench.config import register_resolvers
from genbench.devices import resolve_device
from genbench.errors import GenbenchError, user_errors
from genbench.io import atomic_path, check_writable_dir, replace_durably
from genbench.summary import print_summary, setup_run_logging

if TYPE_CHECKING:
    from genbench.metrics.evaluator import SampleChunk

log = logging.getLogger("genbench.sample")
register_resolvers()  # the configs' ${genbench_...:} resolvers, needed before Hydra composes conf/sample.yaml

FORMATS = ("png", "npz")
#: the images' key in the npz (np.savez's name for its first array; what the ADM evaluator reads)
IMAGES_KEY = "arr_0"
LABELS_KEY = "labels"
LABELS_CSV = "labels.csv"


def png_name(index: int, total: int) -> str:
    """``index`` zero-padded to the width of the largest index, so names sort in sample order."""
    return f"{index:0{len(str(max(total - 1, 0)))}d}.png"


def output_path(out: str | Path, fmt: str) -> Path:
    """The file or folder ``out`` names: an npz path gets its ``.npz`` suffix as ``np.savez`` gives it."""
    path = Path(str(out)).expanduser()
    return path.with_name(path.name + ".npz") if fmt == "npz" and path.suffix != ".npz" else path


def _is_sample_folder(path: Path) -> bool:
    """Whether a folder holds only what genbench-sample writes (PNGs and labels.csv)."""
    return all(p.is_file() and (p.suffix == ".png" or p.name == LABELS_CSV) for p in path.iterdir())


def check_output(path: Path, fmt: str, overwrite: bool) -> None:
    """Refuse an existing non-empty output (unless ``overwrite``) and an unwritable place, before sampling."""
    if fmt == "npz" and path.is_dir():
        raise GenbenchError(f"out={path} is a directory; format=npz writes one file: give out=<path>.npz.")
    if fmt == "png" and path.exists() and not path.is_dir():
        raise GenbenchError(f"out={path} is a file; format=png writes a folder of PNGs: give out=<folder>.")
    exists = path.is_file() and path.stat().st_size > 0 or path.is_dir() and any(path.iterdir())
    if exists and not overwrite:
        raise GenbenchError(f"out={path} already exists and is not empty: choose another out=, or pass overwrite=true.")
    if exists and fmt == "png" and not _is_sample_folder(path):
        raise GenbenchError(
            f"out={path} holds files genbench-sample did not write (only PNGs and {LABELS_CSV}): overwrite=true "
            "replaces a folder of samples only; choose another out=."
        )
    check_writable_dir(path.parent, "out")


def _hwc(images: torch.Tensor, rgb: bool) -> np.ndarray:
    """uint8 N×C×H×W -> N×H×W×C numpy (C = 3 when ``rgb``: grey repeated)."""
    if rgb and images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
    return images.permute(0, 2, 3, 1).contiguous().numpy()


def write_png_folder(chunks: Iterable[SampleChunk], total: int, folder: Path, progress: Any) -> int:
    """Write each image as ``<index>.png`` into ``folder`` (and ``labels.csv``); returns the count."""
    from PIL import Image

    folder.mkdir(parents=True)
    index, rows = 0, []
    for _, images, labels in chunks:
        for i, image in enumerate(_hwc(images, rgb=False)):
            name = png_name(index, total)
            Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(folder / name)
            if labels is not None:
                rows.append((name, int(labels[i])))
            index += 1
        progress(len(images))
    if rows:
        with open(folder / LABELS_CSV, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["file", "label"])
            writer.writerows(rows)
    return index


def write_npz(
    chunks: Iterable[SampleChunk],
    shape: tuple[int, int, int],
    total: int,
    path: Path,
    progress: Any,
) -> int:
    """Stream the images into ``arr_0.npy`` inside an (uncompressed, zip64) npz, as np.savez lays it
    out, without holding them all; the labels, when any, follow as ``labels.npy``."""
    _, h, w = shape
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)), "fortran_order": False}
    header["shape"] = (total, h, w, 3)
    labels: list[torch.Tensor] = []
    written = 0
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        with zf.open(f"{IMAGES_KEY}.npy", "w", force_zip64=True) as f:
            np.lib.format.write_array_header_1_0(f, header)
            for _, images, part in chunks:
                f.write(_hwc(images, rgb=True).tobytes())
                written += len(images)
                if part is not None:
                    labels.append(part)
                progress(len(images))
        if labels:
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, torch.cat(labels).numpy().astype(np.int64))
            zf.writestr(f"{LABELS_KEY}.npy", buffer.getvalue())
    return written


def sample_to_files(cfg: DictConfig) -> dict[str, Any]:
    """Draw ``num_samples`` images from ``ckpt_path`` and write them to ``out`` as ``format``."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from genbench.evaluate import evaluation_labels, guidance_kwargs, sampler_kwargs
    from genbench.metrics.evaluator import seeded_chunks
    from genbench.models import load_model_from_checkpoint

    fmt = str(cfg.format)
    if fmt not in FORMATS:
        raise GenbenchError(f"format={fmt}: use png (a folder of PNGs) or npz (one .npz of uint8 N×H×W×C).")
    if not cfg.get("ckpt_path"):
        raise GenbenchError("Nothing to sample: pass ckpt_path=<run>/checkpoints/last.ckpt.")
    if not cfg.get("out"):
        raise GenbenchError("Where should the samples go? Pass out=<folder> (format=png) or out=<file>.npz.")
    n = cfg.num_samples
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise GenbenchError(f"num_samples={n}: give a whole number of images >= 1 (e.g. num_samples=50000).")
    out = output_path(cfg.out, fmt)
    check_output(out, fmt, bool(cfg.overwrite))
    ckpt_path = Path(str(cfg.ckpt_path)).expanduser()
    model = load_model_from_checkpoint(ckpt_path, resolve_device(cfg.device))
    if cfg.get("batch_size"):
        model.sample_batch_size = int(cfg.batch_size)
    labels = evaluation_labels(model, n, cfg.get("labels"))
    # the images an evaluation of n samples with this seed scores, drawn and written one chunk at a time
    kwargs = {**sampler_kwargs(cfg, model), **guidance_kwargs(cfg, model)}
    chunks = seeded_chunks(model, n, int(cfg.seed), labels, **kwargs)
    log.info("Drawing %d samples from %s (%s) into %s...", n, ckpt_path, model.family, out)
    columns = (TextColumn("sampling"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, disable=not cfg.get("progress", True)) as bar:
        task = bar.add_task("sampling", total=n)

        def advance(k: int) -> None:
            bar.advance(task, k)

        if fmt == "npz":
            with atomic_path(out) as tmp:
                count = write_npz(chunks, model.image_shape, n, tmp, advance)
        else:
            tmp = out.parent / f".{out.name}.partial"
            shutil.rmtree(tmp, ignore_errors=True)
            try:
                count = write_png_folder(chunks, n, tmp, advance)
                if out.exists():
                    shutil.rmtree(out)  # check_output allowed it: overwrite=true over a folder of samples
                replace_durably(tmp, out)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
    channels = 3 if fmt == "npz" else model.channels
    return {
        "out": str(out),
        "format": fmt,
        "num_samples": count,
        "shape": [count, model.image_size, model.image_size, channels],
        "labels": labels is not None,
        "seed": int(cfg.seed),
        "family": model.family,
    }


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="sample")
def main(cfg: DictConfig) -> None:
    setup_run_logging()
    with user_errors():
        if cfg.get("print_config"):
            print(OmegaConf.to_yaml(cfg, resolve=True))
        result = sample_to_files(cfg)
        print_summary(
            "genbench-sample: done",
            {
                "checkpoint": cfg.ckpt_path,
                "samples": f"{result['num_samples']} ({'x'.join(map(str, result['shape'][1:]))}, {result['format']})",
                "class labels": "written beside the images" if result["labels"] else "none (unconditional model)",
                "written": result["out"],
            },
        )


if __name__ == "__main__":
    main()
