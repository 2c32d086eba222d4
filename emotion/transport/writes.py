"""A connection's writes gathered into one send per pass of the event loop."""

from __future__ import annotations

import asyncio
from typing import Any


class CoalescingTransport:
    """asyncio's transport, except that writes made in one loop pass go out as one send.

    grpclib writes after every h2 operation, so an answer is three sends
    (headers, message, trailers), each a system call; with many calls in
    flight on one connection those calls cost the event loop more than h2
    itself. Here writes are gathered and sent when the loop's current pass
    ends: the same bytes, in the same order, one pass later.
    """

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []
        self._pending_size = 0

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            return
        if not self._pending:
            self._loop.call_soon(self.flush)
        self._pending.append(bytes(data))
        self._pending_size += len(data)

    def flush(self) -> None:
        """Hand what was written to asyncio's transport now."""
        if not self._pending:
            return
        data = self._pending[0] if len(self._pending) == 1 else b"".join(self._pending)
        self._pending.clear()
        self._pending_size = 0
        if not self._transport.is_closing():
            self._transport.write(data)

    def get_write_buffer_size(self) -> int:
        """Bytes written and not yet sent: gathered here or buffered by asyncio."""
        return self._pending_size + self._transport.get_write_buffer_size()

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def abort(self) -> None:
        self._pending.clear()
        self._pending_size = 0
        self._transport.abort()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def pause_reading(self) -> None:
        self._transport.pause_reading()

    def resume_reading(self) -> None:
        self._transport.resume_reading()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._transport.get_extra_info(name, default)
