"""Files that are never half-written: atomic writes, exclusive locks, content hashes.

A sweep starts many jobs at once that all want the same in-domain extractor and the same real
statistics, and a job can be killed at any instant (preemption, ``kill -9``). Everything genbench
writes that another process may read goes through here, so no reader ever sees a half-written
file: writes go to a temporary file in the same directory that is renamed into place (atomic on
POSIX), and work that must happen once is done under an exclusive ``flock`` whose holder
re-checks the cache after acquiring it.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger("genbench")

_HASH_CACHE: dict[tuple[str, int, int], str] = {}


@contextmanager
def file_lock(path: str | Path, what: str = "a shared cache entry") -> Iterator[None]:
    """Hold an exclusive advisory lock on ``path`` (created if needed) for the block.

    ``flock`` is released by the kernel when the process dies, so a killed job never leaves a
    stale lock behind (unlike lock files that are created and deleted): a leftover file is just
    an unlocked file. A process that has to wait says so, naming ``what`` and the holder's pid
    (written into the file by each holder), and says again when it got the lock, so a long wait
    is never silent."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "?"
            log.warning("Waiting for %s: process %s is computing it (lock %s).", what, holder, path)
            start = time.monotonic()
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            log.warning("Got the lock for %s after %.0f s.", what, time.monotonic() - start)
        try:
            f.seek(0)
            f.truncate()
            f.write(f"{os.getpid()}\n")
            f.flush()
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def sha256_file(path: str | Path) -> str:
    """SHA-256 of a file, memoised on (path, size, mtime) because weights files are hashed on
    every evaluation and an InceptionV3 file is ~100 MB."""
    path = Path(path)
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _HASH_CACHE:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        _HASH_CACHE[key] = h.hexdigest()
    return _HASH_CACHE[key]


def tensor_digest(t: torch.Tensor) -> str:
    """SHA-256 of a tensor's shape, dtype and bytes: identifies a set of real images exactly, so
    a cache key changes whenever the images do (another seed, limit, resize...)."""
    t = t.detach().cpu().contiguous()
    h = hashlib.sha256(f"{tuple(t.shape)}|{t.dtype}".encode())
    h.update(t.view(torch.uint8).numpy().tobytes() if t.dtype != torch.uint8 else t.numpy().tobytes())
    return h.hexdigest()


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the block succeeds it is renamed onto ``path``
    (atomic on POSIX), when it fails it is removed and ``path`` is left as it was. The one way
    genbench replaces a file that someone else may be reading or that a kill could interrupt."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode())


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def read_json(path: str | Path) -> Any | None:
    """The parsed file, or None when it is missing or not valid JSON (treated as 'no cache')."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def probe_writable(directory: Path) -> None:
    """Create and remove a file in ``directory`` (raises OSError when that fails): permissions
    alone do not tell (root may write anywhere by mode, yet not into /proc, a read-only mount or
    an immutable directory). The one writability check of every output place: run directory,
    checkpoint directory, result files."""
    fd, probe = tempfile.mkstemp(dir=directory, prefix=".genbench-probe-")
    os.close(fd)
    os.unlink(probe)


def check_writable(path: Path, key: str = "output", example: str = "outputs/eval/metrics.json") -> None:
    """Refuse a file path a result could not be written to, before any work: otherwise the work
    would fail at its end and lose the result. ``key``/``example`` name the setting in the error."""
    from genbench.errors import GenbenchError

    if path.is_dir():
        raise GenbenchError(f"{key}={path} is a directory: give a file path such as {key}={path / 'metrics.json'}.")
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise GenbenchError(f"{key}={path}: {parent} is a file, not a directory; choose another {key} path.")
    try:
        probe_writable(parent)
    except OSError as e:
        raise GenbenchError(
            f"{key}={path} cannot be written: creating a file in {parent} fails ({e.strerror or e}); choose a "
            f"writable path, e.g. {key}={example}."
        ) from None


def check_writable_dir(path: Path, key: str) -> None:
    """Create ``path`` if needed and prove a file can be written in it, or raise one clear error
    naming ``key``: a run must not train for hours and then fail to save its checkpoints."""
    from genbench.errors import GenbenchError

    try:
        path.mkdir(parents=True, exist_ok=True)
        probe_writable(path)
    except OSError as e:
        raise GenbenchError(
            f"{key}={path} cannot be written ({e.strerror or e}): choose a writable directory (or leave {key} at "
            "its default, inside the run directory)."
        ) from None
