"""The one kind of error a user should see, and how entry points show it.

A :class:`GenbenchError` is raised for anything the user can fix (a config value, a path, a
checkpoint); its message says what is wrong and how to fix it. Entry points wrap their work in
:func:`user_errors`, which prints that message as one line and exits with status 1, so a typo
never ends in a traceback (``HYDRA_FULL_ERROR=1`` still shows one from Hydra's side).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager

log = logging.getLogger("genbench")


class GenbenchError(RuntimeError):
    """A user-facing error: the message says what is wrong and how to fix it.

    Entry points print it as one line and exit with status 1 instead of a traceback.
    """


class NoSpaceError(GenbenchError):
    """A file could not be written because its file system is full (or a quota is reached).

    Raised by genbench's writers (:func:`genbench.io.atomic_path`) after the partial file was
    removed; the message names the file and the free space left (:func:`genbench.io.no_space_error`)."""


#: errno values meaning "the file system has no room for this file" (full disk, quota, size limit)
NO_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


def no_space_cause(error: BaseException) -> OSError | None:
    """The OSError(ENOSPC / EDQUOT / EFBIG) behind ``error`` (itself, or in its cause/context chain:
    a library may wrap it, or hit it while handling another error), or None."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in NO_SPACE_ERRNOS:
            return current
        current = current.__cause__ or current.__context__
    return None


def _file_being_written(error: BaseException) -> str | None:
    """The file a foreign writer was writing when ``error`` was raised, found in its traceback (an
    OSError from ``write`` carries no file name): the innermost open file object in a frame's
    locals (``name`` of a built-in file, ``path`` of an fsspec one). None when there is none."""
    tb, found = error.__traceback__, None
    while tb is not None:
        for value in tb.tb_frame.f_locals.values():
            if hasattr(value, "write") and hasattr(value, "closed"):
                name = getattr(value, "path", None) or getattr(value, "name", None)
                if isinstance(name, str) and name.startswith("/"):
                    found = name
        tb = tb.tb_next
    return found


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn GenbenchError into one clear line on stderr and exit status 1 (no traceback).

    The line is printed once: the log record (for the run's log file) is kept off the console
    handler, which would otherwise show it a second time on stdout. A full file system met by a
    writer that is not genbench's own (Lightning's CSV logger, Hydra's files) is reported the
    same way as genbench's writers report it: one line naming the file and the free space."""
    from genbench.summary import FILE_ONLY

    try:
        try:
            yield
        except GenbenchError:
            raise
        except Exception as e:  # a full disk met by a writer outside genbench (a logger, Hydra)
            cause = no_space_cause(e)
            if cause is None:
                raise
            from genbench.io import no_space_error

            raise no_space_error(cause.filename or _file_being_written(e) or "a file", cause, atomic=False) from e
    except GenbenchError as e:
        with contextlib.suppress(Exception):  # the log file may be on the full disk
            log.error("%s", e, extra=FILE_ONLY)
        print(f"genbench: error: {e}", file=sys.stderr, flush=True)
        raise SystemExit(1) from None
