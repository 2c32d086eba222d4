"""Every Pipeline call: one log line, its request id, and its status, whatever its answer did."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable

import pytest
from conftest import StartServer
from grpclib.client import Channel
from grpclib.const import Cardinality
from grpclib.exceptions import GRPCError
from support.sample_models import GatedModel

from emotion import PipelineStub, Request, Response, Server
from emotion.contract import RUN_PIPELINE_PATH


async def test_each_failed_call_is_one_structured_log_line_without_image_bytes(
    server: Server,
    connect: Callable[[Server], Channel],
    jpeg: bytes,
    caplog: pytest.LogCaptureFixture,
) -> None:
    stub = PipelineStub(connect(server), metadata={"x-request-id": "req-42"})
    secret = b"not an image, but secret client bytes"

    with caplog.at_level(logging.DEBUG, logger="emotion.serving.calls"), pytest.raises(GRPCError):
        await stub.run_pipeline(Request(image=secret), timeout=5)
    with caplog.at_level(logging.DEBUG, logger="emotion.serving.calls"):
        await stub.run_pipeline(Request(image=jpeg), timeout=5)

    lines = [r for r in caplog.records if r.name == "emotion.serving.calls"]
    assert [r.levelname for r in lines] == ["WARNING", "DEBUG"]
    failed = lines[0].getMessage()
    assert failed.startswith(
        "rpc method=/emotion.v1.Pipeline/RunPipeline status=INVALID_ARGUMENT duration_ms="
    )
    assert " peer=127.0.0.1:" in failed
    assert " request_id=req-42 " in failed
    assert "secret client bytes" not in failed
    assert "status=OK" in lines[1].getMessage()


async def test_the_request_id_comes_back_in_the_trailers(
    server: Server, connect: Callable[[Server], Channel], jpeg: bytes
) -> None:
    assert await _returned_request_id(connect(server), "trace-7", jpeg) == "trace-7"


@pytest.mark.parametrize("offered", ["a b status=OK", "x" * 65, 'id"quoted'])
async def test_a_request_id_that_could_forge_log_fields_is_replaced(
    server: Server, connect: Callable[[Server], Channel], jpeg: bytes, offered: str
) -> None:
    returned = await _returned_request_id(connect(server), offered, jpeg)

    assert returned != offered
    assert len(returned) == 16


async def test_new_request_ids_differ_even_when_a_model_seeds_the_random_module(
    server: Server, connect: Callable[[Server], Channel], jpeg: bytes
) -> None:
    returned = []
    for _ in range(2):
        random.seed(0)  # as a model might, for reproducible results
        # An offered id that is replaced, so the server makes a new one.
        returned.append(await _returned_request_id(connect(server), "not an id", jpeg))

    assert returned[0] != returned[1]
    assert all(len(request_id) == 16 for request_id in returned)


async def _returned_request_id(channel: Channel, offered: str, image: bytes) -> str:
    """The x-request-id in the trailers of a call that offered ``offered``."""
    async with channel.request(
        RUN_PIPELINE_PATH,
        Cardinality.UNARY_UNARY,
        Request,
        Response,
        timeout=5,
        metadata={"x-request-id": offered},
    ) as stream:
        await stream.send_message(Request(image=image), end=True)
        await stream.recv_message()
        await stream.recv_trailing_metadata()
    assert stream.trailing_metadata is not None
    returned = stream.trailing_metadata["x-request-id"]
    assert isinstance(returned, str)
    return returned


async def test_a_call_its_client_cancelled_is_logged_at_debug_only(
    start_server: StartServer,
    connect: Callable[[Server], Channel],
    jpeg: bytes,
    caplog: pytest.LogCaptureFixture,
) -> None:
    model = GatedModel()
    stub = PipelineStub(connect(await start_server(model)))

    with caplog.at_level(logging.DEBUG, logger="emotion.serving.calls"):
        call = asyncio.ensure_future(stub.run_pipeline(Request(image=jpeg), timeout=10))
        await asyncio.to_thread(model.entered.wait, 10)
        call.cancel()
        await asyncio.sleep(0.2)
    model.gate.set()

    lines = [r for r in caplog.records if r.name == "emotion.serving.calls"]
    assert [(r.levelname, "status=CANCELLED" in r.getMessage()) for r in lines] == [("DEBUG", True)]
