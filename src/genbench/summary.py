"""What a command tells its user: the end-of-command summary, and the logging set-up that puts it,
Lightning's own lines and Python warnings into the run's log file (``<run dir>/<job>.log``).

Why this is needed: Hydra configures the root logger (console + ``<job>.log``) only when the
command starts, but Lightning configured its own loggers when it was imported, *before* that: it
saw a root logger without handlers, gave ``pytorch_lightning`` and ``lightning_fabric`` their own
console handler and stopped them propagating. So none of Lightning's lines ("Seed set to", "GPU
available", "`Trainer.fit` stopped") reached train.log, and a normal run, where genbench itself logs
nothing, left train.log at 0 bytes. :func:`setup_run_logging` (called by every entry point)
routes those loggers and Python's warnings to the root handlers Hydra installed.

Two things are printed to the terminal *and* written to the log exactly once: the summary
(:func:`print_summary`) and a user error (``genbench.errors.user_errors``). Both print themselves
and log with ``extra={"console": False}``, which :class:`FileOnly` keeps off the console handler
(conf/hydra/default.yaml), so an error is not shown twice.

Other commands (``genbench-eval``, ``genbench-compare``) end the same way::

    from genbench.summary import print_summary
    print_summary("genbench-eval", {"metrics": ..., "written": path})
"""

from __future__ import annotations

import contextlib
import logging
import math
import sys
from collections.abc import Mapping
from typing import Any

log = logging.getLogger("genbench")

#: ``extra=`` for a record that goes to the log file but not to the console (it was printed already)
FILE_ONLY = {"console": False}

#: Libraries whose loggers Lightning detaches from the root logger at import (see module docstring)
LIBRARY_LOGGERS = ("lightning_fabric", "pytorch_lightning", "lightning", "lightning.pytorch", "lightning.fabric")

#: Third-party info lines that say nothing about the run (advertisements), dropped at their source
NOISE = ("💡 Tip:",)


class FileOnly(logging.Filter):
    """Console-handler filter: drops records logged with ``extra=FILE_ONLY`` (already printed)."""

    def filter(self, record: logging.LogRecord) -> bool:  # noqa: D102
        return getattr(record, "console", True)


class DropNoise(logging.Filter):
    """Logger filter: drops the messages in :data:`NOISE` (Lightning's litlogger advertisement),
    on the logger that emits them, so neither the console nor the log shows them."""

    def filter(self, record: logging.LogRecord) -> bool:  # noqa: D102
        return not str(record.msg).startswith(NOISE)


class StripTrailing(logging.Filter):
    """``py.warnings`` records end in a newline (``warnings.formatwarning``): a blank line after
    every warning in the terminal and the log. Strip it."""

    def filter(self, record: logging.LogRecord) -> bool:  # noqa: D102
        record.msg, record.args = record.getMessage().rstrip(), ()
        return True


class ConsoleFormatter(logging.Formatter):
    """The terminal shows info lines as they are (as Lightning prints them) and prefixes warnings
    and errors with their level; the log file keeps Hydra's full format with time and logger."""

    def format(self, record: logging.LogRecord) -> str:  # noqa: D102
        message = super().format(record)
        return message if record.levelno <= logging.INFO else f"{record.levelname}: {message}"


def setup_run_logging() -> None:
    """Route Lightning's loggers and Python warnings to the root handlers (console + run log).

    Idempotent; a no-op where the root logger has no handlers (a library user who configured
    nothing keeps Lightning's own console output)."""
    root = logging.getLogger()
    if not root.handlers:
        return
    for name in LIBRARY_LOGGERS:
        lib = logging.getLogger(name)
        for handler in list(lib.handlers):  # the bare StreamHandler Lightning added at import
            if type(handler) is logging.StreamHandler:
                lib.removeHandler(handler)
        lib.propagate = True
    silence_library_noise()
    for handler in root.handlers:
        if isinstance(handler, logging.FileHandler):
            tolerate_full_disk(handler)
    logging.captureWarnings(True)
    warnings_log = logging.getLogger("py.warnings")
    if not any(isinstance(f, StripTrailing) for f in warnings_log.filters):
        warnings_log.addFilter(StripTrailing())


def tolerate_full_disk(handler: logging.FileHandler) -> None:
    """A log file on a full disk drops its lines instead of printing a ``--- Logging error ---``
    traceback for each one (Python's default): the run goes on, and the writer that cannot save its
    checkpoint or result ends the command with the one line naming the file and the free space.
    The stream that failed is closed with its unwritten buffer (else every later flush, and the
    final close, would fail again) and reopened by the next line, so logging resumes once there is
    room. The first dropped line is announced once on stderr, so a log with a gap is never a mystery."""
    if getattr(handler, "_genbench_tolerates_full_disk", False):
        return
    from genbench.errors import no_space_cause

    original = handler.handleError
    warned = False

    def handle_error(record: logging.LogRecord) -> None:
        nonlocal warned
        error = sys.exc_info()[1]
        if error is None or no_space_cause(error) is None:
            original(record)
            return
        stream, handler.stream = handler.stream, None  # type: ignore[assignment]
        with contextlib.suppress(OSError, ValueError):  # its unwritten buffer is dropped with it
            stream.close()  # the next line reopens the file (FileHandler.emit), once there is room
        if not warned:
            warned = True
            print(
                f"genbench: warning: {handler.baseFilename}: {getattr(error, 'strerror', error)}; its log lines "
                "are dropped while the disk is full.",
                file=sys.stderr,
                flush=True,
            )

    handler.handleError = handle_error  # type: ignore[method-assign]
    handler._genbench_tolerates_full_disk = True  # type: ignore[attr-defined]


def silence_library_noise() -> None:
    """Install :class:`DropNoise` on the loggers that emit the lines in :data:`NOISE`."""
    for name in ("pytorch_lightning.utilities.rank_zero", "lightning_fabric.utilities.rank_zero"):
        lib = logging.getLogger(name)
        if not any(isinstance(f, DropNoise) for f in lib.filters):
            lib.addFilter(DropNoise())


def _format_value(value: Any) -> str:
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        if value != 0 and (abs(value) >= 1e5 or abs(value) < 1e-3):
            return f"{value:.3e}"
        return f"{value:.4g}" if abs(value) < 1000 else f"{value:,.1f}"
    if isinstance(value, Mapping):
        return "  ".join(f"{k} {_format_value(v)}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return ", ".join(_format_value(v) for v in value)
    return str(value)


def format_summary(title: str, items: Mapping[str, Any]) -> str:
    """The summary block: a title line, then one ``key: value`` line per item (None skipped; a
    dict value on one line as ``name value  name value``; floats to 4 significant digits)."""
    rows = [(str(k), _format_value(v)) for k, v in items.items() if v is not None and v != {}]
    width = max((len(k) for k, _ in rows), default=0)
    lines = [f"── {title} " + "─" * max(3, 60 - len(title))]
    lines += [f"  {k.ljust(width)} : {v}" for k, v in rows]
    return "\n".join(lines)


def print_summary(title: str, items: Mapping[str, Any]) -> str:
    """Print the end-of-command summary once (rank 0 only) and write it to the run's log.

    ``items``: label -> value (paths, a metrics dict, a status...). Returns the text."""
    text = format_summary(title, items)
    if "pytorch_lightning" in sys.modules:  # a training process: ranks > 0 stay quiet
        from genbench.distributed import is_rank_zero

        if not is_rank_zero():
            return text
    print(text, flush=True)
    log.info("%s", text, extra=FILE_ONLY)
    return text
