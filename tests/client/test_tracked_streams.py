"""emotion.Client on a tracked stream: the summary is no answer, and ids stay unique across cuts."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator

from conftest import StartServer
from PIL import Image, ImageDraw
from support.sample_models import SquaresModel

from emotion import Client, Options, Response, Tracking
from emotion.config import ConnectionAge


def square(x: int) -> bytes:
    image = Image.new("RGB", (300, 100))
    ImageDraw.Draw(image).rectangle((x, 20, x + 39, 59), fill=(255, 0, 0))
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


async def slowly(images: list[bytes], every: float) -> AsyncIterator[bytes]:
    for image in images:
        yield image
        await asyncio.sleep(every)


def ids(answers: list[Response]) -> list[int]:
    """Each face's track id; 0 for a face without one."""
    return [face.track_id or 0 for answer in answers for face in answer.response]


async def test_the_summary_comes_after_every_answer(start_server: StartServer) -> None:
    server = await start_server(SquaresModel())
    images = [square(10 + 5 * i) for i in range(6)]

    async with Client(f"127.0.0.1:{server.port}", timeout=30) as client:
        answers = [a async for a in client.stream(images, options=Options(tracking=Tracking()))]
        untracked = [a async for a in client.stream(images)]

    *per_frame, last = answers
    assert ids(per_frame) == [1] * 6
    assert last.summary is not None
    assert [t.track_id for t in last.summary.tracks] == [1]
    assert len(untracked) == 6
    assert all(a.summary is None for a in untracked)


async def test_after_a_cut_the_ids_go_on_past_those_handed_out(start_server: StartServer) -> None:
    # Connections live 1 s and the stream takes 2.5 s: it is cut, and resumed.
    server = await start_server(SquaresModel(), max_connection_age=ConnectionAge(1.0, grace=5))
    images = [square(10 + 5 * i) for i in range(25)]

    async with Client(f"127.0.0.1:{server.port}", timeout=30) as client:
        options = Options(tracking=Tracking())
        answers = [a async for a in client.stream(slowly(images, 0.1), options=options)]

    *per_frame, last = answers
    seen = ids(per_frame)
    assert len(seen) == 25
    assert server.connections_accepted >= 2
    # One person, a new id per call; ids only grow, so none names two people.
    assert seen[0] == 1
    assert seen == sorted(seen)
    assert len(set(seen)) >= 2
    assert last.summary is not None
    (track,) = last.summary.tracks
    assert track.track_id == seen[-1]
    assert track.first_frame == seen.index(seen[-1])
    assert track.last_frame == 24
