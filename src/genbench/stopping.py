"""A stop request that long loops honour within one iteration.

A signal handler only records the request (Python runs it between bytecodes of the main thread,
so acting inside it could catch a step half done). Training stops at the next step boundary
(:class:`genbench.callbacks.ResumeCheckpoint`); loops that can run for minutes between two step
boundaries -- a sampler's steps, the chunks of a sample, the in-domain extractor's training --
call :func:`check_stop` each iteration, so a SIGTERM during a sample grid or an evaluation takes
effect within one network evaluation instead of after the whole sampling.
"""

from __future__ import annotations

import signal

_requested: list[int] = []


class StopRequested(Exception):  # noqa: N818 - a request, not an error
    """Raised inside a long loop when a stop was requested; callers that can skip their work
    (an evaluation, a sample grid) catch it and let training reach its next step boundary."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"stop requested ({signal.Signals(signum).name})")
        self.signum = signum


def request_stop(signum: int) -> None:
    """Record a stop request (safe to call from a signal handler)."""
    _requested.append(signum)


def stop_requested() -> int | None:
    """The first signal that requested a stop, or None."""
    return _requested[0] if _requested else None


def check_stop() -> None:
    """Raise :class:`StopRequested` if a stop was requested."""
    if _requested:
        raise StopRequested(_requested[0])


def clear_stop() -> None:
    """Forget requests (a new training job in the same process starts clean)."""
    _requested.clear()
