"""A request's options, held for every model, and the model named on every answer."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable

import pytest
from conftest import StartServer
from grpclib.client import Channel
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from support.sample_models import (
    BatchOptionsModel,
    ConfidentModel,
    OptionsModel,
    SizeModel,
)

from emotion import PipelineStub, Request, Response, Server
from emotion.contract import ModelVersion, Options
from emotion.testing import serve_model


def places(response: Response) -> list[int]:
    """Where each face of ConfidentModel's answer came in the model's own answer (1 to 4)."""
    return [round(face.bbox.x1) for face in response.response if face.bbox is not None]


async def answer(stub: PipelineStub, jpeg: bytes, options: Options | None) -> Response:
    return await stub.run_pipeline(Request(image=jpeg, options=options), timeout=10)


@pytest.fixture
async def confident(
    start_server: StartServer, connect: Callable[[Server], Channel]
) -> PipelineStub:
    return PipelineStub(connect(await start_server(ConfidentModel())))


async def test_without_options_the_answer_is_the_models_own(
    confident: PipelineStub, jpeg: bytes
) -> None:
    for options in (None, Options()):
        response = await answer(confident, jpeg, options)

        assert places(response) == [1, 2, 3, 4]
        assert [face.confidence for face in response.response] == [
            pytest.approx(value) if value is not None else None
            for value in ConfidentModel.CONFIDENCES
        ]


@pytest.mark.parametrize(
    ("max_faces", "kept"),
    # Most confident first; the face without a confidence after those with one.
    [(1, [2]), (2, [2, 1]), (3, [2, 1, 4]), (4, [2, 1, 4, 3]), (9, [2, 1, 4, 3])],
)
async def test_max_faces_keeps_the_most_confident_of_a_model_that_ignores_it(
    confident: PipelineStub, jpeg: bytes, max_faces: int, kept: list[int]
) -> None:
    response = await answer(confident, jpeg, Options(max_faces=max_faces))

    assert places(response) == kept


async def test_min_confidence_drops_faces_below_it_but_never_one_without_a_confidence(
    confident: PipelineStub, jpeg: bytes
) -> None:
    assert places(await answer(confident, jpeg, Options(min_confidence=0.5))) == [1, 2, 3]
    assert places(await answer(confident, jpeg, Options(min_confidence=0.9))) == [2, 3]
    assert places(await answer(confident, jpeg, Options(min_confidence=1.0))) == [3]
    both = Options(min_confidence=0.5, max_faces=2)
    assert places(await answer(confident, jpeg, both)) == [2, 1]


async def test_a_model_without_confidences_keeps_every_face_and_its_order(
    start_server: StartServer, connect: Callable[[Server], Channel], jpeg: bytes
) -> None:
    stub = PipelineStub(connect(await start_server(SizeModel())))

    kept = await answer(stub, jpeg, Options(min_confidence=0.99))
    first = await answer(stub, jpeg, Options(max_faces=1))

    assert [face.bbox for face in kept.response] == [
        face.bbox for face in (await answer(stub, jpeg, None)).response
    ]
    assert len(kept.response) == 2
    assert [face.bbox.x2 for face in first.response if face.bbox] == [320]


@pytest.mark.parametrize("value", [math.nan, -0.25, 1.5, math.inf])
async def test_a_min_confidence_outside_0_to_1_is_invalid_argument(
    confident: PipelineStub, jpeg: bytes, value: float
) -> None:
    with pytest.raises(GRPCError) as refused:
        await answer(confident, jpeg, Options(min_confidence=value))

    assert refused.value.status is Status.INVALID_ARGUMENT
    assert refused.value.message == (
        f"request.options.min_confidence is {value}; send a confidence from 0 to 1, "
        "or leave it unset for the model's own threshold"
    )


async def test_a_stream_names_the_image_whose_options_are_refused(
    confident: PipelineStub, jpeg: bytes
) -> None:
    requests = [
        Request(image=jpeg, options=Options(max_faces=1)),
        Request(image=jpeg, options=Options(min_confidence=2.0)),
    ]
    answers: list[Response] = []

    async def read() -> None:
        async for response in confident.stream_pipeline(requests, timeout=10):
            answers.append(response)

    with pytest.raises(GRPCError) as refused:
        await read()

    assert [places(a) for a in answers] == [[2]]
    assert refused.value.status is Status.INVALID_ARGUMENT
    assert (refused.value.message or "").startswith(
        "image 1: request.options.min_confidence is 2; "
    )


async def test_each_image_of_a_stream_gets_its_own_options(
    confident: PipelineStub, jpeg: bytes
) -> None:
    requests = [
        Request(image=jpeg, options=Options(max_faces=1)),
        Request(image=jpeg),
        Request(image=jpeg, options=Options(min_confidence=0.8)),
    ]

    answers = [r async for r in confident.stream_pipeline(requests, timeout=10)]

    assert [places(a) for a in answers] == [[2], [1, 2, 3, 4], [2, 3]]


async def test_every_answer_names_the_model_and_its_version_in_a_stream_too(
    confident: PipelineStub, jpeg: bytes
) -> None:
    named = ModelVersion(name="ConfidentModel", version="2.5.0")

    unary = await answer(confident, jpeg, None)
    streamed = [r async for r in confident.stream_pipeline([Request(image=jpeg)] * 3, timeout=10)]

    assert unary.model == named
    assert [r.model for r in streamed] == [named] * 3


async def test_a_model_that_declares_options_gets_them_and_an_empty_one_without(
    start_server: StartServer, connect: Callable[[Server], Channel], jpeg: bytes
) -> None:
    stub = PipelineStub(connect(await start_server(OptionsModel())))

    plain = await answer(stub, jpeg, None)
    asked = await answer(stub, jpeg, Options(max_faces=3, min_confidence=0.25))

    # The model gives two faces more than max_faces: the server cuts them.
    assert [(f.bbox.x1, f.bbox.y1) for f in plain.response if f.bbox] == [(0, -1)] * 2
    assert [(f.bbox.x1, f.bbox.y1) for f in asked.response if f.bbox] == [(3, 0.25)] * 3


async def test_a_batch_gives_each_image_its_own_options(
    start_server: StartServer, connect: Callable[[Server], Channel], jpeg: bytes
) -> None:
    model = BatchOptionsModel()
    stub = PipelineStub(connect(await start_server(model, max_batch_size=3, max_batch_delay=0.5)))

    answers = await asyncio.gather(
        *(answer(stub, jpeg, Options(max_faces=n)) for n in (1, 2)), answer(stub, jpeg, None)
    )

    assert [len(a.response) for a in answers] == [1, 2, 2]
    assert sorted(n for batch in model.batches for n in batch) == [0, 1, 2]


@pytest.mark.subprocess
async def test_options_travel_to_an_inference_process_and_back(jpeg: bytes) -> None:
    async with serve_model(OptionsModel()) as client:
        asked = await answer(client.stub, jpeg, Options(max_faces=1, min_confidence=0.5))
        plain = await answer(client.stub, jpeg, None)

    assert [(f.bbox.x1, f.bbox.y1) for f in asked.response if f.bbox] == [(1, 0.5)]
    assert len(plain.response) == 2
    assert asked.model == ModelVersion(name="OptionsModel")


@pytest.mark.subprocess
async def test_an_inference_process_cuts_the_answer_of_a_model_that_ignores_options(
    jpeg: bytes,
) -> None:
    async with serve_model(ConfidentModel()) as client:
        response = await answer(client.stub, jpeg, Options(max_faces=2, min_confidence=0.5))

    assert places(response) == [2, 1]
    assert response.model == ModelVersion(name="ConfidentModel", version="2.5.0")
