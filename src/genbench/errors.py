"""The one kind of error a user should see, and how entry points show it.

A :class:`GenbenchError` is raised for anything the user can fix (a config value, a path, a
checkpoint); its message says what is wrong and how to fix it. Entry points wrap their work in
:func:`user_errors`, which prints that message as one line and exits with status 1, so a typo
never ends in a traceback (``HYDRA_FULL_ERROR=1`` still shows one from Hydra's side).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager

log = logging.getLogger("genbench")


class GenbenchError(RuntimeError):
    """A user-facing error: the message says what is wrong and how to fix it.

    Entry points print it as one line and exit with status 1 instead of a traceback.
    """


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn GenbenchError into one clear line on stderr and exit status 1 (no traceback).

    The line is printed once: the log record (for the run's log file) is kept off the console
    handler, which would otherwise show it a second time on stdout."""
    from genbench.summary import FILE_ONLY

    try:
        yield
    except GenbenchError as e:
        log.error("%s", e, extra=FILE_ONLY)
        print(f"genbench: error: {e}", file=sys.stderr, flush=True)
        raise SystemExit(1) from None
