"""A measurement prototype, not a feature: emotion's network worker with inference in processes.

The layout issue 11 proposed beside threads: one network worker (grpclib,
HTTP/2, the contract) and ``--processes`` inference processes behind it, each
with the model loaded, fed the request's raw image bytes over a Unix socket
(a length prefix, then the bytes; the answer comes back written). No pickling,
no multiprocessing queue: the worker's event loop writes and reads sockets,
and its process holds the GIL only for HTTP/2 and gRPC.

Only what throughput needs is here: valid images, no deadlines, withdrawal,
errors or metrics. ``layouts.py`` runs it against ``emotion serve`` to say
what the layout would win before anyone builds it properly.

    python benchmarks/pool_prototype.py --port 50060 --processes 2
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import socket
import struct
import subprocess
import sys

from emotion import service
from emotion.codec import Encoded
from emotion.config.server import ServerConfig
from emotion.contract import Request, Response
from emotion.decode import decode, to_full_size
from emotion.model import encode_response, load_model, run_sample
from emotion.server import serve

_LENGTH = struct.Struct("!I")


def child(fd: int, spec: str) -> None:
    """An inference process: read an image, answer with the written Response, until EOF."""
    model = load_model(spec)
    model.load()
    with socket.socket(fileno=fd) as sock, sock.makefile("rb", buffering=1 << 20) as incoming:
        while len(head := incoming.read(_LENGTH.size)) == _LENGTH.size:
            (size,) = _LENGTH.unpack(head)
            decoded = decode(incoming.read(size), min_size=model.min_size)
            response = run_sample(model, decoded.image)
            to_full_size(response, decoded)
            written = encode_response(response, model)
            sock.sendall(_LENGTH.pack(len(written)) + written)


class _Child:
    """One inference process: images go out in order, answers come back in the same order."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writer = writer
        self._waiting: collections.deque[asyncio.Future[bytes]] = collections.deque()
        self._reading = asyncio.ensure_future(self._read(reader))

    def send(self, image: bytes) -> asyncio.Future[bytes]:
        answer = asyncio.get_running_loop().create_future()
        self._waiting.append(answer)
        self._writer.write(_LENGTH.pack(len(image)))
        self._writer.write(image)
        return answer

    async def _read(self, reader: asyncio.StreamReader) -> None:
        while True:
            (size,) = _LENGTH.unpack(await reader.readexactly(_LENGTH.size))
            self._waiting.popleft().set_result(await reader.readexactly(size))


class Pool:
    """Inference processes, each sent up to ``depth`` images at once so none waits for the next."""

    def __init__(self, spec: str, processes: int, depth: int) -> None:
        self._sockets: list[socket.socket] = []
        self._children: list[subprocess.Popen[bytes]] = []
        self._depth = depth
        for _ in range(processes):
            ours, theirs = socket.socketpair()
            self._children.append(
                subprocess.Popen(
                    [sys.executable, __file__, "--child", str(theirs.fileno()), "--model", spec],
                    pass_fds=[theirs.fileno()],
                )
            )
            theirs.close()
            self._sockets.append(ours)
        # A child appears here once per image it may still be sent.
        self._free: asyncio.Queue[_Child] = asyncio.Queue()

    async def open(self) -> None:
        for sock in self._sockets:
            child = _Child(*await asyncio.open_connection(sock=sock, limit=1 << 24))
            for _ in range(self._depth):
                self._free.put_nowait(child)

    async def infer(self, image: bytes) -> bytes:
        child = await self._free.get()
        try:
            return await child.send(image)
        finally:
            self._free.put_nowait(child)


async def main(args: argparse.Namespace) -> None:
    pool = Pool(args.model, args.processes, args.depth)
    await pool.open()

    async def answer_image(
        self: service.PipelineService, message: Request, deadline: object
    ) -> service._Answer:
        return service._Answer(Response(), Encoded(await pool.infer(message.image)))

    # The prototype's one shortcut: the unary path's inference step, replaced in this process.
    service.PipelineService._answer_image = answer_image  # type: ignore[method-assign]
    config = ServerConfig(host="127.0.0.1", port=args.port, threads=1)
    await serve(load_model(args.model), config)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--depth", type=int, default=3, help="images sent to a process at once")
    parser.add_argument("--model", default="emotion.models.mock:MockModel")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.child is not None:
        child(arguments.child, arguments.model)
    else:
        asyncio.run(main(arguments))
