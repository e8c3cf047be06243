"""Multi-node DDP against a real two-node SLURM (``GENBENCH_SLURM_NODES=2 scripts/slurm_local.sh up``):
two slurmd daemons, n1 and n2, on this machine. ``trainer.num_nodes=2 trainer.devices=1`` through
hydra/launcher=slurm asks for ``--nodes=2 --ntasks-per-node=1``; Lightning's SLURMEnvironment makes
the task on n1 rank 0 and the one on n2 rank 1 (gloo, on loopback: the node names do not resolve
here, so the job exports MASTER_ADDR=127.0.0.1 in the launcher's setup lines).

The two-node run must end with the same weights, bit for bit, as one node running both ranks (same
seed, same per-rank and so global batch), and a two-node job requeued mid-training must resume and
end with those weights too, logging every step once."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from test_slurm import (
    finish,
    job_ids,
    job_log,
    local_slurm,
    long_vae_sweep,
    release_when_requeued,
    squeue,
    steps,
    wait_until_training,
)

pytestmark = pytest.mark.slurm

#: a separate cluster (directory and ports) from tests/test_slurm.py's single node
TWO_NODES = {
    "GENBENCH_SLURM_NODES": "2",
    "GENBENCH_SLURM_DIR": "/tmp/genbench-slurm-2n",
    "GENBENCH_SLURM_PORT": "6827",
}
MAX_STEPS = 12
#: seconds a multi-process job may take on a loaded 2-core machine (a step took up to 3 s there)
PATIENCE = 420
#: two processes of the same DDP run; only the layout over nodes differs between the runs compared.
#: Rank 0 runs on n1, whose name does not resolve on this machine: the job exports its address.
#: One thread per rank in both layouts: Lightning otherwise gives each rank the node's CPUs divided
#: by its ranks per node (2 threads with one rank a node, 1 with two), and another thread count
#: sums a convolution's terms in another order (different weights in the last bits).
DDP = [
    "trainer=ddp_cpu",
    "callbacks.ddp_sync_check=null",
    "callbacks.resume.every_n_train_steps=4",
    'hydra.launcher.setup=["export MASTER_ADDR=127.0.0.1","export OMP_NUM_THREADS=1"]',
]
ONE_NODE_TWO_RANKS = [*DDP, "trainer.num_nodes=1", "trainer.devices=2"]
TWO_NODES_ONE_RANK = [*DDP, "trainer.num_nodes=2", "trainer.devices=1"]


@pytest.fixture(scope="module")
def slurm2() -> Iterator[dict[str, str]]:
    yield from local_slurm(**TWO_NODES)


@pytest.fixture(scope="module")
def references(slurm2: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The same training, uninterrupted, as 1 node x 2 ranks and as 2 nodes x 1 rank (submitted
    together; SLURM runs them one after the other: each needs two of a node's two CPUs)."""
    root = tmp_path_factory.mktemp("references")
    runs = {"1x2": ONE_NODE_TWO_RANKS, "2x1": TWO_NODES_ONE_RANK}
    procs = {name: long_vae_sweep(root / name, slurm2, MAX_STEPS, *extra) for name, extra in runs.items()}
    for proc in procs.values():
        finish(proc, PATIENCE)
    return {name: root / name for name in runs}


def weights(sweep: Path) -> dict[str, torch.Tensor]:
    ckpt = torch.load(sweep / "0" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == MAX_STEPS
    return ckpt["state_dict"]


def node_of_rank(sweep: Path, job: str) -> dict[int, int]:
    """{global rank: SLURM node index} from submitit's JobEnvironment line of each task's log."""
    found = {}
    for log in (sweep / ".submitit" / job).glob("*_log.out"):
        for node, rank in re.findall(r"JobEnvironment\(.*?node=(\d+)\(\d+\), global_rank=(\d+)\(2\)", log.read_text()):
            found[int(rank)] = int(node)
    return found


def test_two_nodes_with_one_rank_each_train_what_one_node_with_two_ranks_trains(references: dict[str, Path]) -> None:
    (job,) = job_ids(references["2x1"])
    assert node_of_rank(references["2x1"], job) == {0: 0, 1: 1}  # one rank on each node
    (job1,) = job_ids(references["1x2"])
    assert node_of_rank(references["1x2"], job1) == {0: 0, 1: 0}  # both on one node
    for name in ("1x2", "2x1"):
        log = "".join(p.read_text() for p in (references[name] / ".submitit").glob("*/*_log.*"))
        assert "GLOBAL_RANK: 1, MEMBER: 2/2" in log and "Job completed successfully" in log
        assert steps(references[name] / "0") == list(range(MAX_STEPS))
    one, two = weights(references["1x2"]), weights(references["2x1"])
    assert one.keys() == two.keys() and len(one) > 0
    assert all(torch.equal(one[k], two[k]) for k in one), [k for k in one if not torch.equal(one[k], two[k])]


def test_a_requeued_two_node_job_resumes_exactly(
    slurm2: dict[str, str], references: dict[str, Path], tmp_path: Path
) -> None:
    """``scontrol requeue`` of the running two-node job: SLURM signals the tasks on both nodes, the
    ranks save last.ckpt together at the next step (or the job keeps its periodic one), SLURM puts
    the job back and reruns it on both nodes, and the rerun ends where the uninterrupted run ends."""
    sweep = tmp_path / "sweep"
    run = sweep / "0"
    slow = "+callbacks.slow={_target_: signal_helpers.SlowDown, seconds: 0.5}"  # sleep only: same numbers
    hydra = long_vae_sweep(sweep, slurm2, MAX_STEPS, *TWO_NODES_ONE_RANK, slow)
    try:
        wait_until_training(hydra, run, min_steps=3, timeout=PATIENCE)
        (job,) = job_ids(sweep)
        assert squeue("-j", job, "-o", "%D %N") == ["2 n[1-2]"]  # running on both nodes
        subprocess.run(["scontrol", "requeue", job], check=True, timeout=30)
        release_when_requeued(job)
    finally:
        finish(hydra, PATIENCE)

    log = job_log(sweep, job)
    assert "SLURM restart 1 of this job" in log and "SLURM restart 2" not in log, log[-3000:]
    assert "Job completed successfully" in log
    kept = int(re.search(r"kept \d+ rows before step (\d+)", log).group(1))
    assert 0 < kept < MAX_STEPS  # resumed mid-training
    assert node_of_rank(sweep, job) == {0: 0, 1: 1}
    assert steps(run) == list(range(MAX_STEPS))  # every step once
    got, want = weights(sweep), weights(references["2x1"])
    assert got.keys() == want.keys()
    assert all(torch.equal(got[k], want[k]) for k in want)
