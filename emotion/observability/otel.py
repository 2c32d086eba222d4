"""The OpenTelemetry side of :mod:`.tracing`; imported only when tracing is used.

Spans follow the RPC semantic conventions (``rpc.system``, ``rpc.service``,
``rpc.method``, ``rpc.grpc.status_code``), and the W3C TraceContext headers
carry a trace across calls. The SDK is imported only to build a tracer from
the environment: a client that merely propagates needs the API alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import os
import sys
import threading
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Executor, Future
from typing import TYPE_CHECKING, Any, TextIO, TypeVar

from grpclib.const import Status
from grpclib.exceptions import GRPCError
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Link, Span, SpanKind, StatusCode, TracerProvider
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from emotion.observability.tracing import BATCH_RUN, QUEUE, Tracer

if TYPE_CHECKING:
    from grpclib.server import Stream
    from opentelemetry.sdk.trace import SpanProcessor

T = TypeVar("T")

log = logging.getLogger(__name__)

_PROPAGATOR = TraceContextTextMapPropagator()
_SCOPE = "emotion"

#: Statuses that are the server's fault: the span is an ERROR (RPC semantic conventions).
SERVER_FAULTS = frozenset(
    {
        Status.UNKNOWN,
        Status.DEADLINE_EXCEEDED,
        Status.UNIMPLEMENTED,
        Status.INTERNAL,
        Status.UNAVAILABLE,
        Status.DATA_LOSS,
    }
)


def _rpc_attributes(path: str) -> dict[str, str]:
    service, _, method = path.lstrip("/").partition("/")
    return {"rpc.system": "grpc", "rpc.service": service, "rpc.method": method}


class _ServerCall:
    def __init__(self, span: Span, token: object) -> None:
        self._span = span
        self._token = token

    def end(self, status: Status, message: str | None) -> None:
        otel_context.detach(self._token)  # type: ignore[arg-type]
        self._span.set_attribute("rpc.grpc.status_code", status.value)
        if status in SERVER_FAULTS:
            self._span.set_status(StatusCode.ERROR, message)
        self._span.end()


class OtelTracing:
    """Spans from ``provider``; :meth:`shutdown` exports what it still holds."""

    def __init__(self, provider: TracerProvider) -> None:
        self._provider = provider
        self._tracer = provider.get_tracer(_SCOPE)

    @property
    def provider(self) -> TracerProvider:
        return self._provider

    def server_call(self, path: str, stream: Stream[Any, Any], request_id: str) -> _ServerCall:
        parent = _PROPAGATOR.extract(stream.metadata) if stream.metadata else None
        attributes: dict[str, str | int] = {
            **_rpc_attributes(path),
            "emotion.request_id": request_id,
        }
        peer = stream.peer.addr()
        if peer is not None:
            attributes["client.address"] = str(peer[0])
            attributes["client.port"] = int(peer[1])
        span = self._tracer.start_span(
            path.lstrip("/"), parent, kind=SpanKind.SERVER, attributes=attributes
        )
        token = otel_context.attach(trace.set_span_in_context(span, parent))
        return _ServerCall(span, token)

    def span(self, name: str, *, errors: bool = True) -> contextlib.AbstractContextManager[object]:
        return self._tracer.start_as_current_span(name, set_status_on_exception=errors)

    @contextlib.contextmanager
    def client_call(self, path: str) -> Iterator[dict[str, str] | None]:
        span = self._tracer.start_span(
            path.lstrip("/"), kind=SpanKind.CLIENT, attributes=_rpc_attributes(path)
        )
        headers: dict[str, str] = {}
        _PROPAGATOR.inject(headers, trace.set_span_in_context(span))
        status = Status.OK
        try:
            yield headers
        except GRPCError as exc:
            status = exc.status
            span.set_status(StatusCode.ERROR, exc.message)
            raise
        except (asyncio.CancelledError, GeneratorExit):  # the caller left: not a failure
            status = Status.CANCELLED
            raise
        except BaseException as exc:
            status = Status.UNKNOWN
            span.record_exception(exc)
            span.set_status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}")
            raise
        finally:
            span.set_attribute("rpc.grpc.status_code", status.value)
            span.end()

    def submit(self, executor: Executor, fn: Callable[..., T], *args: Any) -> Future[T]:
        # contextvars do not follow a job into its thread: run it in a copy,
        # so the decode and model spans are children of the call's span.
        waiting = self._tracer.start_span(QUEUE)
        job = executor.submit(contextvars.copy_context().run, _started, waiting, fn, *args)
        job.add_done_callback(lambda _: _end(waiting))  # a job withdrawn before it ran
        return job

    def record(
        self,
        name: str,
        start: int,
        end: int,
        failure: BaseException | None = None,
        *,
        errors: bool = True,
    ) -> None:
        span = self._tracer.start_span(name, start_time=start)
        if failure is not None:
            span.record_exception(failure)
            if errors:  # as start_as_current_span words it, for the same trace from threads
                span.set_status(StatusCode.ERROR, f"{type(failure).__name__}: {failure}")
        span.end(end_time=end)

    def current(self) -> object:
        return trace.get_current_span()

    def batch_run(
        self, size: int, callers: list[object]
    ) -> contextlib.AbstractContextManager[object]:
        links = [
            Link(caller.get_span_context())
            for caller in callers
            if isinstance(caller, Span) and caller.get_span_context().is_valid
        ]
        return self._tracer.start_as_current_span(
            BATCH_RUN, Context(), links=links, attributes={"emotion.batch_size": size}
        )

    def flush(self, timeout: float) -> bool:
        force_flush = getattr(self._provider, "force_flush", None)
        if force_flush is None:  # the API's own provider: nothing buffered
            return True
        return _within(force_flush, timeout)

    def shutdown(self, timeout: float) -> bool:
        shutdown = getattr(self._provider, "shutdown", None)
        if shutdown is None:
            return True
        return _within(shutdown, timeout)


def _within(step: Callable[[], object], timeout: float) -> bool:
    """Run ``step`` for at most ``timeout`` seconds; False if it was still going.

    The SDK waits as long as the exporter retries (seconds with a collector
    down); a daemon thread lets the process exit anyway.
    """
    running = threading.Thread(target=step, name="emotion-spans", daemon=True)
    running.start()
    running.join(timeout)
    return not running.is_alive()


def _started(waiting: Span, fn: Callable[..., T], *args: Any) -> T:
    waiting.end()
    return fn(*args)


def _end(span: Span) -> None:
    if span.is_recording():
        span.end()


def from_environment(environ: Mapping[str, str], console: TextIO | None = None) -> OtelTracing:
    """A tracer exporting as ``OTEL_TRACES_EXPORTER`` says, with the pid as a resource attribute.

    ``console`` is where the ``console`` exporter writes: stdout, unless the
    command prints its own output there. The exporters run on the SDK's batch
    thread, so an unreachable collector
    costs the server nothing but the spans it drops. The OTLP exporter and
    the sampler read their own ``OTEL_*`` variables from the process environment.
    """
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider as SdkTracerProvider

    resource = Resource.create({"process.pid": os.getpid()})
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: "emotion"}))
    provider = SdkTracerProvider(resource=resource)
    for name in environ.get("OTEL_TRACES_EXPORTER", "").split(","):
        processor = _processor(name.strip().lower(), console or sys.stdout)
        if processor is not None:
            provider.add_span_processor(processor)
    return OtelTracing(provider)


def _processor(name: str, console: TextIO) -> SpanProcessor | None:
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

    if name in {"", "none"}:
        return None
    if name == "console":
        return BatchSpanProcessor(ConsoleSpanExporter(out=console))
    if name == "otlp":
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        except ImportError:
            log.warning(
                "OTEL_TRACES_EXPORTER=otlp needs the OTLP exporter: pip install 'emotion[otel]'"
            )
            return None
        return BatchSpanProcessor(OTLPSpanExporter())
    log.warning("unknown trace exporter %r in OTEL_TRACES_EXPORTER (otlp, console, none)", name)
    return None


if TYPE_CHECKING:  # check it keeps the protocol the server and client call
    _CONFORMS: type[Tracer] = OtelTracing
