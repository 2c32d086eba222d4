"""The gRPC server process: Pipeline, health and reflection on one port, with a graceful drain."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from google.protobuf.descriptor_pb2 import FileDescriptorProto
from google.protobuf.descriptor_pool import DescriptorPool
from grpclib.health.check import ServiceStatus
from grpclib.health.service import Health
from grpclib.health.v1 import health_pb2
from grpclib.reflection.service import ServerReflection

from emotion.config import ServerConfig
from emotion.contract import FILE_DESCRIPTOR
from emotion.inference.backend import Backend
from emotion.inference.process_client import DEPTH as PROCESS_DEPTH
from emotion.inference.process_client import InferenceProcesses
from emotion.inference.thread_backend import ThreadBackend
from emotion.model import Model
from emotion.observability.environment import tracing_from_environment
from emotion.observability.metrics import Metrics, NoMetrics, serve_metrics
from emotion.observability.tracing import NoTracing, Tracer
from emotion.runtime import apply_process_settings, available_cpus
from emotion.serving.admission import Admission, State
from emotion.serving.calls import Calls
from emotion.serving.credentials import Credentials
from emotion.serving.description import server_limits
from emotion.serving.service import PipelineService
from emotion.serving.sockets import bound_socket, format_address
from emotion.serving.wiring import Wiring
from emotion.transport.server import GrpcServer

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

log = logging.getLogger(__name__)

# Between the last answer of a drain and closing connections: lets clients read
# those answers (grpclib's client fails a call whose trailers arrive in the same
# read as the GOAWAY) and lets health Watch streams deliver NOT_SERVING.
_CLOSE_LINGER = 0.1
# After aborting, how long answered calls get to write their UNAVAILABLE.
_ABORT_WAIT = 1.0
# At stop, how long the spans still buffered get to reach the collector.
_FLUSH_WAIT = 5.0


class ModelStartError(Exception):
    """The model's load() failed; the server cannot serve."""


class Server:
    """One listening socket serving Pipeline, grpc.health.v1 and reflection.

    The socket opens before the model loads, so health checks answer
    NOT_SERVING during a slow load instead of refusing connections.
    """

    def __init__(
        self,
        model: Model,
        config: ServerConfig | None = None,
        *,
        tracing: Tracer | None = None,
        wiring: Wiring | None = None,
    ) -> None:
        self.model = model
        self.config = config or ServerConfig()
        self.tracing = tracing or NoTracing()
        self.wiring = wiring or Wiring()
        if self.wiring.inference_sockets and self.config.max_batch_size > 1:
            raise ValueError(
                "inference processes cannot be combined with max_batch_size > 1 "
                "(--max-batch-size): batches run in the worker's threads"
            )
        threads = self.config.threads or available_cpus()
        self._health = ServiceStatus()
        self._health.set(False)
        self.metrics: Metrics | None = None
        if self.config.metrics_port is not None or self.wiring.record_metrics:
            self.metrics = Metrics()
        recorder = self.metrics or NoMetrics()
        self._metrics_server: WSGIServer | None = None
        # Calls in progress and images in the queue share one bound: the places
        # of the threads or processes, and as many again as the queue may hold.
        # Inference processes, when there are any, belong to the supervisor's
        # pool (emotion.inference.process_pool), which every worker shares.
        sockets = self.wiring.inference_sockets
        places = len(sockets) * PROCESS_DEPTH or threads
        capacity = places + self.config.limits.max_queue
        self.backend: Backend
        if sockets:
            self.backend = InferenceProcesses(
                sockets, capacity=capacity, metrics=recorder, tracing=self.tracing
            )
        else:
            self.backend = ThreadBackend(
                model,
                threads=threads,
                capacity=capacity,
                max_pixels=self.config.limits.max_pixels,
                max_batch_size=self.config.max_batch_size,
                max_batch_delay=self.config.max_batch_delay,
                metrics=recorder,
                tracing=self.tracing,
            )
        self.credentials = Credentials(self.config)
        self.admission = Admission(capacity=capacity, tokens=self.credentials.tokens)
        self.calls = Calls(recorder, self.tracing)
        self.service = PipelineService(
            self.backend,
            admission=self.admission,
            calls=self.calls,
            limits=self.config.limits,
            window=max(2, threads),
            server_limits=server_limits(self.config),
        )
        self._grpc: GrpcServer | None = None
        self._port: int | None = None
        self._loaded: asyncio.Future[None] | None = None
        self._grace_over = asyncio.Event()

    @property
    def port(self) -> int:
        """The bound port: the real one when the config asked for port 0."""
        if self._port is None:
            raise RuntimeError("server is not started")
        return self._port

    @property
    def metrics_port(self) -> int | None:
        """Where /metrics is served, if this server serves it."""
        if self._metrics_server is None:
            return None
        return int(self._metrics_server.server_port)

    async def start(self) -> None:
        """Listen, then load the model in the background (see :meth:`wait_loaded`)."""
        apply_process_settings(max_pixels=self.config.limits.max_pixels)
        tls = self.credentials.tls()
        services = ServerReflection.extend(
            [self.service, Health({self.service: [self._health]})],
            pool=_reflection_pool(),
        )
        self._grpc = GrpcServer(
            services,
            connection_age=self.config.max_connection_age,
            limits=self.config.connections,
            on_cap=(self.metrics or NoMetrics()).connection_at_cap,
        )
        listener = bound_socket(
            self.config.host, self.config.port, reuse_port=self.wiring.reuse_port
        )
        listener.listen(1024)
        self._port = int(listener.getsockname()[1])
        await self._grpc.start(sock=listener, ssl=tls)
        if self.metrics is not None and self.config.metrics_port is not None:
            self._metrics_server = serve_metrics(
                self.config.host, self.config.metrics_port, self.metrics.registry
            )
            log.info(
                "metrics on http://%s/metrics",
                format_address(self.config.host, self.metrics_port or 0),
            )
        log.info(
            "listening on %s, loading model %s",
            format_address(self.config.host, self.port),
            self.model.name,
        )
        self._loaded = asyncio.ensure_future(self._load())

    async def _load(self) -> None:
        started = time.perf_counter()
        try:
            # Processes hold the model already (whoever owns them fails the
            # start if one cannot load): this waits until they answer.
            await self.backend.start()
        except Exception as exc:
            log.error("model %s failed to load", self.model.name, exc_info=exc)
            raise ModelStartError(
                f"model {self.model.name} failed to load: {type(exc).__name__}: {exc}"
            ) from exc
        if self.metrics is not None:
            self.metrics.model_load_seconds.set(time.perf_counter() - started)
        if self.admission.state is State.LOADING:
            self.admission.start_serving()
            self._health.set(True)
        log.info(
            "model %s loaded in %.2fs; serving",
            self.model.name,
            time.perf_counter() - started,
        )

    async def wait_loaded(self) -> None:
        """Return once the model serves; raise ModelStartError if its load() failed."""
        if self._loaded is None:
            raise RuntimeError("server is not started")
        await asyncio.shield(self._loaded)

    async def stop(self, grace: float | None = None) -> None:
        """Drain: refuse new calls, let running ones finish within ``grace`` seconds, close."""
        if self._grpc is None:
            return
        grace = self.config.grace if grace is None else grace
        self.admission.start_draining()
        self.service.stop_taking_images()
        self._health.set(False)
        self._grpc.stop_listening()
        if self.calls.active:
            log.info(
                "draining %d in-flight call(s), up to %.1fs",
                self.calls.active,
                grace,
            )
            idle = asyncio.ensure_future(self.calls.wait_idle())
            cut_short = asyncio.ensure_future(self._grace_over.wait())
            await asyncio.wait(
                {idle, cut_short}, timeout=grace, return_when=asyncio.FIRST_COMPLETED
            )
            idle.cancel()
            cut_short.cancel()
            if self.calls.active:
                log.warning("aborting %d call(s) still running", self.calls.active)
                self.backend.abort()
                # Calls waiting on their client (a body that never comes) do
                # not see the abort; closing the server below cancels them.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.calls.wait_idle(), _ABORT_WAIT)
        await asyncio.sleep(_CLOSE_LINGER)
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
            self._metrics_server.server_close()
            self._metrics_server = None
        self._grpc.close()
        self._grpc.close_connections()
        await self._grpc.wait_closed()
        self._grpc = None
        if self._loaded is not None and not self._loaded.done():
            self._loaded.cancel()
        await self.backend.close()
        # Spans still buffered, within a bound: a collector that is down must not
        # hold up the exit. The tracer is the caller's: flushed, not shut down.
        if not await asyncio.to_thread(self.tracing.flush, _FLUSH_WAIT):
            log.warning("spans not exported within %.0fs; dropping them", _FLUSH_WAIT)

    @property
    def connections_accepted(self) -> int:
        """Client connections accepted since the start."""
        return 0 if self._grpc is None else self._grpc.connections_accepted

    def accepted_sockets(self) -> list[socket.socket]:
        """The sockets of the open client connections (for inspection and tests)."""
        return [] if self._grpc is None else self._grpc.accepted_sockets()

    def reload(self) -> None:
        """Read the TLS and token files again, as on SIGHUP: see :class:`Credentials`."""
        self.credentials.reload()

    def end_grace(self) -> None:
        """Cut a running :meth:`stop` short: cancel in-flight calls now."""
        self._grace_over.set()


async def serve(
    model: Model,
    config: ServerConfig,
    *,
    signals: tuple[signal.Signals, ...] = (signal.SIGTERM, signal.SIGINT),
    reload_signals: tuple[signal.Signals, ...] = (signal.SIGHUP,),
    on_serving: Callable[[int], None] | None = None,
    tracing: Tracer | None = None,
    wiring: Wiring | None = None,
) -> None:
    """Run a server until one of ``signals``, then drain and return.

    A second signal during the drain cancels the remaining calls at once.
    ``reload_signals`` make it read its TLS and token files again.
    ``on_serving`` is called with the bound port once the model has loaded.
    ``tracing`` defaults to what the ``OTEL_*`` variables ask for (each
    ``--workers`` process builds its own). Raises ModelStartError when the
    model cannot load.
    """
    own_tracing = tracing is None
    tracing = tracing or tracing_from_environment()
    server = Server(model, config, tracing=tracing, wiring=wiring)
    loop = asyncio.get_running_loop()
    stop_requested = asyncio.Event()

    def on_signal(signum: int) -> None:
        name = signal.Signals(signum).name
        if stop_requested.is_set():
            log.warning("received %s again; cancelling in-flight calls", name)
            server.end_grace()
        else:
            log.info("received %s; draining", name)
            stop_requested.set()

    def on_reload(signum: int) -> None:
        log.info("received %s; reading the TLS and token files again", signal.Signals(signum).name)
        server.reload()

    for signum in signals:
        loop.add_signal_handler(signum, on_signal, signum)
    for signum in reload_signals:
        loop.add_signal_handler(signum, on_reload, signum)
    try:
        await server.start()
        loaded = asyncio.ensure_future(server.wait_loaded())
        stopping = asyncio.ensure_future(stop_requested.wait())
        await asyncio.wait({loaded, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if loaded.done() and loaded.exception() is not None:
            stopping.cancel()
            await server.stop(grace=0)
            loaded.result()
        if on_serving is not None and not stopping.done():
            on_serving(server.port)
        await stopping
        loaded.cancel()
        await server.stop()
        log.info("stopped")
    finally:
        for signum in signals + reload_signals:
            loop.remove_signal_handler(signum)
        if own_tracing:
            await asyncio.to_thread(tracing.shutdown, _FLUSH_WAIT)


def _reflection_pool() -> DescriptorPool:
    """A descriptor pool holding every service the server exposes.

    The generated contract lives in its own pool and grpclib's health service
    in protobuf's default pool; reflection must answer for both.
    """
    pool = DescriptorPool()
    for descriptor in (FILE_DESCRIPTOR, health_pb2.DESCRIPTOR):
        proto = FileDescriptorProto()
        descriptor.CopyToProto(proto)
        pool.Add(proto)
    return pool
