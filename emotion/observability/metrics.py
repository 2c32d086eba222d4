"""Prometheus metrics, named as go-grpc-prometheus names them, so existing dashboards fit.

With ``--workers`` every worker records into files in a directory that the
supervisor creates (prometheus_client's multiprocess mode) and the supervisor
serves their sum; with one process, the server serves its own registry.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    multiprocess,
    start_http_server,
)

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

#: Set by the supervisor for its workers; prometheus_client reads it at import.
MULTIPROCESS_DIR = "PROMETHEUS_MULTIPROC_DIR"

SERVICE = "emotion.v1.Pipeline"
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class Metrics:
    """The server's instruments, registered in ``registry``."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        registry = registry if registry is not None else CollectorRegistry()
        self.registry = registry
        labels = ("grpc_type", "grpc_service", "grpc_method")
        self.started = Counter(
            "grpc_server_started_total",
            "RPCs started on the server.",
            labels,
            registry=registry,
        )
        self.handled = Counter(
            "grpc_server_handled_total",
            "RPCs completed on the server, by status code.",
            (*labels, "grpc_code"),
            registry=registry,
        )
        self.handling = Histogram(
            "grpc_server_handling_seconds",
            "Time from a call's headers to its trailers.",
            labels,
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.in_flight = Gauge(
            "emotion_calls_in_flight",
            "Pipeline calls between their headers and their trailers.",
            multiprocess_mode="livesum",
            registry=registry,
        )
        self.queue_depth = Gauge(
            "emotion_inference_queue_depth",
            "Images waiting for an inference process or thread, or in one (decode and model).",
            multiprocess_mode="livesum",
            registry=registry,
        )
        self.batch_size = Histogram(
            "emotion_batch_size",
            "Images per Model.process_batch run (only with --max-batch-size > 1).",
            buckets=(1, 2, 4, 8, 16, 32, 64),
            registry=registry,
        )
        self.connections_evicted = Counter(
            "emotion_connections_evicted_total",
            "Connections closed to make room for a new one at --max-connections, by reason: "
            "handshake (it had not finished the HTTP/2 handshake) or idle (no call open).",
            ("reason",),
            registry=registry,
        )
        for reason in ("handshake", "idle"):
            self.connections_evicted.labels(reason)
        self.connections_refused = Counter(
            "emotion_connections_refused_total",
            "New connections refused at --max-connections: every open one had a call in flight.",
            registry=registry,
        )
        self.model_load_seconds = Gauge(
            "emotion_model_load_seconds",
            "How long the model's load() took, per process.",
            multiprocess_mode="max",
            registry=registry,
        )

    def call_started(self, method: str, kind: str) -> None:
        self.started.labels(kind, SERVICE, method).inc()
        self.in_flight.inc()

    def call_finished(self, method: str, kind: str, code: str, seconds: float) -> None:
        self.in_flight.dec()
        self.handled.labels(kind, SERVICE, method, code).inc()
        self.handling.labels(kind, SERVICE, method).observe(seconds)

    def connection_at_cap(self, event: str) -> None:
        """``event``: "handshake" or "idle" (a connection closed for room), or "refused"."""
        if event == "refused":
            self.connections_refused.inc()
        else:
            self.connections_evicted.labels(event).inc()


class _Unrecorded:
    """An instrument that records nothing."""

    def inc(self, amount: float = 1) -> None:
        pass

    def dec(self, amount: float = 1) -> None:
        pass

    def set(self, value: float) -> None:
        pass

    def observe(self, amount: float) -> None:
        pass


class NoMetrics:
    """Stands in for :class:`Metrics` when nothing is recorded, so callers need no branch."""

    def __init__(self) -> None:
        self.queue_depth = self.batch_size = self.model_load_seconds = _Unrecorded()

    def call_started(self, method: str, kind: str) -> None:
        pass

    def call_finished(self, method: str, kind: str, code: str, seconds: float) -> None:
        pass

    def connection_at_cap(self, event: str) -> None:
        pass


#: What the server records into: real instruments, or none.
Recorder = Metrics | NoMetrics


def serve_metrics(host: str, port: int, registry: CollectorRegistry) -> WSGIServer:
    """Serve ``registry`` over HTTP on a daemon thread; returns the server (for its port)."""
    server, _thread = start_http_server(port, addr=host, registry=registry)
    return server


def multiprocess_registry(path: str) -> CollectorRegistry:
    """A registry that sums what every worker wrote into ``path``."""
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=path)  # type: ignore[no-untyped-call]
    return registry


def forget_process(pid: int) -> None:
    """Drop a dead worker's live gauges from the multiprocess sums."""
    path = os.environ.get(MULTIPROCESS_DIR)
    if path:
        multiprocess.mark_process_dead(pid, path)  # type: ignore[no-untyped-call]
