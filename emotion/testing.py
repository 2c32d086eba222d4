"""A testing kit for model authors: serve a model in-process and call it as a client would.

A model's tests should go through what its users go through: decoding,
the contract checks on what the model returns, the gRPC encoding, the
statuses of bad input. :func:`serve_model` runs the real server stack on an
ephemeral loopback port and hands the test a connected :class:`Client`.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from emotion.client.client import Client
from emotion.config import ServerConfig
from emotion.model import Model
from emotion.observability.tracing import Tracer
from emotion.serving.server import Server


@contextlib.asynccontextmanager
async def serve_model(
    model: Model, *, timeout: float | None = 30.0, tracing: Tracer | None = None, **config: Any
) -> AsyncIterator[Client]:
    """Serve ``model`` on 127.0.0.1 and yield a Client connected to it; drain on exit.

    ``config`` takes any :class:`ServerConfig` field (``threads``,
    ``limits``, ``max_batch_size``, ...); the host is 127.0.0.1 and the port
    a free one unless given. The model's ``load()`` runs first, and a
    failure there raises ModelStartError. With ``tokens``, the client sends
    the first one. ``timeout`` bounds each call, so a hanging model fails
    the test instead of stalling it.

    Example, with pytest-asyncio::

        async def test_my_model_finds_one_face():
            async with serve_model(MyModel()) as client:
                response = await client.predict(Path("face.jpg").read_bytes())
            assert len(response.response) == 1
    """
    config.setdefault("host", "127.0.0.1")
    config.setdefault("port", 0)
    settings = ServerConfig(**config)
    server = Server(model, settings, tracing=tracing)
    await server.start()
    try:
        await server.wait_loaded()
        token = settings.tokens[0] if settings.tokens else None
        async with Client(
            f"{_host(settings.host)}:{server.port}", timeout=timeout, token=token
        ) as client:
            yield client
    finally:
        await server.stop()


def _host(host: str) -> str:
    if host in {"0.0.0.0", ""}:
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host
