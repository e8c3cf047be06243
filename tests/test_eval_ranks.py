"""Evaluation split across DDP ranks: each rank samples, extracts and bounds the likelihood of its
share; the result must be that of one process evaluating the same checkpoint, on exactly
``num_samples`` images (an odd count on two ranks: no padding duplicates)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import open_dict

from conftest import QUIET, TINY, compose_train, run_cli
from genbench import CONFIG_DIR
from genbench.config import build
from genbench.distributed import share
from genbench.metrics import Evaluator, InDomainExtractor, ensure_in_domain_extractor, in_domain_spec
from genbench.metrics.evaluator import SAMPLE_CHUNKS, sample_chunks, sample_share
from genbench.metrics.fidelity import fid_from_features

#: odd, so two ranks cannot split it evenly
N = 101
#: 16 test images in batches of 4: two batches per rank
LIKELIHOOD = {"num_images": 16, "iwae_k": 4, "batch_size": 4}
METRICS = {"kid_subsets": 5, "kid_subset_size": 50, "isc_splits": 2}
#: the scalars both evaluations must agree on
COMPARED = (
    "fid",
    "kid_mean",
    "kid_std",
    "is_mean",
    "is_std",
    "precision",
    "recall",
    "f_score",
    "class_kl",
    "memorised_frac",
    "nn_train_median",
    "bpd",
    "bpd_se",
    "bpd_elbo",
    "bpd_iwae",
)


@pytest.fixture(scope="module")
def extractor(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    from genbench.data import SyntheticDataModule

    cache = tmp_path_factory.mktemp("ranks_cache")
    dm = SyntheticDataModule(num_train=512, num_test=256, batch_size=32)
    path = ensure_in_domain_extractor(
        dm, cache, epochs=2, batch_size=64, feature_dim=16, width=8, lr=5e-3, min_steps=0, progress=False
    )
    dm.setup()
    return SimpleNamespace(path=path, cache=cache, dm=dm, spec=in_domain_spec(path))


# --- the split itself ----------------------------------------------------------------------------
@pytest.mark.parametrize(("n", "world"), [(101, 2), (101, 3), (7, 8), (0, 2), (1, 2)])
def test_shares_cover_every_item_once_in_order_and_differ_by_at_most_one(n: int, world: int) -> None:
    parts = [share(n, world, r) for r in range(world)]
    assert [i for p in parts for i in p] == list(range(n))
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)  # earlier ranks the extra


def test_sampled_images_are_the_same_whatever_the_number_of_ranks() -> None:
    vae = build(compose_train(["data=synthetic", "model=vae", *TINY["vae"]]).model, "model").eval()
    vae.sample_batch_size = 16
    chunks = sample_chunks(N, 16)
    assert len(chunks) >= SAMPLE_CHUNKS and sum(len(c) for c in chunks) == N
    one, span = sample_share(vae, N, seed=5)
    assert one.shape == (N, *vae.image_shape) and span == range(N)
    for world in (2, 3):
        shares = [sample_share(vae, N, 5, rank, world) for rank in range(world)]
        assert [len(s[1]) for s in shares] == [len(s[0]) for s in shares]
        assert [i for _, span in shares for i in span] == list(range(N))
        assert torch.equal(torch.cat([images for images, _ in shares]), one)
    assert not torch.equal(sample_share(vae, N, seed=6)[0], one)  # the seed matters


def test_torchmetrics_fid_with_our_extractor_equals_ours(extractor: SimpleNamespace) -> None:
    """torchmetrics' FrechetInceptionDistance (sum-reduced statistics) fed by the in-domain
    extractor gives the FID genbench computes from the gathered features with torch-fidelity."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    class FidLayer(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = InDomainExtractor("genbench-in-domain", ["features"], str(extractor.path))
            self.num_features = extractor.spec.feature_dim

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x)[0]

    real = extractor.dm.real_images("test")
    gen = extractor.dm.real_images("train")[:200]
    gen = (gen.float() + 40 * torch.randn(gen.shape, generator=torch.Generator().manual_seed(1))).clamp(0, 255)
    gen = gen.to(torch.uint8)
    tm = FrechetInceptionDistance(feature=FidLayer())
    for part in real.split(100):  # in several updates: the sums add up
        tm.update(part, real=True)
    for part in gen.split(64):
        tm.update(part, real=False)
    evaluator = Evaluator(real, extractor.spec, {**METRICS, "memorisation": {"enabled": False}})
    ours = fid_from_features(evaluator.extract(gen)["features"], evaluator.extract(real)["features"])
    assert ours > 1e-3  # noisy images: a distance, not zero, so the relative comparison means something
    # torchmetrics: covariance from float64 sums, square root by eigenvalues; torch-fidelity: np.cov and
    # scipy's sqrtm (they differed by 3e-6 relative here)
    assert float(tm.compute()) == pytest.approx(ours, rel=1e-4)


# --- two ranks against one process ---------------------------------------------------------------
def test_two_rank_evaluation_equals_one_process_evaluation_of_the_checkpoint(
    extractor: SimpleNamespace, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    metrics = {**METRICS, "extractor": "in-domain", "extractor_path": str(extractor.path)}
    r = run_cli(
        "genbench.train",
        "model=vae",
        *TINY["vae"],
        *QUIET,
        "trainer=ddp_cpu",
        "callbacks=[default,eval]",
        f"callbacks.evaluation.num_samples={N}",
        "callbacks.evaluation.every_n_epochs=null",
        *(f"callbacks.evaluation.metrics.{k}={v}" for k, v in METRICS.items()),
        "callbacks.evaluation.metrics.extractor=in-domain",
        f"+callbacks.evaluation.metrics.extractor_path={extractor.path}",
        "+callbacks.evaluation.metrics.likelihood={num_images: 16, iwae_k: 4, batch_size: 4}",
        f"paths.cache_dir={extractor.cache}",
        f"hydra.run.dir={run}",
        env={"OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"},
    )
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    ddp = json.loads((run / "eval" / "final.json").read_text())
    assert ddp["num_samples"] == N and ddp["likelihood_images"] == LIKELIHOOD["num_images"]

    from genbench.evaluate import evaluate

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(
            config_name="eval",
            overrides=[
                f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}",
                "seed=1234",  # the callback's
                "latent_grids=false",
                f"metrics.num_samples={N}",
                *(f"metrics.{k}={v}" for k, v in metrics.items()),
                *(f"metrics.likelihood.{k}={v}" for k, v in LIKELIHOOD.items()),
            ],
        )
    with open_dict(cfg):
        cfg.paths.cache_dir = str(extractor.cache)
        cfg.paths.output_dir = str(tmp_path / "eval_out")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each rank: the same sums in the same order
    try:
        evaluate(cfg)
    finally:
        torch.set_num_threads(threads)
    one = json.loads((run / "checkpoints" / "metrics.json").read_text())["latest"]
    assert one["num_samples"] == N and one["global_step"] == ddp["global_step"]
    for key in COMPARED:
        assert key in ddp and key in one, key
        assert ddp[key] == pytest.approx(one[key], rel=1e-6, abs=1e-9), key


# --- the collectives on two gloo processes, without Lightning ------------------------------------
class NoisyBound:
    """A model whose per-image bounds are a formula of the image plus Monte-Carlo noise from the
    generator it is given: the split must keep each batch's noise and the images' order."""

    image_shape = (1, 4, 4)
    num_classes = None
    device = torch.device("cpu")
    training = False

    def eval(self) -> NoisyBound:
        return self

    def train(self, mode: bool = True) -> NoisyBound:
        return self

    def likelihood_description(self, cfg: object) -> str:
        return "squares plus noise"

    def likelihood_bounds(self, x: torch.Tensor, cfg: object, generator: torch.Generator) -> dict[str, torch.Tensor]:
        noise = torch.rand(len(x), generator=generator, dtype=torch.float64)
        return {"main": x.double().flatten(1).pow(2).sum(1) + noise, "noise": noise}


#: (test images used, batch size): two batches per rank; one batch, so rank 1 has none
LIKELIHOOD_SPLITS = [(10, 3), (3, 4)]


def likelihood_images() -> torch.Tensor:
    return torch.randint(0, 256, (12, 1, 4, 4), generator=torch.Generator().manual_seed(3), dtype=torch.uint8)


def _two_ranks(rank: int, init_file: str, out: str) -> None:
    from genbench.distributed import gather_rows
    from genbench.metrics.likelihood import evaluate_likelihood

    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        rows = torch.arange(6, dtype=torch.uint8).reshape(3, 2)[: 3 * (1 - rank)]  # rank 1: no rows
        got = {"rows": gather_rows(rows)}
        for n, batch in LIKELIHOOD_SPLITS:
            cfg = {"num_images": n, "batch_size": batch}
            generator = torch.Generator().manual_seed(11)
            got[n] = evaluate_likelihood(NoisyBound(), likelihood_images(), cfg, generator, distributed=True)
        torch.save(got, f"{out}/{rank}.pt")
    finally:
        torch.distributed.destroy_process_group()


def test_likelihood_and_gather_on_two_gloo_ranks_equal_one_process(tmp_path: Path) -> None:
    from genbench.metrics.likelihood import evaluate_likelihood

    torch.multiprocessing.spawn(_two_ranks, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2)
    ranks = [torch.load(tmp_path / f"{r}.pt", weights_only=False) for r in range(2)]
    for got in ranks:  # every rank has everything, nothing duplicated
        assert torch.equal(got["rows"], torch.arange(6, dtype=torch.uint8).reshape(3, 2))
        for n, batch in LIKELIHOOD_SPLITS:
            cfg = {"num_images": n, "batch_size": batch}
            one = evaluate_likelihood(NoisyBound(), likelihood_images(), cfg, torch.Generator().manual_seed(11))
            assert got[n]["likelihood_images"] == one["likelihood_images"] == n
            for key in ("bpd", "bpd_se", "bpd_main", "bpd_noise"):
                assert got[n][key] == pytest.approx(one[key], rel=1e-12), (n, key)
    # batch b's noise is seeded by b alone: the noise bound is the mean of those draws, by hand
    n, batch = LIKELIHOOD_SPLITS[0]
    draws = [torch.rand(len(range(s, min(s + batch, n))), generator=torch.Generator().manual_seed(11 + 7919 * b),
                        dtype=torch.float64) for b, s in enumerate(range(0, n, batch))]  # fmt: skip
    dims = 16
    assert ranks[0][n]["bpd_noise"] == pytest.approx(float(torch.cat(draws).mean()) / (dims * math.log(2)), rel=1e-12)


def test_an_empty_share_has_feature_rows_of_the_right_width(extractor: SimpleNamespace) -> None:
    evaluator = Evaluator(extractor.dm.real_images("test"), extractor.spec, METRICS)
    empty = evaluator.extract(torch.zeros((0, 1, 32, 32), dtype=torch.uint8))
    some = evaluator.extract(extractor.dm.real_images("test")[:5])
    assert sorted(empty) == sorted(some) and all(len(rows) == 0 for rows in empty.values())
    assert all(empty[k].shape[1:] == some[k].shape[1:] and len(some[k]) == 5 for k in some)
