"""OpenTelemetry tracing (the `otel` extra): spans of a real server seen through a real client."""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import ClassVar

import pytest

pytest.importorskip("opentelemetry.sdk", reason="needs the extra: pip install 'emotion[otel]'")

from conftest import encode, gradient, run_emotion, subprocess_env
from grpclib.client import Channel
from grpclib.const import Cardinality
from grpclib.exceptions import GRPCError
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
    InMemorySpanExporter,
)
from opentelemetry.trace import SpanKind, StatusCode
from support.sample_models import BatchModel, RaisingModel, SlowModel
from support.served import start_serving

from emotion import Client, Model, PipelineStub, Request, Response, Server
from emotion.client.predict import run as run_predict
from emotion.config import PredictOptions
from emotion.contract import LEGACY_RUN_PIPELINE_PATH
from emotion.models.mock import MockModel
from emotion.observability.environment import tracing_from_environment
from emotion.observability.otel import OtelTracing
from emotion.observability.tracing import NoTracing, Tracer
from emotion.testing import serve_model

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def recording() -> tuple[OtelTracing, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return OtelTracing(provider), exporter


class Traced:
    """A client to a traced server, and the spans the server ended so far."""

    def __init__(self, client: Client, exporter: InMemorySpanExporter) -> None:
        self.client, self._exporter = client, exporter
        self.port = int(client.target.rpartition(":")[2])

    @property
    def target(self) -> str:
        return self.client.target

    def spans(self) -> list[ReadableSpan]:
        return list(self._exporter.get_finished_spans())

    def named(self, name: str) -> list[ReadableSpan]:
        return [span for span in self.spans() if span.name == name]


@contextlib.asynccontextmanager
async def traced(
    model: Model | None = None,
    *,
    tracing: Tracer | None = None,
    inference_processes: int = 0,
    **config: object,
) -> AsyncIterator[Traced]:
    """Serve ``model``; with ``tracing`` given, :meth:`Traced.spans` stays empty."""
    recorder, exporter = recording()
    async with serve_model(
        model or MockModel(),
        inference_processes=inference_processes,
        timeout=10,
        tracing=tracing or recorder,
        grace=1,
        **config,
    ) as client:
        yield Traced(client, exporter)


@contextlib.asynccontextmanager
async def traced_in(layout: str, model: Model | None = None) -> AsyncIterator[Traced]:
    """:func:`traced`, the model run in the server's threads or in an inference process."""
    async with traced(model, inference_processes=int(layout == "processes")) as served:
        yield served


LAYOUTS = pytest.mark.parametrize(
    "layout", ["threads", pytest.param("processes", marks=pytest.mark.subprocess)]
)


def only(spans: list[ReadableSpan]) -> ReadableSpan:
    assert len(spans) == 1, [span.name for span in spans]
    return spans[0]


def children(of: ReadableSpan, spans: list[ReadableSpan]) -> list[str]:
    return [s.name for s in spans if s.parent and s.parent.span_id == of.context.span_id]


async def test_a_call_has_a_server_span_with_the_rpc_attributes(jpeg: bytes) -> None:
    async with traced() as served:
        channel = Channel("127.0.0.1", served.port)
        try:
            stub = PipelineStub(channel, metadata={"x-request-id": "req-7"})
            await stub.run_pipeline(Request(image=jpeg), timeout=5)
        finally:
            channel.close()

    span = only(served.named("emotion.v1.Pipeline/RunPipeline"))
    assert span.kind is SpanKind.SERVER
    assert span.parent is None
    attributes = dict(span.attributes or {})
    assert attributes.pop("client.port")
    assert attributes == {
        "rpc.system": "grpc",
        "rpc.service": "emotion.v1.Pipeline",
        "rpc.method": "RunPipeline",
        "rpc.grpc.status_code": 0,
        "emotion.request_id": "req-7",
        "client.address": "127.0.0.1",
    }
    assert span.status.status_code is StatusCode.UNSET


@LAYOUTS
async def test_queue_decode_and_model_are_children_of_the_call_in_that_order(
    jpeg: bytes, layout: str
) -> None:
    async with traced_in(layout) as served:
        await served.client.predict(jpeg)

    spans = served.spans()
    call = only(served.named("emotion.v1.Pipeline/RunPipeline"))
    assert children(call, spans) == ["emotion.queue", "emotion.decode", "emotion.model"]
    assert {s.context.trace_id for s in spans} == {call.context.trace_id}
    steps = [only(served.named(f"emotion.{n}")) for n in ("queue", "decode", "model")]
    instants = [call.start_time]
    for step in steps:
        instants += [step.start_time, step.end_time]
    instants.append(call.end_time)
    assert instants == sorted(instants)  # type: ignore[type-var]


async def test_a_callers_trace_continues_on_the_server(jpeg: bytes) -> None:
    caller, caller_spans = recording()
    parent_tracer = caller.provider.get_tracer("test")
    async with traced() as served:
        # The caller uses OpenTelemetry; emotion.Client sends its traceparent unasked.
        with parent_tracer.start_as_current_span("checkout") as parent:
            await served.client.predict(jpeg)

    span = only(served.named("emotion.v1.Pipeline/RunPipeline"))
    assert span.context.trace_id == parent.get_span_context().trace_id
    assert span.parent is not None
    assert span.parent.is_remote
    assert span.parent.span_id == parent.get_span_context().span_id
    assert [s.name for s in caller_spans.get_finished_spans()] == ["checkout"]


async def test_a_client_with_tracing_makes_a_client_span_that_parents_the_server_span(
    jpeg: bytes,
) -> None:
    tracing, client_spans = recording()
    async with traced() as served, Client(served.target, tracing=tracing) as client:
        await client.predict(jpeg)
        with pytest.raises(GRPCError):
            await client.predict(b"not an image")
        answers = [a async for a in client.stream([jpeg, jpeg])]
    assert len(answers) == 2

    sent = list(client_spans.get_finished_spans())
    assert [s.name for s in sent] == [
        "emotion.v1.Pipeline/RunPipeline",
        "emotion.v1.Pipeline/RunPipeline",
        "emotion.v1.Pipeline/StreamPipeline",
    ]
    assert all(s.kind is SpanKind.CLIENT for s in sent)
    assert [(s.attributes or {})["rpc.grpc.status_code"] for s in sent] == [0, 3, 0]
    assert sent[1].status.status_code is StatusCode.ERROR
    received = [s for s in served.spans() if s.kind is SpanKind.SERVER]
    assert len(received) == 3
    for client_span in sent:
        (server_span,) = (
            s for s in received if s.parent and s.parent.span_id == client_span.context.span_id
        )
        assert server_span.context.trace_id == client_span.context.trace_id
        assert server_span.name == client_span.name


@LAYOUTS
async def test_a_bad_image_is_not_a_server_error_but_its_status_code_is_on_the_span(
    layout: str,
) -> None:
    async with traced_in(layout) as served:
        with pytest.raises(GRPCError):
            await served.client.predict(b"not an image")

    span = only(served.named("emotion.v1.Pipeline/RunPipeline"))
    assert (span.attributes or {})["rpc.grpc.status_code"] == 3  # INVALID_ARGUMENT
    assert span.status.status_code is StatusCode.UNSET
    decode = only(served.named("emotion.decode"))
    assert decode.status.status_code is StatusCode.UNSET
    assert [event.name for event in decode.events] == ["exception"]
    assert not served.named("emotion.model")


@LAYOUTS
async def test_a_failing_model_makes_an_error_span_with_the_status_message(
    jpeg: bytes, layout: str
) -> None:
    async with traced_in(layout, RaisingModel()) as served:
        with pytest.raises(GRPCError) as raised:
            await served.client.predict(jpeg)

    span = only(served.named("emotion.v1.Pipeline/RunPipeline"))
    assert (span.attributes or {})["rpc.grpc.status_code"] == 13  # INTERNAL
    assert span.status.status_code is StatusCode.ERROR
    assert span.status.description == raised.value.message
    assert only(served.named("emotion.model")).status.status_code is StatusCode.ERROR


@pytest.mark.subprocess
async def test_calls_left_in_an_inference_process_are_traced_when_it_answers(
    jpeg: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EMOTION_TEST_SECONDS", "0.5")
    async with traced_in("processes", SlowModel()) as served:
        channel = Channel("127.0.0.1", served.port)
        stub = PipelineStub(channel)
        try:
            # The process is sent 3 images at a time: the fourth call waits for it.
            request = Request(image=jpeg)
            calls = [asyncio.ensure_future(stub.run_pipeline(request)) for _ in range(4)]
            await asyncio.sleep(0.3)
            for call in calls:  # the client leaves; no deadline passes
                call.cancel()
            left = await asyncio.gather(*calls, return_exceptions=True)
        finally:
            channel.close()
        for _ in range(100):  # the process runs the three images it holds, one by one
            if len(served.named("emotion.model")) == 3:
                break
            await asyncio.sleep(0.05)

    assert all(isinstance(call, asyncio.CancelledError) for call in left)
    spans = served.spans()
    steps = sorted(
        children(call, spans) for call in served.named("emotion.v1.Pipeline/RunPipeline")
    )
    assert steps == [["emotion.queue"]] + [["emotion.queue", "emotion.decode", "emotion.model"]] * 3


@LAYOUTS
async def test_a_stream_is_one_span_with_the_steps_of_each_image(jpeg: bytes, layout: str) -> None:
    async with traced_in(layout) as served:
        answers = [answer async for answer in served.client.stream([jpeg, jpeg, jpeg])]
    assert len(answers) == 3

    span = only(served.named("emotion.v1.Pipeline/StreamPipeline"))
    assert (span.attributes or {})["rpc.method"] == "StreamPipeline"
    assert sorted(children(span, served.spans())) == sorted(
        ["emotion.queue", "emotion.decode", "emotion.model"] * 3
    )


async def test_the_legacy_path_is_its_own_method(jpeg: bytes) -> None:
    async with traced() as served:
        channel = Channel("127.0.0.1", served.port)
        try:
            async with channel.request(
                LEGACY_RUN_PIPELINE_PATH, Cardinality.UNARY_UNARY, Request, Response, timeout=5
            ) as stream:
                await stream.send_message(Request(image=jpeg), end=True)
                await stream.recv_message()
                await stream.recv_trailing_metadata()
        finally:
            channel.close()

    span = only(served.named("emotion.v1.Pipeline/run_pipeline"))
    assert (span.attributes or {})["rpc.method"] == "run_pipeline"


async def test_a_batch_run_is_a_trace_of_its_own_linked_to_each_call(jpeg: bytes) -> None:
    async with traced(BatchModel(), max_batch_size=2, max_batch_delay=5.0) as served:
        await asyncio.gather(served.client.predict(jpeg), served.client.predict(jpeg))

    run = only(served.named("emotion.batch.run"))
    assert run.parent is None
    assert (run.attributes or {})["emotion.batch_size"] == 2
    assert sorted(children(run, served.spans())) == ["emotion.model", "emotion.queue"]
    waits = served.named("emotion.batch")
    assert {link.context.span_id for link in run.links} == {w.context.span_id for w in waits}
    calls = served.named("emotion.v1.Pipeline/RunPipeline")
    assert {w.parent.span_id for w in waits if w.parent} == {c.context.span_id for c in calls}


def test_tracing_is_off_unless_the_environment_asks_for_an_exporter() -> None:
    for environ in (
        {},
        {"OTEL_TRACES_EXPORTER": "none"},
        {"OTEL_TRACES_EXPORTER": "console", "OTEL_SDK_DISABLED": "true"},
        {"OTEL_SERVICE_NAME": "emotion", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"},
    ):
        assert isinstance(tracing_from_environment(environ), NoTracing), environ


def test_console_prints_spans_with_the_service_name_and_the_pid(
    capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    monkeypatch.delenv("OTEL_RESOURCE_ATTRIBUTES", raising=False)
    tracing = tracing_from_environment({"OTEL_TRACES_EXPORTER": "console"})
    assert isinstance(tracing, OtelTracing)
    with tracing.client_call("/emotion.v1.Pipeline/RunPipeline"):
        pass
    assert tracing.shutdown(5)

    printed = [json.loads(text) for text in _json_objects(capfd.readouterr().out)]
    (span,) = printed
    assert span["name"] == "emotion.v1.Pipeline/RunPipeline"
    assert span["resource"]["attributes"]["service.name"] == "emotion"
    assert span["resource"]["attributes"]["process.pid"] == os.getpid()


def test_otel_service_name_names_the_service(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_SERVICE_NAME", "faces-eu")
    tracing = tracing_from_environment({"OTEL_TRACES_EXPORTER": "none,console"})
    assert isinstance(tracing, OtelTracing)
    resource = tracing.provider.resource  # type: ignore[attr-defined]
    assert resource.attributes["service.name"] == "faces-eu"
    tracing.shutdown(1)


class _Collector(http.server.BaseHTTPRequestHandler):
    received: ClassVar[list[tuple[str, str | None, int]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.received.append((self.path, self.headers["Content-Type"], len(body)))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def collector() -> Iterator[tuple[str, list[tuple[str, str | None, int]]]]:
    """An OTLP/HTTP endpoint that records what is posted to it."""
    received: list[tuple[str, str | None, int]] = []
    handler = type("Collector", (_Collector,), {"received": received})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", received
    server.shutdown()
    server.server_close()


async def test_otlp_sends_the_spans_to_the_endpoint_by_the_end_of_the_drain(
    jpeg: bytes,
    collector: tuple[str, list[tuple[str, str | None, int]]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    endpoint, received = collector
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", raising=False)
    tracing = tracing_from_environment({"OTEL_TRACES_EXPORTER": "otlp"})
    async with traced(tracing=tracing) as served:
        await served.client.predict(jpeg)
        assert not received  # sent in batches, off the call's path

    assert [(path, kind) for path, kind, _ in received] == [
        ("/v1/traces", "application/x-protobuf")
    ]
    assert received[0][2] > 100


async def test_otlp_without_a_collector_neither_fails_calls_nor_holds_up_the_stop(
    jpeg: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
    monkeypatch.setenv(
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        f"http://127.0.0.1:{closed.getsockname()[1]}/v1/traces",
    )
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "1")
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "10")  # export (and fail) during the calls
    tracing = tracing_from_environment({"OTEL_TRACES_EXPORTER": "otlp"})
    try:
        async with traced(tracing=tracing) as served:
            for _ in range(5):
                await asyncio.wait_for(served.client.predict(jpeg), 2)
                await asyncio.sleep(0.05)
            stopping = time.perf_counter()
    finally:
        closed.close()
    assert time.perf_counter() - stopping < 4


def test_without_the_extra_tracing_warns_once_and_is_off(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setitem(
        sys.modules, "emotion.observability.otel", None
    )  # what a missing extra looks like

    with caplog.at_level(logging.WARNING, logger="emotion.observability.environment"):
        tracing = tracing_from_environment({"OTEL_TRACES_EXPORTER": "otlp"})

    assert isinstance(tracing, NoTracing)
    (record,) = caplog.records
    assert "pip install 'emotion[otel]'" in record.getMessage()


@pytest.mark.subprocess
def test_importing_emotion_loads_no_opentelemetry() -> None:
    check = (
        "import sys, emotion, emotion.serving.server, emotion.client, emotion.client.predict\n"
        "loaded = sorted(m for m in sys.modules if m.startswith('opentelemetry'))\n"
        "assert not loaded, loaded"
    )
    env = subprocess_env(OTEL_TRACES_EXPORTER="otlp")  # asked for, but nothing is built yet
    subprocess.run([sys.executable, "-c", check], env=env, check=True, timeout=60)


async def test_predict_sends_a_client_span_per_image_that_the_server_continues(
    jpeg: bytes,
    tmp_path: Path,
    capfd: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    images = [tmp_path / "a.jpg", tmp_path / "b.jpg"]
    for image in images:
        image.write_bytes(jpeg)
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console")
    async with traced() as served:
        options = PredictOptions(images=images, target=served.target)
        assert await run_predict(options) == 0

    printed = [json.loads(text) for text in _json_objects(capfd.readouterr().err)]
    sent = [span for span in printed if span.get("kind") == "SpanKind.CLIENT"]
    assert len(sent) == 2
    received = served.named("emotion.v1.Pipeline/RunPipeline")
    assert sorted(s.parent.span_id for s in received if s.parent) == sorted(
        int(span["context"]["span_id"], 16) for span in sent
    )


@pytest.mark.subprocess
async def test_each_worker_exports_its_spans_with_its_own_pid() -> None:
    env = subprocess_env(OTEL_TRACES_EXPORTER="console", OTEL_BSP_SCHEDULE_DELAY="60000")
    served = await start_serving(
        "--port", "0", "--workers", "2", "--inference-processes", "0",
        "--model", "support.sample_models:PidModel", env=env, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        pids: set[int] = set()
        image = encode(gradient(64, 64), "PNG")
        for _ in range(40):  # fresh connections, until both workers have answered
            async with Client(f"127.0.0.1:{served.port}", timeout=10) as client:
                response = await client.predict(image)
            assert response.response[0].bbox is not None
            pids.add(int(response.response[0].bbox.x1))
            if len(pids) == 2:
                break
        served.process.send_signal(signal.SIGTERM)
        out, _ = await asyncio.wait_for(served.process.communicate(), 30)
    finally:
        if served.process.returncode is None:
            served.process.kill()
            await served.process.wait()

    assert len(pids) == 2
    spans = [json.loads(text) for text in _json_objects(out.decode())]
    exported = {
        span["resource"]["attributes"]["process.pid"]
        for span in spans
        if span["name"] == "emotion.v1.Pipeline/RunPipeline"
    }
    assert exported == pids


def _json_objects(text: str) -> Iterator[str]:
    """The JSON objects in ``text`` (the console exporter's spans, predict's lines)."""
    decoder = json.JSONDecoder()
    index = 0
    while (start := text.find("{", index)) != -1:
        _, end = decoder.raw_decode(text, start)
        yield text[start:end]
        index = end


@pytest.mark.subprocess
async def test_a_tracer_given_to_servers_keeps_recording_after_each_stops(jpeg: bytes) -> None:
    tracing, exporter = recording()

    for _ in range(2):
        async with serve_model(MockModel(), tracing=tracing, grace=0) as client:
            await client.predict(jpeg)

    calls = [s for s in exporter.get_finished_spans() if s.kind is SpanKind.SERVER]
    assert len(calls) == 2


@pytest.mark.subprocess
async def test_console_spans_of_predict_go_to_stderr_leaving_stdout_json(server: Server) -> None:
    photo = str(FIXTURES / "astronaut.jpg")

    code, out, err = await run_emotion(
        "predict", photo, photo, "--target", f"127.0.0.1:{server.port}",
        OTEL_TRACES_EXPORTER="console",
    )  # fmt: skip

    assert code == 0
    assert [json.loads(line)["file"] for line in out.splitlines()] == [photo, photo]
    assert '"kind": "SpanKind.CLIENT"' in err
