"""The gRPC server process: Pipeline, health and reflection on one port, with a graceful drain."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import signal
import socket
import sys
import threading
import time
import warnings
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from google.protobuf.descriptor_pb2 import FileDescriptorProto
from google.protobuf.descriptor_pool import DescriptorPool
from grpclib.health.check import ServiceStatus
from grpclib.health.service import Health
from grpclib.health.v1 import health_pb2
from grpclib.reflection.service import ServerReflection
from PIL import Image

from emotion.config import LOOPS, ServerConfig
from emotion.contract import FILE_DESCRIPTOR
from emotion.metrics import Metrics, serve_metrics
from emotion.model import Model
from emotion.service import PipelineService, State
from emotion.transport import GrpcServer

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

log = logging.getLogger(__name__)

# Between the last answer of a drain and closing connections: lets clients read
# those answers (grpclib's client fails a call whose trailers arrive in the same
# read as the GOAWAY) and lets health Watch streams deliver NOT_SERVING.
_CLOSE_LINGER = 0.1
# After aborting, how long answered calls get to write their UNAVAILABLE.
_ABORT_WAIT = 1.0


class ModelStartError(Exception):
    """The model's load() failed; the server cannot serve."""


class Server:
    """One listening socket serving Pipeline, grpc.health.v1 and reflection.

    The socket opens before the model loads, so health checks answer
    NOT_SERVING during a slow load instead of refusing connections.
    """

    def __init__(self, model: Model, config: ServerConfig | None = None) -> None:
        self.model = model
        self.config = config or ServerConfig()
        threads = self.config.threads or available_cpus()
        self._executor = ThreadPoolExecutor(threads, thread_name_prefix="emotion-infer")
        self._health = ServiceStatus()
        self._health.set(False)
        self.metrics: Metrics | None = None
        if self.config.metrics_port is not None or self.config.record_metrics:
            self.metrics = Metrics()
        self._metrics_server: WSGIServer | None = None
        self.service = PipelineService(
            model,
            self._executor,
            threads=threads,
            limits=self.config.limits,
            tokens=self.config.tokens,
            metrics=self.metrics,
            max_batch_size=self.config.max_batch_size,
            max_batch_delay=self.config.max_batch_delay,
        )
        self._grpc: GrpcServer | None = None
        self._port: int | None = None
        self._loaded: asyncio.Future[None] | None = None
        # Set by the loading thread itself: its task may be cancelled, it cannot.
        self._loading = False
        self._model_ready = False
        self._abandoned_threads = False
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
        # Pillow warns on odd metadata and on large images in client files; the
        # first is not an operator's concern, the second decode() rules on itself.
        warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.")
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        # decode() enforces the configured pixel limit itself; Pillow's own,
        # lower guard would refuse some images the configuration allows.
        Image.MAX_IMAGE_PIXELS = max(Image.MAX_IMAGE_PIXELS or 0, self.config.limits.max_pixels)
        tls = self.config.tls.context() if self.config.tls is not None else None
        services = ServerReflection.extend(
            [self.service, Health({self.service: [self._health]})],
            pool=_reflection_pool(),
        )
        self._grpc = GrpcServer(services, connection_age=self.config.max_connection_age)
        listener = _listen(self.config.host, self.config.port, reuse_port=self.config.reuse_port)
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
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._executor, self._load_model)
        except Exception as exc:
            log.error("model %s failed to load", self.model.name, exc_info=exc)
            raise ModelStartError(
                f"model {self.model.name} failed to load: {type(exc).__name__}: {exc}"
            ) from exc
        if self.service.state is State.LOADING:
            self.service.start_serving()
            self._health.set(True)
        log.info(
            "model %s loaded in %.2fs; serving",
            self.model.name,
            time.perf_counter() - started,
        )

    def _load_model(self) -> None:
        self._loading = True
        started = time.perf_counter()
        try:
            self.model.load()
            self._model_ready = True
        finally:
            self._loading = False
        if self.metrics is not None:
            self.metrics.model_load_seconds.set(time.perf_counter() - started)

    @property
    def abandoned_threads(self) -> bool:
        """After :meth:`stop`: whether a model call or load() outlived it.

        Python waits for such threads before the process can exit; a server
        process that must stop in time exits with ``os._exit`` instead.
        """
        return self._abandoned_threads

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
        self.service.start_draining()
        self._health.set(False)
        self._grpc.stop_listening()
        if self.service.active_calls:
            log.info(
                "draining %d in-flight call(s), up to %.1fs",
                self.service.active_calls,
                grace,
            )
            idle = asyncio.ensure_future(self.service.wait_idle())
            cut_short = asyncio.ensure_future(self._grace_over.wait())
            await asyncio.wait(
                {idle, cut_short}, timeout=grace, return_when=asyncio.FIRST_COMPLETED
            )
            idle.cancel()
            cut_short.cancel()
            if self.service.active_calls:
                log.warning("aborting %d call(s) still running", self.service.active_calls)
                self.service.abort_calls()
                # Calls waiting on their client (a body that never comes) do
                # not see the abort; closing the server below cancels them.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.service.wait_idle(), _ABORT_WAIT)
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
        self._release_model()

    @property
    def connections_accepted(self) -> int:
        """Client connections accepted since the start."""
        return 0 if self._grpc is None else self._grpc.connections_accepted

    def accepted_sockets(self) -> list[socket.socket]:
        """The sockets of the open client connections (for inspection and tests)."""
        return [] if self._grpc is None else self._grpc.accepted_sockets()

    def end_grace(self) -> None:
        """Cut a running :meth:`stop` short: cancel in-flight calls now."""
        self._grace_over.set()

    def _release_model(self) -> None:
        """Close the model, unless a thread still uses it: then leave it be."""
        loading = self._loading
        busy = self.service.inferring
        self._executor.shutdown(wait=False, cancel_futures=True)
        if loading or busy:
            self._abandoned_threads = True
            log.warning(
                "not waiting for %s; model %s not closed",
                "load() to finish" if loading and not busy else f"{busy} model call(s)",
                self.model.name,
            )
            return
        if not self._model_ready:
            return
        try:
            self.model.close()
        except Exception:
            log.exception("model %s failed to close", self.model.name)


async def serve(
    model: Model,
    config: ServerConfig,
    *,
    signals: tuple[signal.Signals, ...] = (signal.SIGTERM, signal.SIGINT),
    on_serving: Callable[[int], None] | None = None,
) -> None:
    """Run a server until one of ``signals``, then drain and return.

    A second signal during the drain cancels the remaining calls at once.
    ``on_serving`` is called with the bound port once the model has loaded.
    Raises ModelStartError when the model cannot load.
    """
    server = Server(model, config)
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

    for signum in signals:
        loop.add_signal_handler(signum, on_signal, signum)
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
        for signum in signals:
            loop.remove_signal_handler(signum)


def run(main: Coroutine[Any, Any, None], loop: str = "asyncio") -> None:
    """Run ``main`` on asyncio's own loop, or on uvloop.

    uvloop (``pip install 'emotion[uvloop]'``) runs the loop in C, but here
    the time goes to h2 and grpclib in Python: it measured no faster
    (benchmarks/README.md), so it is not the default.
    """
    if loop not in LOOPS:
        raise ValueError(f"loop must be one of {', '.join(LOOPS)}")
    if loop == "uvloop":
        import uvloop

        uvloop.run(main)
    else:
        asyncio.run(main)


def available_cpus(cgroup: Path = Path("/sys/fs/cgroup")) -> int:
    """CPUs this process may use: its CPU affinity, capped by a container's CPU quota.

    os.cpu_count() is the host's count; in a container limited to 2 CPUs on a
    64-CPU node it would start 64 workers that fight over 2 CPUs.
    """
    try:
        count = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        count = os.cpu_count() or 1
    for quota_file, period_file in (
        (cgroup / "cpu.max", None),  # cgroup v2: "QUOTA PERIOD" or "max PERIOD"
        (cgroup / "cpu" / "cpu.cfs_quota_us", cgroup / "cpu" / "cpu.cfs_period_us"),  # v1
    ):
        try:
            if period_file is None:
                quota, period = quota_file.read_text().split()
            else:
                quota, period = quota_file.read_text().strip(), period_file.read_text().strip()
        except (OSError, ValueError):
            continue
        if quota not in {"max", "-1"}:
            count = min(count, max(1, math.ceil(int(quota) / int(period))))
        break
    return max(1, count)


def write_port_file(path: Path, port: int) -> None:
    """Write ``port`` to ``path`` whole or not at all: a reader never sees half a number.

    A failure is logged, not raised: the server serves either way.
    """
    partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        partial.write_text(f"{port}\n")
        os.replace(partial, path)
    except OSError as exc:
        log.error("cannot write the port to %s: %s", path, exc.strerror or exc)


def format_address(host: str, port: int) -> str:
    """``host:port``, with IPv6 addresses in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def exit_code(code: int) -> int:
    """Return ``code``, or exit at once if threads would keep the process alive.

    After a drain, a model call or load() that outlived the grace period still
    runs in a thread that Python waits for at exit; a server told to stop must
    not wait for it.
    """
    others = [t for t in threading.enumerate() if t is not threading.main_thread() and not t.daemon]
    # Idle pool threads end within moments of their pool's shutdown; busy ones do not.
    deadline = time.monotonic() + 1.0
    for thread in others:
        thread.join(max(0.0, deadline - time.monotonic()))
    lingering = [t for t in others if t.is_alive()]
    if lingering:
        log.warning("exiting without waiting for %d busy thread(s)", len(lingering))
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def _listen(host: str, port: int, *, reuse_port: bool = False) -> socket.socket:
    """A listening TCP socket; ``::`` accepts IPv4 clients too.

    Made with an explicit IPPROTO_TCP: asyncio and grpclib switch Nagle's
    algorithm off only on sockets that say so, and with Nagle on, every
    answer waits ~40 ms for the client's delayed ACK.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6 and host == "::":
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind((host, port))
        sock.listen(1024)
    except OSError:
        sock.close()
        raise
    return sock


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
