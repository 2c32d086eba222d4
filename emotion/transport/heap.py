"""Freed memory handed back to the system after a burst of large buffers (glibc's ``malloc_trim``).

Once it has freed a buffer of a few MB, glibc's malloc serves buffers that
large from its heap instead of mapping them afresh (its mmap threshold
adapts), and it returns freed heap memory to the system only from the top
of the heap. After a burst of large requests, what they freed in the middle
of the heap stays in the process: in a worker, 28-46 MiB after a
zero-window attack (benchmarks/README.md, "Memory after an attack"), none of
it referenced. ``malloc_trim(0)`` returns every free page.

Trimmed only when a burst ends (a connection that received large buffers
closes), a moment later, and at most once per :data:`TRIM_DELAY`: trimming
after every call would make each next request fault its pages in again.
Under another C library nothing is done.
"""

from __future__ import annotations

import asyncio
import ctypes
import functools
import os
from collections.abc import Callable

#: Seconds between a connection's end and the trim: the calls it cancelled
#: end, and free what they held, first. Also the least time between trims.
TRIM_DELAY = 1.0


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or None under another C library."""
    try:
        if not os.confstr("CS_GNU_LIBC_VERSION"):
            return None
        trim: Callable[[int], int] = ctypes.CDLL(None).malloc_trim
    except (AttributeError, OSError, ValueError):  # no such name, library or symbol
        return None
    return trim


def trim() -> bool:
    """Return the free pages of malloc's heaps to the system now; False where it cannot."""
    malloc_trim = _malloc_trim()
    if malloc_trim is None:
        return False
    malloc_trim(0)
    return True


class _Trims:
    """One trim pending at most, in the running event loop."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending = False
        self.done = 0

    def soon(self) -> None:
        loop = asyncio.get_running_loop()
        # A loop closed with a trim pending never ran it: a new loop schedules its own.
        if self._pending and loop is self._loop:
            return
        self._loop, self._pending = loop, True
        loop.call_later(TRIM_DELAY, self._trim)

    def _trim(self) -> None:
        self._pending = False
        if trim():
            self.done += 1


_trims = _Trims()


def trim_soon() -> None:
    """Trim :data:`TRIM_DELAY` seconds from now, unless a trim is pending already."""
    _trims.soon()


def trims_done() -> int:
    """Trims done since the process started (not counting calls to :func:`trim`)."""
    return _trims.done
