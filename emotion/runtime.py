"""The server process: its event loop, its CPUs, its exit, and its process-wide settings."""

from __future__ import annotations

import asyncio
import importlib.metadata
import logging
import math
import os
import signal
import sys
import threading
import time
import warnings
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from PIL import Image

from emotion.config import LOOPS

log = logging.getLogger(__name__)


#: Every process's log line: `emotion serve`'s workers, supervisor and inference processes.
LOG_FORMAT = "%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s"

#: What grpclib's server logs about a call that emotion.serving.calls logs too, with its status.
_SAID_BY_CALLS = frozenset({"Deadline exceeded", "Request was cancelled: %s"})


class _OncePerCall(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.msg not in _SAID_BY_CALLS


def version() -> str:
    """The installed distribution's version: one number, kept in pyproject.toml."""
    try:
        return importlib.metadata.version("emotion")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree
        return "unknown (not installed)"


def configure_logging(level: str, log_format: str) -> None:
    """The process's log: ``level`` and ``log_format``, one line per failed call.

    grpclib logs a cancelled or expired call at INFO as well; emotion.serving.calls
    already says it, with the method, status, peer and request id.
    """
    logging.basicConfig(level=level.upper(), format=log_format)
    quiet = logging.getLogger("grpclib.server")
    if not any(isinstance(f, _OncePerCall) for f in quiet.filters):
        quiet.addFilter(_OncePerCall())


def apply_process_settings(*, max_pixels: int) -> None:
    """Settings that hold for the whole process, applied where serving starts.

    Pillow warns on odd metadata and on large images in client files: the
    first is not an operator's concern, and decode() rules on the second
    itself. decode() enforces ``max_pixels``; Pillow's own, lower guard would
    refuse some images the configuration allows.
    """
    warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.")
    warnings.simplefilter("ignore", Image.DecompressionBombWarning)
    Image.MAX_IMAGE_PIXELS = max(Image.MAX_IMAGE_PIXELS or 0, max_pixels)


def run(main: Coroutine[Any, Any, None], loop: str = "asyncio") -> None:
    """Run ``main`` on asyncio's own loop, or on uvloop.

    uvloop (``pip install 'emotion[uvloop]'``) runs the loop in C, but here
    the time goes to h2 and grpclib in Python: it measured no faster
    (benchmarks/README.md), so it is not the default.
    """
    if loop not in LOOPS:
        raise ValueError(f"loop must be one of {', '.join(LOOPS)}")
    if loop == "uvloop":
        import uvloop

        uvloop.run(main)
    else:
        asyncio.run(main)


def available_cpus(cgroup: Path = Path("/sys/fs/cgroup")) -> int:
    """CPUs this process may use: its CPU affinity, capped by a container's CPU quota.

    os.cpu_count() is the host's count; in a container limited to 2 CPUs on a
    64-CPU node it would start 64 workers that fight over 2 CPUs.
    """
    try:
        count = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        count = os.cpu_count() or 1
    for quota_file, period_file in (
        (cgroup / "cpu.max", None),  # cgroup v2: "QUOTA PERIOD" or "max PERIOD"
        (cgroup / "cpu" / "cpu.cfs_quota_us", cgroup / "cpu" / "cpu.cfs_period_us"),  # v1
    ):
        try:
            if period_file is None:
                quota, period = quota_file.read_text().split()
            else:
                quota, period = quota_file.read_text().strip(), period_file.read_text().strip()
        except (OSError, ValueError):
            continue
        if quota not in {"max", "-1"}:
            count = min(count, max(1, math.ceil(int(quota) / int(period))))
        break
    return max(1, count)


def exit_code(code: int) -> int:
    """Return ``code``, or exit at once if threads would keep the process alive.

    After a drain, a model call or load() that outlived the grace period still
    runs in a thread that Python waits for at exit; a server told to stop must
    not wait for it.
    """
    others = [t for t in threading.enumerate() if t is not threading.main_thread() and not t.daemon]
    # Idle pool threads end within moments of their pool's shutdown; busy ones do not.
    deadline = time.monotonic() + 1.0
    for thread in others:
        thread.join(max(0.0, deadline - time.monotonic()))
    lingering = [t for t in others if t.is_alive()]
    if lingering:
        log.warning("exiting without waiting for %d busy thread(s)", len(lingering))
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def write_port_file(path: Path, port: int) -> None:
    """Write ``port`` to ``path`` whole or not at all: a reader never sees half a number.

    A failure is logged, not raised: the server serves either way.
    """
    partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        partial.write_text(f"{port}\n")
        os.replace(partial, path)
    except OSError as exc:
        log.error("cannot write the port to %s: %s", path, exc.strerror or exc)


def exit_reason(code: int | None) -> str:
    """How a child process ended, from its exit code, for an operator's log line."""
    if code is None:
        return "still running"
    return f"killed by {signal.Signals(-code).name}" if code < 0 else f"status {code}"
