"""Describe: what a server serves and what it accepts, asked before or between calls."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable

import pytest
from conftest import StartServer
from grpclib.client import Channel
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from support.sample_models import ConfidentModel, DigestModel, GatedLoadModel

from emotion import PipelineStub, Server
from emotion.config import ConnectionLimits, Limits
from emotion.contract import DescribeRequest, DescribeResponse, ModelDescription, ServerLimits
from emotion.models.mock import MockModel
from emotion.runtime import version
from emotion.testing import serve_model


async def describe(channel: Channel, **metadata: str) -> DescribeResponse:
    return await PipelineStub(channel).describe(
        DescribeRequest(), timeout=10, metadata=metadata or None
    )


async def test_describe_names_the_model_its_labels_and_what_it_fills(
    start_server: StartServer, connect: Callable[[Server], Channel]
) -> None:
    answer = await describe(connect(await start_server(ConfidentModel())))

    assert answer.model == ModelDescription(
        name="ConfidentModel",
        version="2.5.0",
        labels=["neutral", "happiness"],  # in Expression's order, not the model's
        fills_confidence=True,
        fills_landmarks=False,
    )
    assert answer.server_version == version()


async def test_describe_states_the_limits_the_server_enforces(
    start_server: StartServer, connect: Callable[[Server], Channel]
) -> None:
    server = await start_server(
        limits=Limits(max_message_size=1_000_000, max_pixels=4_000_000, body_timeout=2.5),
        connections=ConnectionLimits(max_concurrent_streams=7),
    )

    answer = await describe(connect(server))

    assert answer.limits == ServerLimits(
        max_message_size=1_000_000,
        max_pixels=4_000_000,
        image_formats=["JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF"],
        max_concurrent_calls=7,
        body_timeout_seconds=2.5,
    )
    assert answer.model is not None
    assert (answer.model.name, answer.model.version) == ("MockModel", MockModel.version)


async def test_describe_gives_the_weights_digest_of_the_loaded_model(
    start_server: StartServer, connect: Callable[[Server], Channel]
) -> None:
    answer = await describe(connect(await start_server(DigestModel())))

    assert answer.model is not None
    assert answer.model.weights_digest == (
        "sha256:" + hashlib.sha256(str(os.getpid()).encode()).hexdigest()
    )
    assert answer.model.fills_landmarks


async def test_describe_waits_for_the_model_like_every_call(
    start_server: StartServer, connect: Callable[[Server], Channel]
) -> None:
    model = GatedLoadModel()
    server = await start_server(model, wait=False)
    channel = connect(server)

    with pytest.raises(GRPCError) as loading:
        await describe(channel)
    model.gate.set()
    await server.wait_loaded()

    assert loading.value.status is Status.UNAVAILABLE
    assert (await describe(channel)).model is not None


async def test_describe_needs_the_token_like_every_call(
    start_server: StartServer, connect: Callable[[Server], Channel]
) -> None:
    channel = connect(await start_server(tokens=("s3cret",)))

    with pytest.raises(GRPCError) as refused:
        await describe(channel)
    answer = await describe(channel, authorization="Bearer s3cret")

    assert refused.value.status is Status.UNAUTHENTICATED
    assert answer.model is not None


@pytest.mark.subprocess
async def test_with_inference_processes_describe_tells_the_model_a_process_loaded() -> None:
    # The instance in this process is never loaded: its digest would be "".
    async with serve_model(DigestModel()) as client:
        answer = await client.stub.describe(DescribeRequest(), timeout=10)

    assert answer.model is not None
    digest = answer.model.weights_digest
    assert digest.startswith("sha256:")
    assert digest != "sha256:" + hashlib.sha256(str(os.getpid()).encode()).hexdigest()
    assert (answer.model.name, answer.model.version) == ("DigestModel", "0.3")
