"""emotion.v1.Pipeline as a client sees it: answers, errors, and a server that keeps serving."""

from __future__ import annotations

import asyncio
import gc
import logging
import struct
import time
from collections.abc import Callable

import pytest
from conftest import StartServer, encode, gradient
from grpclib.client import Channel
from grpclib.client import Stream as ClientStream
from grpclib.const import Cardinality, Status
from grpclib.exceptions import GRPCError
from grpclib.health.v1.health_grpc import HealthStub
from grpclib.health.v1.health_pb2 import HealthCheckRequest, HealthCheckResponse
from PIL import Image
from support.h2client import Outcome, RawConnection, framed
from support.sample_models import (
    GatedLoadModel,
    GatedModel,
    RaisingModel,
    SizeModel,
    UnencodableModel,
    WrongTypeModel,
)

from emotion import BBox, Expression, PipelineStub, Request, Response, Result, Server
from emotion.config import Limits
from emotion.contract import (
    LEGACY_RUN_PIPELINE_PATH,
    RUN_PIPELINE_PATH,
    STREAM_PIPELINE_PATH,
    ModelVersion,
)
from emotion.errors import PUSHBACK
from emotion.models.mock import MockModel
from emotion.serving.statuses import PUSHBACK_RANGE
from emotion.transport.client import received_trailer

#: What the mock model answers, and the server says of it.
MOCK_ANSWER = Response(
    response=[Result(bbox=BBox(), expression=Expression())],
    model=ModelVersion(name="MockModel", version=MockModel.version),
)


def float32(value: float) -> float:
    return float(struct.unpack("f", struct.pack("f", value))[0])


async def test_round_trip_returns_the_models_response(
    start_server: StartServer, connect: Callable[[Server], Channel], jpeg: bytes
) -> None:
    stub = PipelineStub(connect(await start_server(SizeModel())))

    response = await stub.run_pipeline(Request(image=jpeg), timeout=10)

    # Floats travel as float32, so compare with values rounded the same way.
    assert response == Response(
        response=[
            Result(
                bbox=BBox(x1=0, y1=0, x2=320, y2=240),
                expression=Expression(happiness=float32(320 / 560), neutral=float32(240 / 560)),
            ),
            Result(bbox=BBox(x1=1.5, y1=2.5, x2=3.5, y2=4.5), expression=Expression(fear=1)),
        ],
        model=ModelVersion(name="SizeModel"),
    )


async def test_mock_model_answers_one_default_result(stub: PipelineStub, jpeg: bytes) -> None:
    response = await stub.run_pipeline(Request(image=jpeg), timeout=10)

    assert response == MOCK_ANSWER


def _truncated(image_format: str) -> bytes:
    data = encode(gradient(), image_format)
    return data[: len(data) * 2 // 3]


BAD_IMAGES = {
    "empty": (b"", "request.image is empty"),
    "text": (b"hello, this is not an image", "is not a JPEG, PNG, WebP, BMP, GIF or TIFF image"),
    "truncated JPEG": (_truncated("JPEG"), "request.image is a truncated JPEG"),
    "truncated PNG": (_truncated("PNG"), "request.image is a truncated PNG"),
    "truncated GIF": (_truncated("GIF"), "request.image is a truncated GIF"),
    "damaged WebP": (_truncated("WEBP"), "request.image is a damaged WEBP"),
    "JPEG header only": (encode(gradient(), "JPEG")[:12], "request.image is a truncated JPEG"),
    "PNG signature only": (b"\x89PNG\r\n\x1a\n", "truncated or damaged PNG: header unreadable"),
    "ICO": (encode(gradient(64, 64), "ICO"), "request.image is ICO, which is not supported"),
    "PDF": (
        b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj",
        "request.image is PDF, which is not supported",
    ),
    "HEIC": (b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00", "request.image is HEIF/HEIC"),
}


@pytest.mark.parametrize("case", BAD_IMAGES)
async def test_bad_input_is_invalid_argument_and_server_keeps_serving(
    stub: PipelineStub, jpeg: bytes, case: str
) -> None:
    data, expected_message = BAD_IMAGES[case]

    with pytest.raises(GRPCError) as caught:
        await stub.run_pipeline(Request(image=data), timeout=10)

    assert caught.value.status is Status.INVALID_ARGUMENT
    assert expected_message in (caught.value.message or "")
    assert await stub.run_pipeline(Request(image=jpeg), timeout=10)


async def test_model_exception_is_internal_naming_the_model_with_traceback_only_in_log(
    start_server: StartServer,
    connect: Callable[[Server], Channel],
    jpeg: bytes,
    caplog: pytest.LogCaptureFixture,
) -> None:
    stub = PipelineStub(connect(await start_server(RaisingModel())))

    with caplog.at_level(logging.ERROR), pytest.raises(GRPCError) as caught:
        await stub.run_pipeline(Request(image=jpeg), timeout=10)

    assert caught.value.status is Status.INTERNAL
    assert caught.value.message == "model RaisingModel failed: ZeroDivisionError"
    tracebacks = [r for r in caplog.records if r.name == "emotion.serving.calls" and r.exc_info]
    assert len(tracebacks) == 1
    assert tracebacks[0].exc_info is not None
    assert "secret detail" in str(tracebacks[0].exc_info[1])


async def test_model_returning_a_non_response_is_internal(
    start_server: StartServer, connect: Callable[[Server], Channel], jpeg: bytes
) -> None:
    stub = PipelineStub(connect(await start_server(WrongTypeModel())))

    with pytest.raises(GRPCError) as caught:
        await stub.run_pipeline(Request(image=jpeg), timeout=10)

    assert caught.value.status is Status.INTERNAL
    assert caught.value.message == "model WrongTypeModel returned dict, not emotion.v1.Response"


async def test_original_method_name_is_served_as_an_alias(
    server: Server, connect: Callable[[Server], Channel], jpeg: bytes
) -> None:
    channel = connect(server)
    async with channel.request(
        "/emotion.v1.Pipeline/run_pipeline",
        Cardinality.UNARY_UNARY,
        Request,
        Response,
        timeout=10,
    ) as stream:
        await stream.send_message(Request(image=jpeg), end=True)
        response = await stream.recv_message()

    assert response == MOCK_ANSWER


async def test_slow_inference_does_not_block_health_or_other_calls(
    start_server: StartServer, connect: Callable[[Server], Channel], jpeg: bytes
) -> None:
    model = GatedModel()
    server = await start_server(model, threads=2)
    channel = connect(server)
    stub = PipelineStub(channel)
    blocked = asyncio.ensure_future(stub.run_pipeline(Request(image=jpeg), timeout=30))
    await asyncio.to_thread(model.entered.wait, 10)

    # The model holds a thread; the loop still answers health and decodes bad input.
    health = await HealthStub(channel).Check(HealthCheckRequest(service=""), timeout=5)
    with pytest.raises(GRPCError) as caught:
        await stub.run_pipeline(Request(image=b""), timeout=5)

    assert health.status == HealthCheckResponse.SERVING
    assert caught.value.status is Status.INVALID_ARGUMENT
    assert not blocked.done()
    model.gate.set()
    assert len((await blocked).response) == 1


async def test_calls_before_the_model_loaded_are_unavailable(
    start_server: StartServer, connect: Callable[[Server], Channel], jpeg: bytes
) -> None:
    model = GatedLoadModel()
    server = await start_server(model, wait=False)
    stub = PipelineStub(connect(server))

    with pytest.raises(GRPCError) as caught:
        await stub.run_pipeline(Request(image=jpeg), timeout=5)
    model.gate.set()
    await server.wait_loaded()

    assert caught.value.status is Status.UNAVAILABLE
    assert caught.value.message == "model is still loading; retry shortly"
    assert await stub.run_pipeline(Request(image=jpeg), timeout=5) == Response(
        model=ModelVersion(name="GatedLoadModel")
    )


async def test_exif_orientation_is_applied_before_the_model_sees_the_image(
    start_server: StartServer, connect: Callable[[Server], Channel]
) -> None:
    stub = PipelineStub(connect(await start_server(SizeModel())))
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, displayed rotated 90 degrees clockwise
    data = encode(gradient(320, 240), "JPEG", exif=exif)

    response = await stub.run_pipeline(Request(image=data), timeout=10)

    assert response.response[0].bbox == BBox(x1=0, y1=0, x2=240, y2=320)


class ReducedSizeModel(SizeModel):
    min_size = 500


async def test_boxes_from_a_reduced_decode_come_back_in_full_image_pixels(
    start_server: StartServer, connect: Callable[[Server], Channel]
) -> None:
    stub = PipelineStub(connect(await start_server(ReducedSizeModel())))
    exif = Image.Exif()
    exif[0x0112] = 6
    data = encode(gradient(4000, 3000), "JPEG", exif=exif)

    response = await stub.run_pipeline(Request(image=data), timeout=30)

    # The model saw 375x500 (1/8 scale, turned upright) and answered in those pixels.
    assert response.response[0].bbox == BBox(x1=0, y1=0, x2=3000, y2=4000)
    assert response.response[1].bbox == BBox(x1=12, y1=20, x2=28, y2=36)


class RawRequest(Request):
    """Sends chosen bytes as the request message, valid protobuf or not."""

    payload = b""

    def SerializeToString(self) -> bytes:
        return self.payload


async def send_raw(channel: Channel, messages: list[Request]) -> Response | None:
    """Call RunPipeline sending exactly ``messages``, which a unary stub cannot do."""
    async with channel.request(
        RUN_PIPELINE_PATH, Cardinality.STREAM_STREAM, Request, Response, timeout=5
    ) as stream:
        await stream.send_request()
        for message in messages:
            await stream.send_message(message)
        await stream.end()
        return await stream.recv_message()


MALFORMED_REQUESTS = {
    "length past the end": b"\x0a\x05ab",
    "unterminated varint": b"\x0a",
    "field 1 as fixed32": b"\x0d\x00\x00\x00\x00",
    "invalid wire type": b"\x0f",
}


@pytest.mark.parametrize("case", MALFORMED_REQUESTS)
async def test_a_malformed_request_message_is_invalid_argument(
    server: Server, connect: Callable[[Server], Channel], jpeg: bytes, case: str
) -> None:
    channel = connect(server)
    RawRequest.payload = MALFORMED_REQUESTS[case]

    with pytest.raises(GRPCError) as caught:
        await send_raw(channel, [RawRequest()])

    assert caught.value.status is Status.INVALID_ARGUMENT
    assert (caught.value.message or "").startswith("request is not a valid emotion.v1.Request: ")
    assert await PipelineStub(channel).run_pipeline(Request(image=jpeg), timeout=5)


async def test_unknown_fields_from_a_newer_client_are_ignored(
    server: Server, connect: Callable[[Server], Channel], jpeg: bytes
) -> None:
    RawRequest.payload = bytes(Request(image=jpeg)) + b"\xf8\x06\x01"  # field 111 = 1

    response = await send_raw(connect(server), [RawRequest()])

    assert response == MOCK_ANSWER


async def test_a_call_without_a_request_message_is_invalid_argument(
    server: Server, connect: Callable[[Server], Channel]
) -> None:
    with pytest.raises(GRPCError) as caught:
        await send_raw(connect(server), [])

    assert caught.value.status is Status.INVALID_ARGUMENT
    assert caught.value.message == "the call ended without a request message"


async def test_a_model_failing_after_its_caller_left_is_logged_not_lost(
    start_server: StartServer,
    connect: Callable[[Server], Channel],
    jpeg: bytes,
    caplog: pytest.LogCaptureFixture,
) -> None:
    model = GatedModel()
    server = await start_server(model)
    stub = PipelineStub(connect(server))

    with pytest.raises(asyncio.TimeoutError):
        await stub.run_pipeline(Request(image=jpeg), timeout=0.3)
    expected = "model GatedModel failed: RuntimeError (its caller had already gone)"

    def logged() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.name == "emotion.inference.threads"]

    with caplog.at_level(logging.ERROR):
        model.fail = True
        model.gate.set()
        for _ in range(100):  # the thread logs once the model has failed
            if expected in logged():
                break
            await asyncio.sleep(0.05)

    assert expected in logged()


class CountingGatedModel(GatedModel):
    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def process_sample(self, image: Image.Image) -> Response:
        self.calls += 1
        return super().process_sample(image)


async def test_a_full_queue_answers_resource_exhausted_at_once(
    start_server: StartServer, connect: Callable[[Server], Channel], jpeg: bytes
) -> None:
    model = CountingGatedModel()
    server = await start_server(model, threads=1, limits=Limits(max_queue=1))
    stub = PipelineStub(connect(server))
    running = asyncio.ensure_future(stub.run_pipeline(Request(image=jpeg), timeout=30))
    await asyncio.to_thread(model.entered.wait, 10)
    queued = asyncio.ensure_future(stub.run_pipeline(Request(image=jpeg), timeout=30))
    await asyncio.sleep(0.2)

    refused = connect(server).request(
        RUN_PIPELINE_PATH, Cardinality.UNARY_UNARY, Request, Response, timeout=5
    )
    with pytest.raises(GRPCError) as caught:
        await _call(refused, Request(image=jpeg))
    model.gate.set()
    await running
    await queued

    assert caught.value.status is Status.RESOURCE_EXHAUSTED
    assert caught.value.message == "server is busy: 2 calls are in progress; retry with backoff"
    assert model.calls == 2
    # When to come back: a client retrying later than at once (gRFC A6's pushback).
    low, high = PUSHBACK_RANGE
    assert low <= int(received_trailer(refused, PUSHBACK) or "") <= high


async def _call(call: ClientStream[Request, Response], request: Request) -> Response | None:
    async with call:
        await call.send_message(request, end=True)
        return await call.recv_message()


async def test_a_call_whose_deadline_passes_in_the_queue_never_reaches_the_model(
    start_server: StartServer, connect: Callable[[Server], Channel], jpeg: bytes
) -> None:
    model = CountingGatedModel()
    server = await start_server(model, threads=1)
    stub = PipelineStub(connect(server))
    running = asyncio.ensure_future(stub.run_pipeline(Request(image=jpeg), timeout=30))
    await asyncio.to_thread(model.entered.wait, 10)
    late = asyncio.ensure_future(stub.run_pipeline(Request(image=jpeg), timeout=0.3))
    while server.backend.queued < 2:  # noqa: ASYNC110 - a count to watch, not an event
        await asyncio.sleep(0.01)

    # Hold the event loop, so the call is not withdrawn when its deadline
    # passes: the inference thread itself must see that it has.
    time.sleep(0.5)  # noqa: ASYNC251 - blocking the loop is the point
    model.gate.set()
    time.sleep(0.5)  # noqa: ASYNC251 - the thread takes the late call meanwhile
    with pytest.raises((GRPCError, asyncio.TimeoutError)):
        await late
    await running

    assert model.calls == 1


async def test_a_cancelled_call_frees_its_place_in_the_queue(
    start_server: StartServer, connect: Callable[[Server], Channel], jpeg: bytes
) -> None:
    model = CountingGatedModel()
    server = await start_server(model, threads=1, limits=Limits(max_queue=1))
    stub = PipelineStub(connect(server))
    running = asyncio.ensure_future(stub.run_pipeline(Request(image=jpeg), timeout=30))
    await asyncio.to_thread(model.entered.wait, 10)
    waiting = asyncio.ensure_future(stub.run_pipeline(Request(image=jpeg), timeout=30))
    await asyncio.sleep(0.2)

    waiting.cancel()
    await asyncio.sleep(0.2)
    after = asyncio.ensure_future(stub.run_pipeline(Request(image=jpeg), timeout=30))
    await asyncio.sleep(0.2)
    model.gate.set()

    assert len((await after).response) == 1
    await running
    assert model.calls == 2


async def test_a_stream_of_images_is_answered_in_order(
    start_server: StartServer, connect: Callable[[Server], Channel]
) -> None:
    stub = PipelineStub(connect(await start_server(SizeModel(), threads=2)))
    widths = [300, 40, 250, 10, 120, 64, 200, 33]
    frames = [Request(image=encode(gradient(w, 30), "PNG")) for w in widths]

    answers = [a async for a in stub.stream_pipeline(frames, timeout=30)]

    assert [a.response[0].bbox.x2 for a in answers if a.response[0].bbox] == widths


async def test_an_empty_stream_ends_ok_with_no_answers(
    stub: PipelineStub,
) -> None:
    assert [a async for a in stub.stream_pipeline([], timeout=10)] == []


async def test_a_bad_image_ends_the_stream_naming_it_after_the_earlier_answers(
    start_server: StartServer, connect: Callable[[Server], Channel], jpeg: bytes
) -> None:
    stub = PipelineStub(connect(await start_server(SizeModel())))
    frames = [
        Request(image=jpeg),
        Request(image=jpeg),
        Request(image=b"garbage"),
        Request(image=jpeg),
    ]
    answers: list[Response] = []

    async def collect() -> None:
        async for answer in stub.stream_pipeline(frames, timeout=30):
            answers.append(answer)

    with pytest.raises(GRPCError) as caught:
        await collect()

    assert len(answers) == 2
    assert caught.value.status is Status.INVALID_ARGUMENT
    assert caught.value.message == (
        "image 2: request.image (7 bytes) is not a JPEG, PNG, WebP, BMP, GIF or TIFF image"
    )


async def test_a_fast_sender_is_held_back_by_flow_control(
    start_server: StartServer, connect: Callable[[Server], Channel]
) -> None:
    model = CountingGatedModel()
    server = await start_server(model, threads=1)
    frame = Request(image=encode(Image.effect_noise((900, 900), 80).convert("RGB"), "PNG"))
    assert len(bytes(frame)) > 500_000
    sent = 0
    async with connect(server).request(
        STREAM_PIPELINE_PATH, Cardinality.STREAM_STREAM, Request, Response, timeout=60
    ) as stream:

        async def produce() -> None:
            nonlocal sent
            for _ in range(40):
                await stream.send_message(frame)
                sent += 1
            await stream.end()

        producer = asyncio.ensure_future(produce())
        await asyncio.to_thread(model.entered.wait, 10)
        await asyncio.sleep(1.0)
        held_at = sent
        model.gate.set()
        answers = [await stream.recv_message() for _ in range(40)]
        await producer

    # The model is stuck on the first image: the server reads two (its window),
    # and HTTP/2 buffers a few megabytes more; the sender waits for the rest.
    assert held_at < 15
    assert all(answer is not None for answer in answers)
    assert model.calls == 40


async def test_a_stream_of_bad_images_leaves_nothing_unretrieved_in_the_log(
    server: Server, connect: Callable[[Server], Channel], caplog: pytest.LogCaptureFixture
) -> None:
    stub = PipelineStub(connect(server))

    with pytest.raises(GRPCError):
        await _drain(stub.stream_pipeline([Request(image=b"bad")] * 6, timeout=10))
    await asyncio.sleep(0.2)
    gc.collect()

    assert not [r for r in caplog.records if r.name == "asyncio" and r.levelno >= logging.ERROR]


async def _drain(answers: object) -> None:
    async for _ in answers:  # type: ignore[attr-defined]
        pass


async def test_a_response_that_cannot_be_encoded_is_internal_not_unknown(
    start_server: StartServer, connect: Callable[[Server], Channel], jpeg: bytes
) -> None:
    stub = PipelineStub(connect(await start_server(UnencodableModel())))

    with pytest.raises(GRPCError) as caught:
        await stub.run_pipeline(Request(image=jpeg), timeout=5)

    assert caught.value.status is Status.INTERNAL
    assert caught.value.message is not None
    assert caught.value.message.startswith("model UnencodableModel returned a Response that cannot")


WRONG_WIRE_TYPES = {
    "varint": b"\x08\x01",
    "64-bit": b"\x09" + bytes(8),
    "32-bit": b"\x0d" + bytes(4),
}


@pytest.mark.parametrize(
    "path", [RUN_PIPELINE_PATH, LEGACY_RUN_PIPELINE_PATH, STREAM_PIPELINE_PATH]
)
@pytest.mark.parametrize(
    ("wire_type", "payload"),
    [
        *WRONG_WIRE_TYPES.items(),
        ("varint", b"\x08\x01" + bytes(Request(image=encode(gradient(), "PNG")))),
    ],
)
async def test_an_image_field_of_another_wire_type_is_invalid_argument_on_every_method(
    start_server: StartServer,
    caplog: pytest.LogCaptureFixture,
    path: str,
    wire_type: str,
    payload: bytes,
) -> None:
    server = await start_server()

    outcome = await asyncio.to_thread(_raw_call, server.port, path, framed(payload))

    assert outcome.status == str(Status.INVALID_ARGUMENT.value)
    assert outcome.message == (
        f"request is not a valid emotion.v1.Request: image (field 1) has wire type {wire_type}, "
        "but it is a bytes (length-delimited) field; was the sender built from another .proto?"
    )
    assert [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR] == []


def _raw_call(port: int, path: str, body: bytes) -> Outcome:
    connection = RawConnection(port)
    try:
        return connection.call(path, iter([body]))
    finally:
        connection.close()


async def test_a_stream_waiting_for_its_next_image_holds_no_place_in_the_queue(
    start_server: StartServer, connect: Callable[[Server], Channel], jpeg: bytes
) -> None:
    server = await start_server(threads=1, limits=Limits(max_queue=0))  # one place in all
    channel = connect(server)

    async with channel.request(
        STREAM_PIPELINE_PATH, Cardinality.STREAM_STREAM, Request, Response, timeout=10
    ) as quiet:
        await quiet.send_message(Request(image=jpeg))
        assert await quiet.recv_message() is not None
        # The stream stays open, sending nothing: another call gets the place.
        other = await PipelineStub(channel).run_pipeline(Request(image=jpeg), timeout=10)
        await quiet.send_message(Request(image=jpeg), end=True)
        assert await quiet.recv_message() is not None

    assert len(other.response) == 1
