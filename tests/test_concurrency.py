"""Processes that share the cache: one computes, the others say they wait and then reuse; a lock
left by a killed process blocks nobody; an extractor trained differently gets its own slot."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from genbench.data import SyntheticDataModule
from genbench.io import file_lock
from genbench.metrics.in_domain_training import ensure_in_domain_extractor, training_key

SMALL = {"epochs": 1, "batch_size": 64, "feature_dim": 8, "width": 4, "min_steps": 60, "progress": False}


def evaluate_in_subprocess(cache: Path) -> subprocess.Popen:
    """A whole evaluation, as two jobs of a sweep run it: extractor (trained on first use), real
    features (cached), generated images scored; prints the FID and how many images the extractor saw."""
    code = textwrap.dedent(
        f"""
        import logging, sys
        logging.basicConfig(level=logging.INFO, stream=sys.stderr)
        import torch
        from genbench.data import SyntheticDataModule
        from genbench.metrics import Evaluator, InDomainExtractor
        dm = SyntheticDataModule(num_train=512, num_test=256, batch_size=64)
        settings = {{"extractor": "in-domain", "extractor_training": {SMALL!r}, "kid_subsets": 5, "isc_splits": 2}}
        ev = Evaluator.for_datamodule(dm, settings, cache_dir={str(cache)!r}, progress=False)
        result = ev.evaluate(dm.real_images("train")[:128])
        print(result["fid"], InDomainExtractor.images_seen)
        """
    )
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_two_concurrent_evaluations_share_one_cache(tmp_path: Path) -> None:
    procs = [evaluate_in_subprocess(tmp_path) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    fids, seen = zip(*((float(f), int(n)) for f, n in (out.split() for out, _ in outs)), strict=True)
    assert fids[0] == fids[1]  # the same numbers from the same cache
    logs = "".join(err for _, err in outs)
    assert logs.count("Training the in-domain extractor") == 1  # trained once...
    assert "Waiting for the in-domain extractor of synthetic: process" in logs  # ...the other said it waited
    # the real test split (256 images) and the training subset of the memorisation measure (469
    # images) went through the extractor in one process only; the other scored its 128 generated
    # images against the cached real features
    assert sorted(seen) == [128, 128 + 256 + 469]
    assert len(list((tmp_path / "extractors").glob("synthetic_32px_1ch-*/extractor.pt"))) == 1


def test_a_lock_left_by_a_killed_process_blocks_nobody(tmp_path: Path) -> None:
    lock = tmp_path / ".entry.lock"
    code = f"from genbench.io import file_lock\nwith file_lock({str(lock)!r}):\n    print('held', flush=True)\n    import time; time.sleep(600)"
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    assert lock.read_text().strip() == str(holder.pid)  # the holder wrote its pid
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait(timeout=30)
    with file_lock(lock):  # the kernel released the dead process's flock: no waiting
        assert lock.read_text().strip() == str(os.getpid())
    assert lock.exists()  # the file stays; only the flock mattered


def test_extractor_trained_on_other_data_or_settings_gets_its_own_slot(tmp_path: Path) -> None:
    full = SyntheticDataModule(num_train=512, num_test=256, batch_size=64)
    subset = SyntheticDataModule(num_train=512, num_test=256, batch_size=64, limit_train=256)
    keys = {
        training_key(full, SMALL),
        training_key(subset, SMALL),
        training_key(full, {**SMALL, "epochs": 2}),
    }
    assert len(keys) == 3
    assert training_key(full, SMALL) == training_key(full, {**SMALL, "progress": True})  # display only
    a = ensure_in_domain_extractor(full, tmp_path, **SMALL)
    b = ensure_in_domain_extractor(subset, tmp_path, **SMALL)
    assert a != b and a.is_file() and b.is_file()
