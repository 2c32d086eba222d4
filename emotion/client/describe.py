"""The largest image a client sends: the caller's limit, or what the server says it takes.

A server states its limits in Describe. Asking costs a round trip, so a
client asks only when it must: the first time an image is larger than what
every server takes by default, once per connection. Until then, and for a
server older than Describe (UNIMPLEMENTED), the default holds, as it always
did. Once the client has the server's answer (asked for here, or by the
caller with ``Client.describe()``), every image is checked against it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from grpclib.const import Status
from grpclib.exceptions import GRPCError

from emotion.config import DEFAULT_MAX_IMAGE_SIZE
from emotion.contract import DescribeResponse

#: The bytes of a request message besides the image: its tag and length, and
#: options at their longest (both set, max_faces at its largest).
AROUND_THE_IMAGE = 32


class ImageLimit:
    """The largest image to send: ``given`` by the caller, else the server's once known."""

    def __init__(self, given: int | None) -> None:
        self.given = given
        #: The largest image the server takes, from its Describe; None until asked.
        self.learnt: int | None = None
        #: Asked, and the server is older than Describe: the default holds for good.
        self._unsaid = False
        self._asking = asyncio.Lock()

    @property
    def size(self) -> int:
        """The limit that holds now."""
        if self.given is not None:
            return self.given
        return DEFAULT_MAX_IMAGE_SIZE if self.learnt is None else self.learnt

    def learn(self, answer: DescribeResponse) -> None:
        """Keep the server's limit from its Describe ``answer``."""
        if answer.limits is not None and answer.limits.max_message_size:
            self.learnt = max(0, answer.limits.max_message_size - AROUND_THE_IMAGE)

    async def check(
        self, image: bytes, describe: Callable[[], Awaitable[DescribeResponse]]
    ) -> None:
        """Raise ValueError for an image the server would refuse after its upload.

        ``describe`` asks the server (and makes this learn the answer); it is
        called only for an image over the default while the server's limit is
        unknown, and once however many calls wait for it.
        """
        if self._unknown() and len(image) > DEFAULT_MAX_IMAGE_SIZE:
            async with self._asking:
                if self._unknown():
                    await self._ask(describe)
        if len(image) > self.size:
            raise ValueError(self._refusal(len(image)))

    def _unknown(self) -> bool:
        return self.given is None and self.learnt is None and not self._unsaid

    async def _ask(self, describe: Callable[[], Awaitable[DescribeResponse]]) -> None:
        try:
            await describe()
        except GRPCError as exc:
            if exc.status is Status.UNIMPLEMENTED:  # older than Describe: the default it is
                self._unsaid = True
            # Otherwise (unavailable, refused) the default holds for this image,
            # and the next large one asks again.

    def _refusal(self, length: int) -> str:
        if self.given is not None:
            return (
                f"image is {length} bytes; this client sends at most {self.given} "
                f"(a server takes {DEFAULT_MAX_IMAGE_SIZE} by default: to send more, raise "
                "the server's --max-message-size and this limit together)"
            )
        if self.learnt is not None:
            return (
                f"image is {length} bytes; the server takes at most {self.learnt} "
                "(its --max-message-size, less the message around the image)"
            )
        return (
            f"image is {length} bytes; a server takes {DEFAULT_MAX_IMAGE_SIZE} by default, "
            "and this one did not say it takes more"
        )
