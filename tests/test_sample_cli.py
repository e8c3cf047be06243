"""genbench-sample: a checkpoint's samples as PNGs or an npz that other evaluators read, equal to
the sampling contract's images of the same seed, labels beside, never overwriting by accident."""

from __future__ import annotations

import csv
import zipfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import run_cli, tiny
from genbench import GenbenchError, api
from genbench.data.base import to_uint8
from genbench.metrics.evaluator import sample_chunks, sample_share
from genbench.sample import sample_to_files

N = 70  # more than one chunk (sample_batch_size=32 below) and not a multiple of it


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """A class-conditional tiny VAE trained for a few steps on the synthetic shapes (grey, 4 classes)."""
    root = tmp_path_factory.mktemp("sample")
    overrides = [
        *tiny("vae"),
        "model.conditional=true",
        "data=synthetic",
        "debug=fast",
        "print_config=false",
        "callbacks.sample_grid=null",
    ]
    cfg = api.compose([*overrides, "model.sample_batch_size=32"], output_dir=root / "run")
    run = api.train(cfg)
    assert run.checkpoint is not None
    return SimpleNamespace(root=root, ckpt=run.checkpoint)


def _sample(trained: SimpleNamespace, *overrides: str) -> dict:
    cfg = api.compose([f"ckpt_path={trained.ckpt}", f"num_samples={N}", "progress=false", *overrides], "sample")
    return sample_to_files(cfg)


def _expected(trained: SimpleNamespace, seed: int, labels=None) -> torch.Tensor:
    """The evaluation's images of this seed, recomputed by hand from the sampling contract: the
    chunks of ``sample_chunks`` (a function of N and the batch size), chunk c from its own CPU
    generator seeded ``seed + 7919 c``, every class in turn over all N images unless asked,
    converted as every evaluation converts them."""
    model = api.load(trained.ckpt)
    classes = torch.arange(N) % model.num_classes if labels is None else labels
    chunks = sample_chunks(N, model.sample_batch_size)
    assert len(chunks) > 2 and len(chunks[-1]) < len(chunks[0])  # several chunks and a partial last one
    return torch.cat(
        [
            to_uint8(model.sample(len(part), torch.Generator().manual_seed(seed + 7919 * c), labels=classes[part]))
            for c, part in enumerate(chunks)
        ]
    )


def test_png_folder_equals_the_sampling_contract_and_keeps_labels(trained: SimpleNamespace, tmp_path: Path) -> None:
    out = tmp_path / "png"
    result = _sample(trained, f"out={out}", "seed=3")
    files = sorted(out.glob("*.png"))
    assert [f.name for f in files] == [f"{i:02d}.png" for i in range(N)]  # zero-padded: file order is sample order
    images = np.stack([np.asarray(Image.open(f)) for f in files])  # what clean-fid's PIL reader sees
    assert images.dtype == np.uint8 and images.shape == (N, 32, 32)  # grey stays one channel ("L")
    expected = _expected(trained, 3)
    assert torch.equal(torch.from_numpy(images), expected[:, 0])
    model = api.load(trained.ckpt)  # the notebook's images and the evaluation's are these files
    assert torch.equal(api.sample(model, N, seed=3), expected)
    assert torch.equal(sample_share(model, N, 3, labels=torch.arange(N) % 4)[0], expected)
    assert np.asarray(Image.open(files[0]).convert("RGB")).shape == (32, 32, 3)  # clean-fid converts to RGB
    with open(out / "labels.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["file"] for r in rows] == [f.name for f in files]
    assert [int(r["label"]) for r in rows] == [i % 4 for i in range(N)]  # every class in turn
    assert result["num_samples"] == N and result["labels"]
    # the same seed, the same files; another seed, other images
    again = _sample(trained, f"out={tmp_path / 'again'}", "seed=3", "format=png")
    assert (Path(again["out"]) / files[-1].name).read_bytes() == files[-1].read_bytes()
    other = _sample(trained, f"out={tmp_path / 'other'}", "seed=4")
    assert (Path(other["out"]) / files[-1].name).read_bytes() != files[-1].read_bytes()


def test_the_images_an_evaluation_scored_are_the_files_of_its_seed_and_count(
    trained: SimpleNamespace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """genbench-eval of the checkpoint, its scored images recorded on their way into the evaluator;
    genbench-sample with the seed and count its metrics.json records writes those very images."""
    import json

    from genbench.evaluate import evaluate
    from genbench.metrics import Evaluator

    scored: list[torch.Tensor] = []
    real_evaluate = Evaluator.evaluate

    def recording(self: Evaluator, generated: torch.Tensor, *args, **kwargs) -> dict:
        scored.append(generated.clone())
        return real_evaluate(self, generated, *args, **kwargs)

    monkeypatch.setattr(Evaluator, "evaluate", recording)
    tiny_metrics = ["epochs=1", "min_steps=1", "width=8", "feature_dim=16"]
    cfg = api.compose(
        [
            f"ckpt_path={trained.ckpt}",
            "seed=11",
            "latent_grids=false",
            f"metrics.num_samples={N}",
            "metrics.kid_subsets=2",
            "metrics.isc_splits=2",
            "metrics.likelihood.enabled=false",
            "metrics.memorisation.enabled=false",
            *(f"metrics.extractor_training.{k}" for k in tiny_metrics),
            f"paths.cache_dir={tmp_path / 'cache'}",
            f"output={tmp_path / 'metrics.json'}",
        ],
        "eval",
        output_dir=tmp_path,
    )
    evaluate(cfg)
    record = json.loads((tmp_path / "metrics.json").read_text())["latest"]
    assert record["seed"] == 11 and record["num_samples"] == N and len(scored) == 1
    out = tmp_path / "png"
    cfg = api.compose(
        [f"ckpt_path={trained.ckpt}", f"seed={record['seed']}", f"num_samples={record['num_samples']}", f"out={out}"],
        "sample",
    )
    sample_to_files(cfg)
    files = sorted(out.glob("*.png"))
    assert torch.equal(torch.from_numpy(np.stack([np.asarray(Image.open(f)) for f in files])), scored[0][:, 0])


def test_npz_reads_as_clean_fid_and_the_adm_evaluator_read_it(trained: SimpleNamespace, tmp_path: Path) -> None:
    labels = [2] * 10 + [1] * (N - 10)
    result = _sample(
        trained, "format=npz", f"out={tmp_path / 'samples'}", "seed=5", f"labels=[{','.join(map(str, labels))}]"
    )
    path = tmp_path / "samples.npz"  # .npz added, as np.savez adds it
    assert result["out"] == str(path) and result["shape"] == [N, 32, 32, 3]
    with np.load(path) as data:  # np.load(f)["arr_0"]: how the evaluators load a sample batch in memory
        images, stored_labels = data["arr_0"], data["labels"]
    assert images.dtype == np.uint8 and images.shape == (N, 32, 32, 3)
    expected = _expected(trained, 5, labels=torch.tensor(labels))
    assert torch.equal(api.sample(api.load(trained.ckpt), N, seed=5, labels=labels), expected)
    for c in range(3):  # grey repeated to the three channels InceptionV3 takes
        assert torch.equal(torch.from_numpy(images[..., c].copy()), expected[:, 0])
    assert stored_labels.tolist() == labels
    # the ADM evaluator's streaming reader: the zip entry arr_0.npy, a version 1.0 header, raw C-order bytes
    with zipfile.ZipFile(path) as zf, zf.open("arr_0.npy") as f:
        assert np.lib.format.read_magic(f) == (1, 0)
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        first = np.frombuffer(f.read(2 * 32 * 32 * 3), dtype=dtype).reshape(2, 32, 32, 3)
    assert shape == (N, 32, 32, 3) and not fortran and dtype == np.uint8
    assert np.array_equal(first, images[:2])
    # clean-fid's per-image path: an H×W×3 uint8 array through ToTensor, scaled back to [0, 255]
    from torchvision.transforms import ToTensor

    assert torch.equal(
        (ToTensor()(images[0]) * 255).round().to(torch.uint8), torch.from_numpy(images[0]).permute(2, 0, 1)
    )


def test_refuses_to_overwrite_and_bad_requests_in_one_line(trained: SimpleNamespace, tmp_path: Path) -> None:
    out = tmp_path / "png"
    out.mkdir()
    (out / "keep.png").write_bytes(b"not really a png")
    with pytest.raises(GenbenchError, match="already exists and is not empty.*overwrite=true") as e:
        _sample(trained, f"out={out}")
    assert "\n" not in str(e.value)
    assert (out / "keep.png").read_bytes() == b"not really a png"  # untouched
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "thesis.tex").write_text("mine")
    with pytest.raises(GenbenchError, match="did not write"):  # overwrite=true never deletes other files
        _sample(trained, f"out={notes}", "overwrite=true")
    assert (notes / "thesis.tex").read_text() == "mine"
    _sample(trained, f"out={out}", "overwrite=true", "num_samples=5")  # a folder of samples is replaced
    assert sorted(p.name for p in out.iterdir()) == [*(f"{i}.png" for i in range(5)), "labels.csv"]
    with pytest.raises(GenbenchError, match="lie in 0..3"):
        _sample(trained, f"out={tmp_path / 'bad'}", "labels=7")
    with pytest.raises(GenbenchError, match="format=tiff"):
        _sample(trained, f"out={tmp_path / 'bad'}", "format=tiff")
    assert not (tmp_path / "bad").exists()


def test_the_command_refuses_an_existing_output_in_one_line(trained: SimpleNamespace, tmp_path: Path) -> None:
    """The console entry point as a user runs it (Hydra, the configs' resolvers, the error handler)."""
    out = tmp_path / "samples.npz"
    out.write_bytes(b"an earlier batch")
    r = run_cli(
        "genbench.sample", f"ckpt_path={trained.ckpt}", "num_samples=3", "format=npz", f"out={out}", cwd=tmp_path
    )
    assert r.returncode == 1 and "Traceback" not in r.stderr
    (line,) = [x for x in r.stderr.splitlines() if "error" in x]
    assert f"out={out} already exists" in line and "overwrite=true" in line
    assert out.read_bytes() == b"an earlier batch"


def test_paper_preset_is_fid50k_against_the_training_set_and_needs_local_weights(
    trained: SimpleNamespace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """metrics=paper: 50,000 samples, the train split, torch-fidelity's InceptionV3; without its
    weights genbench-eval stops before sampling, in one line that names where the file goes."""
    from genbench.evaluate import evaluate
    from genbench.metrics import MetricsConfig
    from genbench.metrics.inception import INCEPTION_FILENAME
    from genbench.metrics.spec import INCEPTION

    cfg = api.compose([f"ckpt_path={trained.ckpt}", "metrics=paper"], "eval", output_dir=tmp_path)
    settings = MetricsConfig.from_mapping(cfg.metrics)
    assert (settings.num_samples, settings.split, settings.extractor) == (50_000, "train", INCEPTION)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # an empty torch hub cache
    with pytest.raises(GenbenchError) as e:
        evaluate(cfg)
    message = str(e.value)
    assert "\n" not in message
    assert str(tmp_path / "torch" / "hub" / "checkpoints" / INCEPTION_FILENAME) in message
    assert "metrics.inception_weights=" in message
    assert not (trained.ckpt.parent / "metrics.json").exists()  # nothing was sampled or written
