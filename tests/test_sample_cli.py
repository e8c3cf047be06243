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
    """What the sampling contract gives for this seed, converted as every evaluation converts it."""
    model = api.load(trained.ckpt)
    return to_uint8(model.sample(N, torch.Generator().manual_seed(seed), labels=labels))


def test_png_folder_equals_the_sampling_contract_and_keeps_labels(trained: SimpleNamespace, tmp_path: Path) -> None:
    out = tmp_path / "png"
    result = _sample(trained, f"out={out}", "seed=3")
    files = sorted(out.glob("*.png"))
    assert [f.name for f in files] == [f"{i:02d}.png" for i in range(N)]  # zero-padded: file order is sample order
    images = np.stack([np.asarray(Image.open(f)) for f in files])  # what clean-fid's PIL reader sees
    assert images.dtype == np.uint8 and images.shape == (N, 32, 32)  # grey stays one channel ("L")
    expected = _expected(trained, 3)
    assert torch.equal(torch.from_numpy(images), expected[:, 0])
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
