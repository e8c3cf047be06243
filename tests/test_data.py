import gzip
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from genbench import GenbenchError
from genbench.data import FashionMNISTDataModule, FolderDataModule, MNISTDataModule, SyntheticDataModule
from genbench.data.mnist import DEBIAN_FASHION_MNIST, read_idx


def test_synthetic_is_deterministic_and_in_range() -> None:
    a, b = SyntheticDataModule(num_train=64, num_test=32, batch_size=16), SyntheticDataModule(num_train=64, num_test=32)
    torch.testing.assert_close(a.real_images("test"), b.real_images("test"))
    x, y = next(iter(a.train_dataloader()))
    assert x.shape == (16, 1, 32, 32) and x.dtype == torch.float32
    assert x.min() >= -1 and x.max() <= 1 and x.max() > 0.5  # shapes are bright on a dark background
    assert set(y.tolist()) <= {0, 1, 2, 3}
    # splits are disjoint: val comes out of the training pool, test is generated separately
    assert len(a.dataset("train")) + len(a.dataset("val")) == 64


def test_synthetic_rgb_and_other_size() -> None:
    dm = SyntheticDataModule(num_train=32, num_test=8, image_size=16, channels=3, batch_size=8)
    assert dm.real_images("test").shape == (8, 3, 16, 16)


def test_read_idx_roundtrip_and_corruption(tmp_path: Path) -> None:
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    header = bytes([0, 0, 8, 3]) + np.array([2, 3, 4], dtype=">u4").tobytes()
    path = tmp_path / "x-idx3-ubyte.gz"
    with gzip.open(path, "wb") as f:
        f.write(header + arr.tobytes())
    np.testing.assert_array_equal(read_idx(path), arr)
    bad = tmp_path / "bad-idx3-ubyte"
    bad.write_bytes(header + arr.tobytes()[:-3])
    with pytest.raises(GenbenchError, match="truncated"):
        read_idx(bad)


def test_missing_dataset_names_every_way_to_get_it(tmp_path: Path) -> None:
    dm = MNISTDataModule(root=str(tmp_path / "nowhere"))
    with pytest.raises(GenbenchError) as err:
        dm.setup()
    msg = str(err.value)
    assert "data.root" in msg and "data.download=true" in msg


@pytest.mark.skipif(
    not DEBIAN_FASHION_MNIST.is_dir(),
    reason="Debian package dataset-fashion-mnist not installed (make data / apt-get install dataset-fashion-mnist)",
)
def test_real_fashion_mnist_batch(tmp_path: Path) -> None:
    dm = FashionMNISTDataModule(root=str(tmp_path), batch_size=64)
    assert len(dm.dataset("train")) + len(dm.dataset("val")) == 60_000
    assert len(dm.dataset("test")) == 10_000
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (64, 1, 32, 32)
    assert x.min() == -1 and x.max() == 1
    # 28 -> 32 by zero padding: the 2-pixel border is background everywhere
    border = torch.cat([x[..., :2, :].flatten(), x[..., -2:, :].flatten(), x[..., :, :2].flatten()])
    assert (border == -1).all()
    assert set(y.tolist()) <= set(range(10)) and len(set(y.tolist())) > 5


def test_folder_datamodule(tmp_path: Path) -> None:
    for cls, colour in (("red", (255, 0, 0)), ("blue", (0, 0, 255))):
        (tmp_path / cls).mkdir()
        for i in range(10):
            Image.new("RGB", (40 + i, 30), colour).save(tmp_path / cls / f"{i}.png")
    dm = FolderDataModule(root=str(tmp_path), image_size=16, channels=3, batch_size=4, test_fraction=0.2)
    test = dm.real_images("test")
    assert test.shape == (4, 3, 16, 16) and test.dtype == torch.uint8
    assert len(dm.dataset("train")) + len(dm.dataset("val")) == 16
    reds = dm.dataset("train").images[dm.dataset("train").labels == 1]  # sorted dirs: blue=0, red=1
    assert (reds[:, 0] == 255).all() and (reds[:, 2] == 0).all()
    (tmp_path / "empty").mkdir()
    with pytest.raises(GenbenchError, match="No images"):
        FolderDataModule(root=str(tmp_path / "empty")).setup()
    with pytest.raises(GenbenchError, match="does not exist"):
        FolderDataModule(root=str(tmp_path / "missing")).setup()


def test_epoch_order_shards_like_distributed_sampler_and_resumes_within_a_shard() -> None:
    """Under DDP each rank gets every world-th index of the epoch's permutation, padded to equal
    shares; a resume skips the batches *this rank* trained. Lightning keeps the sampler (it is a
    DistributedSampler), so the order stays a function of (seed, epoch)."""
    from torch.utils.data import DistributedSampler

    from genbench.reproducibility import EpochOrder

    data = list(range(10))
    single = EpochOrder(data, seed=3, batch_size=2)
    ranks = [EpochOrder(data, seed=3, batch_size=2, num_replicas=3, rank=r) for r in range(3)]
    assert isinstance(ranks[0], DistributedSampler) and single.num_replicas == 1
    for epoch in (0, 1):
        full = single.order(epoch)
        assert sorted(full) == data and full != single.order(1 - epoch)
        shares = [r.order(epoch) for r in ranks]
        assert [len(s) for s in shares] == [4, 4, 4] and all(len(r) == 4 for r in ranks)
        padded = full + full[:2]
        assert shares == [padded[r::3] for r in range(3)]
    ranks[1].set_epoch(1)
    ranks[1].resume_at(1, 1)  # one batch of 2 done on this rank
    assert list(ranks[1]) == ranks[1].order(1)[2:]
    assert list(ranks[1]) == ranks[1].order(1)  # the skip applies to one iteration only
