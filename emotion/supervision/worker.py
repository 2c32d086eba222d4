"""A worker process of the supervisor (:mod:`.supervisor`): one full server on the shared port.

What runs in the child: it serves the supervisor's share of the options
(with a stand-in that carries the model's name, when inference processes run
the model), says when it serves or why it cannot, and drains by itself if
the supervisor dies, since a killed supervisor cannot forward a signal.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING

from emotion.model import Model, load_model
from emotion.observability.tracing import NoTracing
from emotion.runtime import configure_logging, exit_code, run
from emotion.serving.server import serve
from emotion.serving.wiring import Wiring

if TYPE_CHECKING:
    from multiprocessing.connection import Connection

    from PIL import Image

    from emotion.config import ServeOptions, ServerConfig
    from emotion.contract import Response

log = logging.getLogger(__name__)

_PARENT_CHECK_INTERVAL = 1.0


@dataclass(frozen=True)
class Serving:
    """Worker to supervisor: the model is loaded and the worker serves ``port``."""

    port: int


@dataclass(frozen=True)
class CannotServe:
    """Worker to supervisor: the worker cannot serve; ``reason`` is one line for the operator."""

    reason: str


def worker_main(
    options: ServeOptions,
    config: ServerConfig,
    wiring: Wiring,
    messages: Connection,
    log_format: str,
    model_name: str | None,
    traced: bool,
) -> None:
    """Entry point of a worker process: serve ``config``, joined to the others by ``wiring``.

    ``model_name`` is given when inference processes run the model, which
    the worker then never imports. ``traced``: the supervisor found tracing
    asked for and installed (it warned once if not); the worker then builds
    its own tracer from the ``OTEL_*`` variables.
    """
    configure_logging(options.log_level, log_format)
    # Ctrl-C reaches the whole process group; only the parent's word counts.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Until the server handles SIGHUP (it reads its files again), it must not
    # kill: the files are read at the start anyway. It came blocked.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGHUP})
    try:
        model = load_model(options.model) if model_name is None else model_elsewhere(model_name)
        serving = _serve_while_parent_lives(model, config, wiring, messages, traced)
        run(serving, options.loop)
    except Exception as exc:
        with contextlib.suppress(OSError):
            messages.send(CannotServe(str(exc)))
        sys.exit(exit_code(1))
    sys.exit(exit_code(0))


async def _serve_while_parent_lives(
    model: Model, config: ServerConfig, wiring: Wiring, messages: Connection, traced: bool
) -> None:
    """Serve; drain as on SIGTERM if the parent dies (killed, it could not forward one)."""
    parent = os.getppid()
    serving = asyncio.ensure_future(
        serve(
            model,
            config,
            signals=(signal.SIGTERM,),
            on_serving=lambda port: messages.send(Serving(port)),
            tracing=None if traced else NoTracing(),
            wiring=wiring,
        )
    )
    orphaned = False
    while not serving.done():
        await asyncio.wait({serving}, timeout=_PARENT_CHECK_INTERVAL)
        if not orphaned and os.getppid() != parent:
            orphaned = True
            log.warning("supervisor (pid %d) is gone; draining", parent)
            os.kill(os.getpid(), signal.SIGTERM)
    serving.result()


class _Elsewhere(Model):
    def process_sample(self, image: Image.Image) -> Response:
        raise RuntimeError(f"model {self.name} runs in the inference processes, not here")


def model_elsewhere(name: str) -> Model:
    """What a worker serves in place of a model its inference processes run: its name.

    Importing the model's module would cost every worker what that module
    imports, for nothing (9 MiB of PSS each for the default model's numpy).
    """
    named: type[_Elsewhere] = type(name, (_Elsewhere,), {"name": name})
    return named()
