"""emotion.testing: a model author's test serves the model as users will call it."""

from __future__ import annotations

import os

import pytest
from conftest import encode, gradient
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from support.sample_models import FailingLoadModel, GatedModel, PidModel, RaisingModel, SizeModel

from emotion import BBox, ModelLoadError, Response
from emotion.serving.server import ModelStartError
from emotion.testing import serve_model

#: Every test here starts processes (emotion serve, its workers, inference processes).
pytestmark = pytest.mark.subprocess


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


def pid_of(response: Response) -> int:
    box = response.response[0].bbox
    assert box is not None
    return int(box.x1)


async def test_the_model_runs_in_an_inference_process_as_emotion_serve_runs_it() -> None:
    async with serve_model(PidModel()) as client:
        served_by = pid_of(await client.predict(encode(gradient(), "JPEG")))

    assert served_by != os.getpid()


async def test_without_inference_processes_this_very_instance_runs_in_threads() -> None:
    async with serve_model(PidModel(), inference_processes=0) as client:
        served_by = pid_of(await client.predict(encode(gradient(), "JPEG")))

    assert served_by == os.getpid()


async def test_batching_runs_in_threads_as_the_command_chooses() -> None:
    async with serve_model(PidModel(), max_batch_size=2) as client:
        served_by = pid_of(await client.predict(encode(gradient(), "JPEG")))

    assert served_by == os.getpid()
    with pytest.raises(ValueError, match="inference_processes=0"):
        async with serve_model(PidModel(), max_batch_size=2, inference_processes=1):
            pytest.fail("batched in inference processes")


async def test_a_model_a_process_cannot_import_fails_the_test_naming_both_ways_out() -> None:
    class LocalModel(PidModel):
        pass

    with pytest.raises(ModelLoadError) as caught:
        async with serve_model(LocalModel()):
            pytest.fail("served a model no process can import")

    assert "define it in an importable module" in str(caught.value)
    assert "inference_processes=0" in str(caught.value)
    async with serve_model(LocalModel(), inference_processes=0) as client:
        assert pid_of(await client.predict(encode(gradient(), "JPEG"))) == os.getpid()


async def test_state_set_on_the_test_instance_does_not_reach_the_served_model() -> None:
    model = GatedModel()
    model.gate.set()  # opens this instance's gate only: the process has its own

    async with serve_model(model, timeout=0.5, grace=0) as client:
        with pytest.raises(TimeoutError):
            await client.predict(encode(gradient(), "JPEG"))
