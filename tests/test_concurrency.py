"""Processes that share the cache: one computes, the others say they wait and then reuse; a lock
left by a killed process blocks nobody (on this host at once, from another host once its heartbeat
is old), a live one blocks until released; an extractor trained differently gets its own slot."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
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
    assert lock.read_text().split()[:2] == [str(holder.pid), socket.gethostname()]  # the holder wrote who it is
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait(timeout=30)
    assert lock.exists()  # a killed holder cannot remove its lock file...
    start = time.monotonic()
    with file_lock(lock):  # ...but its pid on this host is dead, so the lock is broken at once
        assert lock.read_text().split()[0] == str(os.getpid())
    assert time.monotonic() - start < 5
    assert not lock.exists()  # released: the file exists exactly while the lock is held


def write_lock(lock: Path, pid: int, host: str, age_s: float = 0.0) -> None:
    """A lock file as another holder leaves it, its heartbeat (mtime) ``age_s`` seconds old."""
    lock.write_text(f"{pid} {host} 0123456789abcdef\n")
    t = time.time() - age_s
    os.utime(lock, (t, t))


def test_a_lock_of_a_dead_pid_on_this_host_is_broken_at_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait(timeout=30)  # a pid that surely ran on this host and is gone
    lock = tmp_path / ".entry.lock"
    write_lock(lock, dead.pid, socket.gethostname())  # heartbeat fresh: only the dead pid tells
    start = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="genbench"), file_lock(lock):
        assert lock.read_text().split()[0] == str(os.getpid())
    assert time.monotonic() - start < 5
    assert f"Removing the stale lock {lock} of process {dead.pid} on" in caplog.text
    assert "is no longer running" in caplog.text


def test_a_lock_of_another_host_is_broken_only_when_its_heartbeat_is_old(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    lock = tmp_path / ".entry.lock"
    # another host, heartbeat 10 min old: its process cannot be asked, so the old mtime decides
    write_lock(lock, 1, "node-that-died", age_s=600)
    with caplog.at_level(logging.WARNING, logger="genbench"), file_lock(lock, stale_after=120):
        assert lock.read_text().split()[:2] == [str(os.getpid()), socket.gethostname()]
    assert "of process 1 on node-that-died: its heartbeat stopped 600 s ago" in caplog.text
    # the same lock with a fresh heartbeat is live: we wait, and take it once its holder removes it
    write_lock(lock, 1, "node-that-lives", age_s=1)
    threading.Timer(1.5, lock.unlink).start()
    start = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="genbench"), file_lock(lock, "the entry", stale_after=120):
        waited = time.monotonic() - start
    assert waited >= 1.4
    assert "Waiting for the entry: process 1 on node-that-lives is computing it" in caplog.text


def test_a_live_lock_blocks_another_process_until_released(tmp_path: Path) -> None:
    """Two real processes: the holder keeps the lock (with a heartbeat) until told to release it."""
    lock, release = tmp_path / ".entry.lock", tmp_path / "release"
    code = textwrap.dedent(
        f"""
        import os, time
        from genbench.io import file_lock
        with file_lock({str(lock)!r}, stale_after=2.0):  # heartbeat every 0.25 s
            print("held", flush=True)
            while not os.path.exists({str(release)!r}):
                time.sleep(0.05)
            print("releasing", time.time(), flush=True)
        """
    )
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        waiter_code = (
            "import logging, sys, time\nlogging.basicConfig(level=logging.INFO, stream=sys.stderr)\n"
            f"from genbench.io import file_lock\nwith file_lock({str(lock)!r}, 'the entry', stale_after=2.0):\n"
            "    print('got', time.time(), flush=True)\n"
        )
        waiter = subprocess.Popen(
            [sys.executable, "-c", waiter_code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        # the waiter's first lines, up to the one saying it waits (its imports can take seconds on a
        # loaded machine, so wait for the line rather than for a fixed time)
        first: list[str] = []
        while (line := waiter.stderr.readline()) and "Waiting for the entry" not in line:
            first.append(line)
        first.append(line)
        # much longer than stale_after (2 s; generous, so that a loaded machine's scheduling delays
        # cannot stop the heartbeat for that long): the heartbeat keeps the live lock from being broken
        time.sleep(5)
        assert waiter.poll() is None, waiter.communicate()
        assert time.time() - lock.stat().st_mtime < 2.0  # the heartbeat is beating
        release.touch()
        out, err = waiter.communicate(timeout=60)
        err = "".join(first) + err
        released = float(holder.stdout.readline().split()[1])
        assert holder.wait(timeout=30) == 0
    finally:
        holder.kill()
    assert waiter.returncode == 0, err
    assert float(out.split()[1]) >= released  # the waiter got it only after the holder let go
    assert f"Waiting for the entry: process {holder.pid} on {socket.gethostname()} is computing it" in err
    assert "Got the lock for the entry after" in err
    assert "stale" not in err


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
