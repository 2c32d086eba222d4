"""A tracked stream: ids that follow the faces, smoothed expressions, the summary at the end.

The frames are coloured squares on black that SquaresModel reports as faces,
smallest first, so the true identities are known and the model's order says
nothing about them.
"""

from __future__ import annotations

import io
import math
from collections.abc import AsyncIterator, Callable, Sequence

import pytest
from conftest import StartServer
from grpclib.client import Channel
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from PIL import Image, ImageDraw
from support.sample_models import SquaresModel

from emotion import PipelineStub, Request, Response, Server
from emotion.contract import Options, Tracking

RED = (255, 0, 0)  # happiness 0.5
BLUE = (0, 0, 255)  # sadness 0.5
#: Each person: colour, and the size of their square (which sets the model's order).
PEOPLE = {"red": (RED, 40), "blue": (BLUE, 50)}


def frame(places: dict[str, tuple[int, int]], colours: dict[str, tuple[int, int, int]]) -> bytes:
    image = Image.new("RGB", (400, 200))
    draw = ImageDraw.Draw(image)
    for name, (x, y) in places.items():
        size = PEOPLE[name][1]
        draw.rectangle((x, y, x + size - 1, y + size - 1), fill=colours[name])
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def crossing(frames: int = 24) -> list[bytes]:
    """Red moves right, blue left; they pass each other with a little overlap."""
    colours = {name: colour for name, (colour, _) in PEOPLE.items()}
    return [
        frame({"red": (10 + 14 * i, 60), "blue": (340 - 14 * i, 90)}, colours)
        for i in range(frames)
    ]


def who(face_box_width: float) -> str:
    return "red" if round(face_box_width) == PEOPLE["red"][1] else "blue"


@pytest.fixture
async def stub(start_server: StartServer, connect: Callable[[Server], Channel]) -> PipelineStub:
    return PipelineStub(connect(await start_server(SquaresModel())))


async def stream(stub: PipelineStub, requests: Sequence[Request]) -> list[Response]:
    return [r async for r in stub.stream_pipeline(requests, timeout=30)]


async def collect(answers: AsyncIterator[Response], into: list[Response]) -> None:
    async for answer in answers:
        into.append(answer)


async def test_an_untracked_stream_is_answered_as_before(stub: PipelineStub) -> None:
    frames = crossing(4)
    answers = await stream(stub, [Request(image=f) for f in frames])

    assert len(answers) == 4
    for answer, image in zip(answers, frames, strict=True):
        assert answer.summary is None
        assert all(f.track_id is None and f.smoothed_expression is None for f in answer.response)
        assert answer == await stub.run_pipeline(Request(image=image), timeout=10)


async def test_faces_keep_their_ids_through_a_crossing_and_the_summary_comes_last(
    stub: PipelineStub,
) -> None:
    tracking = Options(tracking=Tracking())
    frames = crossing()
    answers = await stream(stub, [Request(image=f, options=tracking) for f in frames])

    *per_frame, last = answers
    assert len(per_frame) == len(frames)
    ids: dict[str, set[int]] = {"red": set(), "blue": set()}
    for answer in per_frame:
        assert answer.summary is None
        assert answer.model is not None
        for face in answer.response:
            assert face.bbox is not None
            assert face.track_id is not None
            ids[who(face.bbox.x2 - face.bbox.x1)].add(face.track_id)
    assert ids == {"red": {1}, "blue": {2}}

    assert last.response == []
    assert last.model is None
    assert last.summary is not None
    assert last.summary.frames == len(frames)
    red, blue = last.summary.tracks
    assert (red.track_id, red.first_frame, red.last_frame, red.frames_seen) == (1, 0, 23, 24)
    assert red.first_seconds == 0
    assert red.last_seconds == pytest.approx(23 / 30)
    assert red.dominant == "neutral"
    assert blue.dominant == "neutral"
    assert red.mean_expression is not None
    assert red.mean_expression.happiness == pytest.approx(0.5, abs=0.01)


async def test_smoothed_expressions_follow_the_frames_time(stub: PipelineStub) -> None:
    # Red turns blue at 1 s: 1 s later the smoothed sadness is 1 - e^-1 of the way.
    colours = [RED] * 3 + [BLUE] * 2
    times = [0.0, 0.5, 1.0, 1.5, 2.0]
    requests = [
        Request(
            image=frame({"red": (100, 60)}, {"red": colour}),
            options=Options(tracking=Tracking(smoothing_seconds=1.0)),
            frame_time=time,
        )
        for colour, time in zip(colours, times, strict=True)
    ]
    *answers, last = await stream(stub, requests)

    faces = [answer.response[0] for answer in answers]
    assert {face.track_id for face in faces} == {1}
    raw = [face.expression.sadness for face in faces if face.expression]
    smoothed = [face.smoothed_expression.sadness for face in faces if face.smoothed_expression]
    assert raw == pytest.approx([0, 0, 0, 0.5, 0.5], abs=0.01)
    assert smoothed[:3] == pytest.approx([0, 0, 0], abs=0.01)
    assert smoothed[4] == pytest.approx(0.5 * (1 - math.exp(-1)), abs=0.01)
    assert last.summary is not None
    (track,) = last.summary.tracks
    assert (track.first_seconds, track.last_seconds) == (0.0, 2.0)
    # 1.5 s of red, then 1 s of blue (the last frame as long as the one before).
    assert track.mean_expression is not None
    assert track.mean_expression.sadness == pytest.approx(0.5 * 1.0 / 2.5, abs=0.01)


async def test_ids_are_per_call(stub: PipelineStub) -> None:
    tracking = Options(tracking=Tracking())
    image = frame({"red": (100, 60)}, {"red": RED})
    for _ in range(2):
        first, summary = await stream(stub, [Request(image=image, options=tracking)])
        assert first.response[0].track_id == 1
        assert summary.summary is not None


async def test_a_unary_call_ignores_tracking(stub: PipelineStub) -> None:
    image = frame({"red": (100, 60)}, {"red": RED})
    answer = await stub.run_pipeline(
        Request(image=image, options=Options(tracking=Tracking()), frame_time=1.0), timeout=10
    )
    assert answer == await stub.run_pipeline(Request(image=image), timeout=10)


@pytest.mark.parametrize(
    ("first", "later", "message"),
    [
        (
            Tracking(smoothing_seconds=-1),
            None,
            "image 0: request.options.tracking.smoothing_seconds is -1",
        ),
        (
            Tracking(frame_rate=math.nan),
            None,
            "image 0: request.options.tracking.frame_rate is nan",
        ),
        (Tracking(), 0.5, "image 1: request.frame_time is set, but the stream's first"),
    ],
)
async def test_unusable_tracking_options_are_refused(
    stub: PipelineStub, first: Tracking, later: float | None, message: str
) -> None:
    image = frame({"red": (100, 60)}, {"red": RED})
    requests = [
        Request(image=image, options=Options(tracking=first)),
        Request(image=image, options=Options(tracking=first), frame_time=later),
    ]
    with pytest.raises(GRPCError) as raised:
        await stream(stub, requests)
    assert raised.value.status is Status.INVALID_ARGUMENT
    assert raised.value.message is not None
    assert raised.value.message.startswith(message)


@pytest.mark.parametrize(
    ("times", "message"),
    [
        ([1.0, 2.0, 1.5], "image 2: request.frame_time is 1.5, before the previous image's 2"),
        ([1.0, None], "image 1: request.frame_time is unset, but the stream's first"),
        ([1.0, math.inf], "image 1: request.frame_time is inf"),
    ],
)
async def test_frame_times_that_go_back_or_stop_are_refused_after_the_earlier_answers(
    stub: PipelineStub, times: list[float | None], message: str
) -> None:
    image = frame({"red": (100, 60)}, {"red": RED})
    tracking = Options(tracking=Tracking())
    answers: list[Response] = []
    requests = [Request(image=image, options=tracking, frame_time=t) for t in times]
    with pytest.raises(GRPCError) as raised:
        await collect(stub.stream_pipeline(requests, timeout=30), answers)
    assert raised.value.status is Status.INVALID_ARGUMENT
    assert raised.value.message is not None
    assert raised.value.message.startswith(message)
    assert len(answers) == len(times) - 1
    assert all(answer.summary is None for answer in answers)
