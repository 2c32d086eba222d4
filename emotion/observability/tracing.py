"""Tracing: what the server and the client need of it, and the no-op used when it is off.

OpenTelemetry is an optional extra (``emotion[otel]``). This module never
imports it: :mod:`.otel` keeps this interface with OpenTelemetry, and
:mod:`.environment` loads it only when the standard ``OTEL_*`` variables ask
for traces and what they need is installed, so a server without tracing pays
one no-op method call per step and imports nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import Executor, Future
from contextlib import AbstractContextManager, nullcontext
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from emotion.observability.propagation import trace_headers

if TYPE_CHECKING:
    from grpclib.const import Status
    from grpclib.server import Stream

T = TypeVar("T")

log = logging.getLogger(__name__)

#: Span names of the steps inside a call (docs/tracing.md).
QUEUE, DECODE, MODEL, BATCH, BATCH_RUN = (
    "emotion.queue",
    "emotion.decode",
    "emotion.model",
    "emotion.batch",
    "emotion.batch.run",
)


class ServerCall(Protocol):
    """A Pipeline call's span, current from its headers until :meth:`end`."""

    def end(self, status: Status, message: str | None) -> None: ...


class Tracer(Protocol):
    """What the server records of each call; :class:`NoTracing` or ``otel.OtelTracing``."""

    def server_call(self, path: str, stream: Stream[Any, Any], request_id: str) -> ServerCall:
        """Start the call's SERVER span, continuing the caller's trace, and make it current."""
        ...

    def span(self, name: str, *, errors: bool = True) -> AbstractContextManager[object]:
        """A child span of the current one; ``errors``: an exception marks it ERROR."""
        ...

    def client_call(self, path: str) -> AbstractContextManager[dict[str, str] | None]:
        """A CLIENT span for one outgoing call; gives the headers that carry its context.

        The span is never made current, so it is safe around an async generator.
        """
        ...

    def submit(self, executor: Executor, fn: Callable[..., T], *args: Any) -> Future[T]:
        """``executor.submit(fn, *args)``, timing the wait for a thread and carrying the context."""
        ...

    def record(
        self,
        name: str,
        start: int,
        end: int,
        failure: BaseException | None = None,
        *,
        errors: bool = True,
    ) -> None:
        """A child span of the current one that ran elsewhere, from ``start`` to ``end``.

        The times are ``time.time_ns()``, read by an inference process; a
        ``failure`` is recorded on the span, and ``errors`` makes it an ERROR.
        """
        ...

    def current(self) -> object:
        """The current span, to link a batch run to the calls it answers."""
        ...

    def batch_run(self, size: int, callers: list[object]) -> AbstractContextManager[object]:
        """A new trace for one batch run, linked to ``callers``' spans."""
        ...

    def flush(self, timeout: float) -> bool:
        """Export what is buffered, for at most ``timeout`` seconds; False if cut short.

        Blocks, so call it off the event loop.
        """
        ...

    def shutdown(self, timeout: float) -> bool:
        """:meth:`flush`, then record no more: for whoever made the tracer, at its end."""
        ...


class _NoSpan:
    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        return None

    def end(self, status: Status, message: str | None) -> None:
        pass


_NO_SPAN = _NoSpan()


class NoTracing:
    """Records nothing, so callers need no branch: each method returns at once."""

    def server_call(self, path: str, stream: Stream[Any, Any], request_id: str) -> ServerCall:
        return _NO_SPAN

    def span(self, name: str, *, errors: bool = True) -> AbstractContextManager[object]:
        return _NO_SPAN

    def client_call(self, path: str) -> AbstractContextManager[dict[str, str] | None]:
        # No span of our own, but the caller's trace (if any) still travels with the call.
        return nullcontext(trace_headers())

    def submit(self, executor: Executor, fn: Callable[..., T], *args: Any) -> Future[T]:
        return executor.submit(fn, *args)

    def record(
        self,
        name: str,
        start: int,
        end: int,
        failure: BaseException | None = None,
        *,
        errors: bool = True,
    ) -> None:
        pass

    def current(self) -> object:
        return None

    def batch_run(self, size: int, callers: list[object]) -> AbstractContextManager[object]:
        return _NO_SPAN

    def flush(self, timeout: float) -> bool:
        return True

    def shutdown(self, timeout: float) -> bool:
        return True
