"""emotion.testing: a model author's test serves the model as users will call it."""

from __future__ import annotations

import pytest
from conftest import encode, gradient
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from support.sample_models import FailingLoadModel, GatedModel, RaisingModel, SizeModel

from emotion import BBox, Response
from emotion.serving.server import ModelStartError
from emotion.testing import serve_model


async def test_a_served_model_answers_through_the_whole_stack() -> None:
    image = encode(gradient(320, 240).rotate(90, expand=True), "PNG")

    async with serve_model(SizeModel()) as client:
        response = await client.predict(image)

    assert isinstance(response, Response)
    assert response.response[0].bbox == BBox(x1=0, y1=0, x2=240, y2=320)


async def test_bad_input_and_model_failures_get_the_statuses_users_would_get() -> None:
    async with serve_model(RaisingModel()) as client:
        with pytest.raises(GRPCError) as not_an_image:
            await client.predict(b"plain text")
        with pytest.raises(GRPCError) as failed:
            await client.predict(encode(gradient(), "JPEG"))

    assert not_an_image.value.status is Status.INVALID_ARGUMENT
    assert failed.value.status is Status.INTERNAL
    assert failed.value.message == "model RaisingModel failed: ZeroDivisionError"


async def test_a_model_that_cannot_load_fails_the_test_at_once() -> None:
    with pytest.raises(ModelStartError, match="FailingLoadModel failed to load"):
        async with serve_model(FailingLoadModel()):
            pytest.fail("served a model whose load() failed")


async def test_server_settings_pass_through_and_tokens_reach_the_client() -> None:
    async with serve_model(SizeModel(), tokens=("s3cret",), threads=1) as client:
        response = await client.predict(encode(gradient(), "JPEG"))

    assert response.response[0].bbox == BBox(x1=0, y1=0, x2=320, y2=240)


async def test_a_hanging_model_fails_the_call_by_the_timeout_and_the_server_still_stops() -> None:
    model = GatedModel()

    async with serve_model(model, timeout=0.2, grace=0) as client:
        with pytest.raises(TimeoutError):
            await client.predict(encode(gradient(), "JPEG"))
    model.gate.set()
