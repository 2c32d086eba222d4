"""A network worker's connection to one inference process, and the calls whose images it holds.

The wire is emotion.inference.process_main's: a process that takes the
connection says READY and describes its model; each image goes as one write
(a fixed head, the request's options, the image's bytes), and answers come
back in the order the images went.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import socket
import struct

from emotion.codec import InvalidMessage, parse
from emotion.contract import ModelDescription
from emotion.inference.process_main import ANSWER, READY, REQUEST, STEPS, Status, Steps
from emotion.inference.threads import Aborted

#: Bytes an answer may have: a Response is far smaller than any image.
_READ_LIMIT = 2**24
_PEER = struct.Struct("3i")  # struct ucred: pid, uid, gid


#: A process's answer: its status, the written Response or message, and when its steps ran.
Answer = tuple[Status, bytes, Steps]


class ProcessExited(Exception):
    """The inference process holding the call's image exited; the call may be retried."""

    def __init__(self) -> None:
        super().__init__("the inference process running this call exited; retry")


class Unreachable(Exception):
    """No inference process listens at a path the worker was given."""


class ProcessConnection:
    """This worker's connection to one inference process, and the calls whose images it holds."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        description: ModelDescription,
    ) -> None:
        self._reader = reader
        self._writer = writer
        #: What the process said of its model when it took this connection.
        self.description = description
        sock = writer.get_extra_info("socket")
        self.pid: int = _PEER.unpack(
            sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEER.size)
        )[0]
        self.alive = True
        #: Images taken for this process and not yet answered (or given back).
        self.load = 0
        self._held: collections.deque[asyncio.Future[Answer]] = collections.deque()

    @classmethod
    async def connect(cls, path: str) -> ProcessConnection:
        try:
            reader, writer = await asyncio.open_unix_connection(path, limit=_READ_LIMIT)
        except OSError as exc:  # no file yet, or nobody listening: it is starting
            raise Unreachable(f"no inference process at {path}: {exc.strerror}") from None
        # A process that is exiting may still accept a connection, and never
        # answers on it: only one that says READY takes images.
        description = None
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError, InvalidMessage):
            status, size = ANSWER.unpack(await reader.readexactly(ANSWER.size))
            if status == READY:
                description = parse(ModelDescription, await reader.readexactly(size))
        if description is None:
            writer.close()
            raise Unreachable(f"the inference process at {path} is exiting")
        return cls(reader, writer, description)

    def send(
        self, image: bytes, deadline: float | None, options: bytes = b""
    ) -> asyncio.Future[Answer]:
        answer: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        self._held.append(answer)
        # One write: the head alone would wake the process for 16 bytes, then
        # again for the image (8% more calls/s with the medium JPEG).
        head = REQUEST.pack(deadline or 0.0, len(options), len(image))
        self._writer.write(head + options + image if options else head + image)
        return answer

    async def answer_all(self) -> None:
        """Hand each answer to its call until the process exits; then fail the calls it held."""
        try:
            while True:
                answer = await self._read()
                held = self._held.popleft()
                if not held.done():  # its caller left, or the server aborted it
                    held.set_result(answer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.alive = False
            while self._held:
                held = self._held.popleft()
                if not held.done():
                    held.set_exception(ProcessExited())

    def abort(self) -> None:
        for held in self._held:
            if not held.done():
                held.set_exception(Aborted())

    async def close(self) -> None:
        self._writer.close()
        with contextlib.suppress(ConnectionError):
            await self._writer.wait_closed()

    async def _read(self) -> Answer:
        head = await self._reader.readexactly(ANSWER.size + STEPS.size)
        status, size = ANSWER.unpack_from(head)
        steps = Steps._make(STEPS.unpack_from(head, ANSWER.size))
        return Status(status), await self._reader.readexactly(size), steps
