"""grpclib's per-connection Handler, releasing what a call holds the moment its task ends.

grpclib runs each call in a task whose ``finally`` releases the stream: drops
its buffered body and gives its bytes back to the connection's flow-control
window. A stream the client resets is cancelled; when its task had not
started yet (Rapid Reset sends the reset in the same read as the headers),
asyncio never runs its body, so that ``finally`` never runs: the body stays
buffered as long as the connection lives, and the window it took is never
given back (after 4 MiB of such bodies, no call on the connection can send
one). grpclib also keeps finished tasks, and a closed connection's handler,
until a collection step every tenth call or connection.

:class:`CallHandler` releases the stream when the task ends, however it
ends (once: grpclib's release is not idempotent), forgets the task and the
error that cancelled it at once, and tells the server when a closed
connection's last task is done.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import grpclib.protocol
from grpclib.server import Handler

_Headers = list[tuple[str, str]]


class _Once:
    """Calls ``release`` the first time it is called, never again."""

    __slots__ = ("_release",)

    def __init__(self, release: Callable[[], Any]) -> None:
        self._release: Callable[[], Any] | None = release

    def __call__(self) -> None:
        release, self._release = self._release, None
        if release is not None:
            release()


def _forget_error(stream: grpclib.protocol.Stream) -> None:
    """Drop the error that ended the call, which its wrapper keeps in a reference cycle.

    A call that grpclib cancels (its connection lost, its stream reset, its
    deadline passed) ends with the error in ``Wrapper._error``; the error's
    traceback holds the frames it went through, grpclib's handler with the
    wrapper among its locals, and ours with the request. Nothing else refers
    to them, but only a full garbage collection (rare in a worker with many
    long-lived objects) would free them: each zero-window attack added its
    requests' images to the worker for good (tests/transport/test_memory.py).
    """
    wrapper = stream.wrapper
    if wrapper is not None:
        wrapper._error = None


class CallHandler(Handler):
    """grpclib's Handler for one connection; ``on_closed`` runs once it is closed and idle."""

    def __init__(self, *args: Any, on_closed: Callable[[CallHandler], None]) -> None:
        super().__init__(*args)
        self._on_closed = on_closed
        #: The loop's time when a call last ended on this connection (0: none yet).
        self.last_ended = 0.0

    def accept(
        self,
        stream: grpclib.protocol.Stream,
        headers: _Headers,
        release_stream: Callable[[], Any],
    ) -> None:
        release = _Once(release_stream)
        super().accept(stream, headers, release)
        task = self._tasks[stream]

        def ended(_: object) -> None:
            release()  # a no-op unless the task was cancelled before it started
            self.last_ended = asyncio.get_running_loop().time()
            _forget_error(stream)
            if self._tasks.get(stream) is task:
                del self._tasks[stream]
            self._cancelled.discard(task)
            self._closed_if_idle()

        task.add_done_callback(ended)

    def close(self) -> None:
        super().close()
        self._closed_if_idle()

    def _closed_if_idle(self) -> None:
        if self.closing and not self._tasks and not any(not t.done() for t in self._cancelled):
            self._cancelled.clear()
            # Soon, not now: grpclib's Server.close() calls close() while it
            # iterates over the handlers that on_closed removes from.
            self.loop.call_soon(self._on_closed, self)
