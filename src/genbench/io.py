"""Files that are never half-written: atomic writes, exclusive locks, content hashes.

A sweep starts many jobs at once that all want the same in-domain extractor and the same real
statistics, and a job can be killed at any instant (preemption, ``kill -9``). Everything genbench
writes that another process may read goes through here, so no reader ever sees a half-written
file: writes go to a temporary file in the same directory that is renamed into place (atomic on
POSIX), and work that must happen once is done under an exclusive lock file (created with
``O_EXCL``, so it also holds on NFS) whose holder re-checks the cache after acquiring it.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import logging
import os
import secrets
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import torch

from genbench.errors import GenbenchError, NoSpaceError, no_space_cause

log = logging.getLogger("genbench")

_HASH_CACHE: dict[tuple[str, int, int], str] = {}


#: a lock whose heartbeat (the lock file's mtime) is older than this is taken to be abandoned
#: when its owner cannot be checked (another host, or a pid that may have been reused)
LOCK_STALE_S = 120.0
#: how often a waiter looks at the lock again
LOCK_POLL_S = 0.5


def _lock_owner(path: Path) -> tuple[int, str, str] | None:
    """``(pid, host, token)`` written by the lock's holder, or None (no file, or not written yet)."""
    try:
        pid, host, token = path.read_text().split()
        return int(pid), host, token
    except (OSError, ValueError):
        return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def _stale_reason(path: Path, owner: tuple[int, str, str] | None, stale_after: float) -> str | None:
    """Why the lock at ``path`` is abandoned, or None while its holder may still be alive.

    On this host a dead pid is certain, so such a lock is stale at once. A holder on another host
    cannot be asked, so there only the heartbeat counts: the holder touches the file every
    ``stale_after / 8`` s, and a file untouched for ``stale_after`` s belongs to a dead or frozen
    process. The heartbeat rule applies on this host too, for a pid that was reused by another
    process, and to a file whose creator died before writing its name into it."""
    try:
        age = time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return None  # released meanwhile: just try again
    if owner is not None and owner[1] == socket.gethostname() and not _pid_alive(owner[0]):
        return f"process {owner[0]} is no longer running"
    if age > stale_after:
        return f"its heartbeat stopped {age:.0f} s ago"
    return None


def _break_stale_lock(path: Path, owner: tuple[int, str, str] | None) -> None:
    """Remove the abandoned lock ``path`` without ever removing a live one.

    Two waiters can find the same lock stale; the slower one must not delete the lock that the
    faster one has meanwhile created. So the file is first renamed to a name of our own (atomic,
    also on NFS), and deleted only if it is still the stale owner's file; otherwise it is put back
    with ``link`` (which, unlike ``rename``, never overwrites a lock created in between)."""
    aside = path.with_name(f"{path.name}.stale.{secrets.token_hex(4)}")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return
    if _lock_owner(aside) == owner:
        aside.unlink(missing_ok=True)
        return
    with suppress(FileExistsError, FileNotFoundError):
        os.link(aside, path)
    aside.unlink(missing_ok=True)


def _heartbeat(path: Path, every: float, stop: threading.Event) -> None:
    """Touch ``path`` every ``every`` s until ``stop`` is set, so other hosts see the holder alive."""
    while not stop.wait(every):
        with suppress(OSError):
            os.utime(path)


@contextmanager
def file_lock(
    path: str | Path, what: str = "a shared cache entry", stale_after: float = LOCK_STALE_S
) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` for the block: the file exists exactly while it is held.

    The cache this protects is often on a cluster's shared file system (NFS, Lustre), where
    ``flock`` may be local to one machine or not supported at all. So the lock is a file created
    with ``O_CREAT | O_EXCL``, which is atomic on local disks and NFSv3 or later: exactly one
    process on any host creates it. The holder writes its pid, host and a random token into it and
    touches it every ``stale_after / 8`` s from a daemon thread (the heartbeat), and deletes it
    when the block ends. A process killed while holding it leaves the file behind, so a lock is
    broken when it is stale (see :func:`_stale_reason`): at once when its pid on this host is dead,
    after ``stale_after`` s without a heartbeat otherwise. A process that has to wait says so,
    naming ``what`` and the holder, and says again when it got the lock, so a long wait is never
    silent."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    me = f"{os.getpid()} {socket.gethostname()} {secrets.token_hex(8)}\n"
    waiting_since: float | None = None
    while True:
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            owner = _lock_owner(path)
            reason = _stale_reason(path, owner, stale_after)
            holder = f"{owner[0]} on {owner[1]}" if owner else "?"
            if reason is not None:
                log.warning("Removing the stale lock %s of process %s: %s.", path, holder, reason)
                _break_stale_lock(path, owner)
                continue
            if waiting_since is None:
                log.warning("Waiting for %s: process %s is computing it (lock %s).", what, holder, path)
                waiting_since = time.monotonic()
            time.sleep(LOCK_POLL_S)
            continue
        with os.fdopen(fd, "w") as f:
            f.write(me)
        break
    if waiting_since is not None:
        log.warning("Got the lock for %s after %.0f s.", what, time.monotonic() - waiting_since)
    stop = threading.Event()
    beat = threading.Thread(target=_heartbeat, args=(path, stale_after / 8, stop), daemon=True, name="lock-heartbeat")
    beat.start()
    try:
        yield
    finally:
        stop.set()
        beat.join()
        with suppress(OSError):
            if path.read_text() == me:  # still ours (not broken as stale by someone else)
                path.unlink()


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


def _size(nbytes: float) -> str:
    """``1.2 MB``: a byte count as a user reads it in ``df -h``."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(nbytes) < 1000 or unit == "TB":
            return f"{nbytes:.0f} {unit}" if unit == "B" else f"{nbytes:.1f} {unit}"
        nbytes /= 1000
    return f"{nbytes:.1f} TB"  # pragma: no cover - the loop always returns


def free_space(path: str | Path) -> str:
    """``1.2 MB free of 3.1 MB`` on the file system holding ``path`` (its nearest existing parent),
    what a user must know to decide what to delete; ``unknown free space`` where it cannot be read."""
    place = Path(path)
    while not place.exists() and place != place.parent:
        place = place.parent
    try:
        usage = shutil.disk_usage(place)
    except OSError:
        return "unknown free space"
    return f"{_size(usage.free)} free of {_size(usage.total)}"


def no_space_error(path: str | Path, error: OSError, needed: int | None = None, atomic: bool = True) -> NoSpaceError:
    """The one line a full file system ends in: which file, why, how much room is left (after the
    partial file was removed), what is intact, and what to do. Used by every writer here and, with
    ``atomic=False``, by :func:`genbench.errors.user_errors` for writers outside genbench (a
    logger's file may then be incomplete; checkpoints and results are still whole)."""
    need = f" (it needs {_size(needed)})" if needed is not None else ""
    kept = (
        "Nothing was left half-written and the files written before are intact"
        if atomic
        else "That file may be incomplete; checkpoints and results are written atomically and are intact"
    )
    return NoSpaceError(
        f"Cannot write {path}: {error.strerror or error}{need}; {free_space(Path(path).parent)} on its file system. "
        f"{kept}: free some space (or write elsewhere) and run again; a training run continues with ckpt_path=auto."
    )


def _fsync(path: Path, directory: bool = False) -> None:
    """Flush ``path`` (a file, or a directory's entries) to the disk: a rename is only durable
    once the file's data and then the directory entry pointing at it have reached the disk; without
    both, a power loss or a host crash can leave an empty or missing file under the final name.
    File systems that cannot sync a directory (EINVAL on some network mounts) are skipped."""
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    except OSError as e:
        if not directory or e.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


def replace_durably(src: str | Path, dst: str | Path) -> None:
    """``os.replace(src, dst)``, then sync the directory so the new name survives a crash. For a
    file that is already complete and synced (a checkpoint promoted once its weights proved sane)."""
    os.replace(src, dst)
    _fsync(Path(dst).parent, directory=True)


@contextmanager
def atomic_path(path: str | Path, needed: int | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (``.<name>.<random>.tmp``) for the block to write.

    The one way genbench writes a file that someone else may read or that a kill, a crash or a
    full disk could interrupt: when the block succeeds the temporary file is synced to the disk,
    renamed onto ``path`` (atomic on POSIX) and the directory synced, so ``path`` holds either the
    old or the new complete file, never a part of one, even after a power loss. When anything
    fails the temporary file is removed (its space is given back) and ``path`` stays as it was;
    a full file system (ENOSPC, a quota) becomes :class:`NoSpaceError`, one line naming the file
    and the free space. ``needed`` (bytes), when known, is named in that line. The file gets the
    usual permissions (0666 less the umask), as ``open`` would give it, not mkstemp's 0600."""
    path = Path(path)
    tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        yield tmp
        _fsync(tmp)
        replace_durably(tmp, path)
    except BaseException as e:
        with suppress(OSError):
            tmp.unlink(missing_ok=True)
        if (cause := no_space_cause(e)) is not None and not isinstance(e, NoSpaceError):
            raise no_space_error(path, cause, needed) from e
        raise


def atomic_write_bytes(path: str | Path, data: bytes | memoryview) -> None:
    """Write ``data`` to ``path`` through :func:`atomic_path`."""
    with atomic_path(path, needed=len(data)) as tmp:
        tmp.write_bytes(data)


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode())


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` through :func:`atomic_path`. Serialised in memory first: torch's own file
    writer reports a full disk as a RuntimeError ("file write failed") that does not say so, while
    a plain write raises OSError(ENOSPC), which becomes the one-line :class:`NoSpaceError`."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getbuffer())


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
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe_writable(path)
    except OSError as e:
        raise GenbenchError(
            f"{key}={path} cannot be written ({e.strerror or e}): choose a writable directory (or leave {key} at "
            "its default, inside the run directory)."
        ) from None
