"""A StreamPipeline call that survives its connection: cut, it goes on in a new call.

A server retiring a connection (GOAWAY, --max-connection-age), a worker that
dies, a restart or a drain ends the call under a stream. The stream then
opens a new call, sends again the images sent but not yet answered, and goes
on with the caller's next image: each answer is yielded once, in order, and
the caller's iterator is asked for each image once.

A tracked stream's tracks live in one call (emotion.proto, Options.tracking):
after a cut, the server starts them anew. The ids of each new call are
shifted past those already handed out, so an id never names two people, at
the cost of a new id for each person after the cut; the summary at the end
covers the frames of the last call, numbered from the stream's first.
"""

from __future__ import annotations

import asyncio
import collections
import re
from collections.abc import AsyncGenerator, AsyncIterable, Awaitable, Callable, Iterable
from typing import Any

from grpclib.client import Stream
from grpclib.const import Cardinality, Status
from grpclib.exceptions import GRPCError, StreamTerminatedError
from grpclib.metadata import Deadline

from emotion.client.balancing import Balancer
from emotion.client.retries import Retries, Tries
from emotion.contract import STREAM_PIPELINE_PATH, Options, Request, Response

_Call = Stream[Request, Response]
_IMAGE = re.compile(r"image (\d+): ")


class Feed:
    """The caller's images, each asked for once, whichever call ends up sending it.

    An image the iterator fails to give (or ``check`` refuses) ends the feed;
    the stream raises it once the images before it are answered.
    """

    def __init__(
        self,
        images: AsyncIterable[bytes] | Iterable[bytes],
        check: Callable[[bytes], Awaitable[None]],
    ) -> None:
        self._check = check
        self._sync = None if isinstance(images, AsyncIterable) else iter(images)
        self._async = aiter(images) if isinstance(images, AsyncIterable) else None
        # The async iterator's next image, being awaited: kept when a call is cut.
        self._next: asyncio.Future[bytes] | None = None
        self.ended = False
        self.failure: Exception | None = None

    async def pull(self) -> bytes | None:
        """The next image, or None once there are no more."""
        if self.ended:
            return None
        try:
            if self._async is None:
                assert self._sync is not None
                image = next(self._sync)
            else:
                if self._next is None:
                    self._next = asyncio.ensure_future(anext(self._async))
                # Shielded: cancelling the sender of a cut call must not
                # cancel (and so end) the caller's generator.
                image = await asyncio.shield(self._next)
                self._next = None
            await self._check(image)
        except (StopIteration, StopAsyncIteration):
            self.ended = True
            return None
        except Exception as exc:
            self._next = None
            self.failure = exc
            self.ended = True
            return None
        return image

    def close(self) -> None:
        if self._next is not None:
            self._next.cancel()


async def stream_pipeline(
    balancer: Balancer,
    retries: Retries | None,
    feed: Feed,
    deadline: Deadline | None,
    metadata: dict[str, str] | None,
    options: Options | None = None,
) -> AsyncGenerator[Response, None]:
    """Answers to the feed's images, in order, over as many calls as it takes.

    Without ``retries``, over one call. Every image is sent with ``options``.
    A stream that cannot go on (the deadline passed, the retries are spent)
    raises the last call's error, with a note of how many images were answered.
    """
    pending: collections.deque[bytes] = collections.deque()  # sent, not yet answered
    tries: Tries | None = None
    answered = 0
    highest_id = 0  # the highest track id handed out, for the next call's shift
    try:
        while True:
            if tries is not None and feed.ended and not pending:
                break  # cut after its last answer: nothing is left to send
            connection = await balancer.pick()
            call: _Call = connection.channel.request(
                STREAM_PIPELINE_PATH,
                Cardinality.STREAM_STREAM,
                Request,
                Response,
                deadline=deadline,
                metadata=metadata,
            )
            first = answered
            shift = highest_id
            delivering = False
            released = False
            try:
                async with call:
                    await call.send_request()
                    sender = asyncio.ensure_future(_send(call, pending, feed, options))
                    try:
                        while (response := await call.recv_message()) is not None:
                            if response.summary is not None:  # answers no image
                                _shifted_summary(response, shift, first)
                                delivering = True
                                yield response
                                delivering = False
                                continue
                            if not pending:
                                raise GRPCError(Status.INTERNAL, "an answer to no image")
                            pending.popleft()
                            answered += 1
                            highest_id = max(highest_id, _shifted(response, shift))
                            delivering = True
                            yield response
                            delivering = False
                        if pending:  # ended as if answered, but not
                            raise StreamTerminatedError(f"{len(pending)} images unanswered")
                    finally:
                        sender.cancel()
                        sender.add_done_callback(_retrieve)
            except Exception as exc:
                if delivering:
                    raise  # thrown in by the caller at an answer: not the call's
                balancer.release(connection, exc)
                released = True
                delay = None
                if retries is not None:
                    tries = tries or retries.tries(deadline)
                    if answered > first:
                        tries.progressed()
                    delay = tries.after(exc, call, elsewhere=balancer.elsewhere(connection))
                if delay is None:
                    final = _renumbered(exc, first)
                    final.add_note(
                        f"the stream answered {answered} images; "
                        f"{len(pending)} sent were not answered"
                    )
                    if final is exc:
                        raise
                    raise final from None
                await asyncio.sleep(delay)
            else:
                balancer.release(connection, None)
                released = True
                if retries is not None:
                    retries.succeeded()
                break
            finally:
                if not released:  # the caller stopped: no failure of the connection's
                    balancer.release(connection, None if delivering else asyncio.CancelledError())
    finally:
        feed.close()
    if feed.failure is not None:
        raise feed.failure


async def _send(
    call: _Call, pending: collections.deque[bytes], feed: Feed, options: Options | None
) -> None:
    """Send again what a cut call left unanswered, then the feed's next images."""
    for unanswered in list(pending):
        await call.send_message(Request(image=unanswered, options=options))
    while (image := await feed.pull()) is not None:
        pending.append(image)  # before sending: a cut mid-send leaves it to send again
        await call.send_message(Request(image=image, options=options))
    await call.end()


def _shifted(response: Response, shift: int) -> int:
    """Shift the answer's track ids by ``shift``; the highest id it then holds."""
    highest = 0
    for face in response.response:
        if face.track_id is not None:
            face.track_id += shift
            highest = max(highest, face.track_id)
    return highest


def _shifted_summary(response: Response, shift: int, first: int) -> None:
    assert response.summary is not None
    for track in response.summary.tracks:
        track.track_id += shift
        track.first_frame += first
        track.last_frame += first


def _renumbered(exc: Exception, first: int) -> Exception:
    """The server numbers a bad image from its call's first; number it from the stream's."""
    if not first or not isinstance(exc, GRPCError) or exc.message is None:
        return exc
    found = _IMAGE.match(exc.message)
    if found is None:
        return exc
    message = f"image {int(found.group(1)) + first}: {exc.message[found.end() :]}"
    return GRPCError(exc.status, message, exc.details)


def _retrieve(task: asyncio.Future[Any]) -> None:
    """Take a finished sender's error, if any: the answers' side reports the call's."""
    if not task.cancelled():
        task.exception()
