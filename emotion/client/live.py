"""A webcam session's tracked stream: one StreamPipeline call that lives across the page's frames.

The demo page hands its handler one webcam frame at a time (Gradio drops
those that come while one is being answered). Sent as separate calls, the
frames would know nothing of each other; sent down one tracked stream, the
server follows each face from frame to frame (emotion.proto, Options.tracking).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator
from typing import cast

from emotion.client.client import Client
from emotion.contract import Options, Response, Tracking

#: How long one webcam stream may last: the page's session, in practice. Each
#: frame has the page's own timeout besides.
STREAM_SECONDS = 24 * 3600.0


class LiveStream:
    """Frames in one at a time, each answer out with its faces' track ids and smoothed expressions.

    Opened on the first frame. A frame that fails (the server went away, or
    answered too late) ends the call; the next frame opens a new one, with
    new tracks. The page asks for a frame every ``1 / frame_rate`` seconds
    and sends no frame times, so that rate is the stream's clock.
    """

    def __init__(self, frame_rate: float = 10.0) -> None:
        self.frame_rate = frame_rate
        self.last: Response | None = None
        self._frames: asyncio.Queue[bytes] | None = None
        self._answers: AsyncGenerator[Response, None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def answer(self, client: Client, frame: bytes, timeout: float) -> Response:
        """The answer to ``frame``, sent down the session's stream."""
        if self._answers is None or self._frames is None:
            self._frames = asyncio.Queue()
            options = Options(tracking=Tracking(frame_rate=self.frame_rate))
            answers = client.stream(_feed(self._frames), options=options, timeout=STREAM_SECONDS)
            self._answers = cast(AsyncGenerator[Response, None], answers)
            self._loop = asyncio.get_running_loop()
        self._frames.put_nowait(frame)
        try:
            self.last = await asyncio.wait_for(anext(self._answers), timeout)
        except BaseException:
            await self.aclose()
            raise
        return self.last

    async def aclose(self) -> None:
        """End the call, if one is open."""
        answers, self._answers, self._frames = self._answers, None, None
        if answers is not None:
            await answers.aclose()

    def close_soon(self) -> None:
        """End the call from any thread: Gradio calls this when the session ends."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            asyncio.run_coroutine_threadsafe(self.aclose(), loop)


async def _feed(frames: asyncio.Queue[bytes]) -> AsyncIterator[bytes]:
    while True:
        yield await frames.get()
