"""A testing kit for model authors: serve a model as `emotion serve` does, call it as a client.

A model's tests should go through what its users go through: decoding,
the contract checks on what the model returns, the gRPC encoding, the
statuses of bad input, and the process the model runs in. By default
:func:`serve_model` runs the model in an inference process of its own, made
from the model's class by name, as `emotion serve` does: a model that
cannot be imported in a fresh process, or that relies on state set up in
the test's process, fails its test as it would fail in production.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from emotion.client.client import Client
from emotion.config import Limits, ServerConfig
from emotion.inference.process_pool import InferencePool, StartFailed
from emotion.model import Model, ModelLoadError, spec_of
from emotion.observability.tracing import Tracer
from emotion.serving.server import ModelStartError, Server
from emotion.serving.wiring import Wiring


@contextlib.asynccontextmanager
async def serve_model(
    model: Model,
    *,
    inference_processes: int | None = None,
    timeout: float | None = 30.0,
    tracing: Tracer | None = None,
    **config: Any,
) -> AsyncIterator[Client]:
    """Serve ``model`` on 127.0.0.1 and yield a Client connected to it; drain on exit.

    ``inference_processes`` is `emotion serve`'s ``--inference-processes``:
    by default one process, which builds its own instance of ``type(model)``
    (so it must be importable by ``module:Class``, and ``model`` itself is
    not called); 0 runs this very instance in the server's threads, and
    batching (``max_batch_size`` above 1) picks threads by itself, as the
    command does. ``config`` takes any :class:`ServerConfig` field
    (``limits``, ``max_batch_size``, ``tokens``, ...); the host is 127.0.0.1
    and the port a free one unless given. The model loads first, and a
    failure there raises ModelStartError. With ``tokens``, the client sends
    the first one. ``timeout`` bounds each call, so a hanging model fails
    the test instead of stalling it.

    Example, with pytest-asyncio::

        async def test_my_model_finds_one_face():
            async with serve_model(MyModel()) as client:
                response = await client.predict(Path("face.jpg").read_bytes())
            assert len(response.response) == 1
    """
    batching = config.get("max_batch_size", 1) > 1
    if inference_processes is None:
        inference_processes = 0 if batching else 1
    elif inference_processes and batching:
        raise ValueError("batches form in a server's threads: use inference_processes=0")
    config.setdefault("host", "127.0.0.1")
    config.setdefault("port", 0)
    wiring = Wiring()
    async with contextlib.AsyncExitStack() as stack:
        if inference_processes:
            limits = config.get("limits") or Limits()
            pool = await _started_pool(model, inference_processes, limits.max_pixels)
            stack.push_async_callback(asyncio.to_thread, pool.close)
            watch = asyncio.ensure_future(pool.watch())  # restarts a process that dies
            stack.callback(watch.cancel)
            wiring = Wiring(inference_sockets=pool.paths)
        settings = ServerConfig(**config)
        server = Server(model, settings, tracing=tracing, wiring=wiring)
        await server.start()
        stack.push_async_callback(server.stop)
        await server.wait_loaded()
        token = settings.tokens[0] if settings.tokens else None
        client = Client(f"{_host(settings.host)}:{server.port}", timeout=timeout, token=token)
        yield await stack.enter_async_context(client)


async def _started_pool(model: Model, count: int, max_pixels: int) -> InferencePool:
    try:
        spec = spec_of(model)
    except ModelLoadError as exc:
        raise ModelLoadError(f"{exc}, or serve it with inference_processes=0") from None
    pool = InferencePool(spec, count, max_pixels=max_pixels)
    try:
        await asyncio.to_thread(pool.start)
    except StartFailed as exc:
        await asyncio.to_thread(pool.close)
        raise ModelStartError(str(exc)) from exc
    return pool


def _host(host: str) -> str:
    if host in {"0.0.0.0", ""}:
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host
