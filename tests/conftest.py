"""Shared fixtures: images made in memory and real servers on 127.0.0.1."""

from __future__ import annotations

import asyncio
import io
import os
import sys
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Generator,
    Iterator,
    Mapping,
    Sequence,
)
from pathlib import Path

import pytest
from grpclib.client import Channel
from PIL import Image
from support import fuzzing  # noqa: F401 - loads the hypothesis profile before any test module

from emotion import Model, PipelineStub, Server, ServerConfig
from emotion.models.mock import MockModel
from emotion.serving.wiring import Wiring

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
    global small_layout
    small_layout = True
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

    async def start(
        model: Model | None = None,
        *,
        wait: bool = True,
        wiring: Wiring | None = None,
        **config: object,
    ) -> Server:
        settings = ServerConfig(port=0, **config)  # type: ignore[arg-type]
        server = Server(model or MockModel(), settings, wiring=wiring)
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

#: What `emotion serve` started by a test's helpers runs unless the test names it
#: (flag or variable): one worker and one inference process. The default, one of
#: each per CPU, would start dozens of interpreters per test on a large CI machine.
#: On under pytest (pytest_configure), off outside it: tests/soak.py uses the
#: helpers too. Tests marked default_layout turn it off (`_serve_layout`).
SMALL_LAYOUT = {
    "--workers": "EMOTION_WORKERS",
    "--inference-processes": "EMOTION_INFERENCE_PROCESSES",
}
small_layout = False


def serve_args(args: Sequence[str], env: Mapping[str, str]) -> list[str]:
    """``emotion serve`` arguments ``args``, with SMALL_LAYOUT's flags where a test named neither.

    Batching (--max-batch-size) keeps inference in the workers' threads, so it
    gets no --inference-processes.
    """
    added: list[str] = []
    named = {arg.split("=", 1)[0] for arg in args}
    batching = "--max-batch-size" in named or "EMOTION_MAX_BATCH_SIZE" in env
    for flag, variable in SMALL_LAYOUT.items() if small_layout else ():
        if flag in named or variable in env or (flag == "--inference-processes" and batching):
            continue
        added += [flag, "1"]
    return [*args, *added]


@pytest.fixture(autouse=True)
def _serve_layout(request: pytest.FixtureRequest) -> Iterator[None]:
    """A test marked default_layout gets emotion's own layout from the helpers."""
    global small_layout
    if request.node.get_closest_marker("default_layout") is None:
        yield
        return
    small_layout = False
    yield
    small_layout = True


async def run_emotion(*args: str, **env: str) -> tuple[int, str, str]:
    """Run ``emotion ARGS`` to its end: exit code, stdout, stderr.

    ``emotion serve`` gets one worker and one inference process unless ``args``
    or ``env`` say otherwise (:func:`serve_args`).
    """
    environ = subprocess_env(**env)
    if args[:1] == ("serve",):
        args = ("serve", *serve_args(args[1:], environ))
    process = await asyncio.create_subprocess_exec(
        *EMOTION,
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=environ,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()
