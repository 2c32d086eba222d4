"""Shared fixtures: images made in memory and real servers on 127.0.0.1."""

from __future__ import annotations

import asyncio
import io
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Generator
from pathlib import Path

import pytest
from grpclib.client import Channel
from PIL import Image
from support import fuzzing  # noqa: F401 - loads the hypothesis profile before any test module

from emotion import Model, PipelineStub, Server, ServerConfig
from emotion.models.mock import MockModel

TESTS = Path(__file__).resolve().parent

#: Processes started in this process so far: subprocess.Popen's audit event,
#: which asyncio's subprocesses and the inference pool raise too.
_started = 0
_STARTED_BEFORE = pytest.StashKey[int]()


def _count_started(event: str, args: tuple[object, ...]) -> None:
    global _started
    if event == "subprocess.Popen":
        _started += 1


def pytest_configure(config: pytest.Config) -> None:
    sys.addaudithook(_count_started)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    item.stash[_STARTED_BEFORE] = _started


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item) -> Generator[None, None, None]:
    """Keep the subprocess marker true: a test that starts a process and lacks it fails."""
    yield
    if _started > item.stash.get(_STARTED_BEFORE, _started) and not item.get_closest_marker(
        "subprocess"
    ):
        pytest.fail(
            f"{item.nodeid} starts processes: mark it @pytest.mark.subprocess", pytrace=False
        )


StartServer = Callable[..., Awaitable[Server]]


def encode(image: Image.Image, image_format: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, image_format, **params)
    return buffer.getvalue()


def gradient(width: int = 320, height: int = 240) -> Image.Image:
    """An RGB image with detail, so encoders produce realistic files."""
    image = Image.linear_gradient("L").resize((width, height))
    return Image.merge(
        "RGB", (image, image.rotate(90), image.transpose(Image.Transpose.FLIP_LEFT_RIGHT))
    )


@pytest.fixture
def jpeg() -> bytes:
    return encode(gradient(), "JPEG", quality=90)


@pytest.fixture
async def start_server() -> AsyncIterator[StartServer]:
    """Start servers on ephemeral ports; all are stopped after the test."""
    servers: list[Server] = []

    async def start(model: Model | None = None, *, wait: bool = True, **config: object) -> Server:
        server = Server(model or MockModel(), ServerConfig(port=0, **config))  # type: ignore[arg-type]
        servers.append(server)
        await server.start()
        if wait:
            await server.wait_loaded()
        return server

    yield start
    for server in servers:
        await server.stop(grace=0)


@pytest.fixture
async def connect() -> AsyncIterator[Callable[[Server], Channel]]:
    """Open client channels to a server; all are closed after the test."""
    channels: list[Channel] = []

    def open_channel(server: Server) -> Channel:
        channel = Channel("127.0.0.1", server.port)
        channels.append(channel)
        return channel

    yield open_channel
    for channel in channels:
        channel.close()


@pytest.fixture
async def server(start_server: StartServer) -> Server:
    return await start_server()


@pytest.fixture
def stub(server: Server, connect: Callable[[Server], Channel]) -> PipelineStub:
    return PipelineStub(connect(server))


def subprocess_env(**extra: str) -> dict[str, str]:
    """Environment for `emotion` subprocesses: finds tests/support/, logs to a pipe."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TESTS), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


EMOTION = [sys.executable, "-m", "emotion"]


async def run_emotion(*args: str, **env: str) -> tuple[int, str, str]:
    """Run ``emotion ARGS`` to its end: exit code, stdout, stderr."""
    process = await asyncio.create_subprocess_exec(
        *EMOTION,
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=subprocess_env(**env),
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()
