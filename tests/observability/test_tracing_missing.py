"""Tracing asked for where only part of OpenTelemetry is installed: one warning, then no tracing.

FastAPI (so Gradio) installs OpenTelemetry's API alone. Each test runs
`emotion` in processes that cannot import what ``EMOTION_TEST_HIDDEN`` names
(tests/support/hidden_imports/sitecustomize.py), as where it is not installed.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import EMOTION, TESTS, run_emotion, subprocess_env
from support.served import free_port, start_serving

from emotion import Client, Server
from emotion.observability.environment import missing_packages

#: Every test here starts processes (emotion serve, its workers, inference processes).
pytestmark = pytest.mark.subprocess

ASTRONAUT = TESTS / "fixtures" / "astronaut.jpg"
OTLP_HTTP = "opentelemetry.exporter.otlp.proto.http"

#: (what is hidden, OTEL_TRACES_EXPORTER, the packages the warning names)
CASES = pytest.mark.parametrize(
    ("hidden", "exporter", "packages"),
    [
        ("opentelemetry.sdk", "console", "opentelemetry-sdk is"),
        (OTLP_HTTP, "otlp", "opentelemetry-exporter-otlp-proto-http is"),
        (
            "opentelemetry",
            "otlp",
            "opentelemetry-api, opentelemetry-sdk, opentelemetry-exporter-otlp-proto-http are",
        ),
    ],
    ids=["api-only", "no-exporter", "none"],
)


def hiding(hidden: str, **extra: str) -> dict[str, str]:
    """The environment of an `emotion` process that cannot import ``hidden``."""
    env = subprocess_env(EMOTION_TEST_HIDDEN=hidden, **extra)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(TESTS / "support" / "hidden_imports"), env["PYTHONPATH"]]
    )
    return env


def warned(log: str, packages: str) -> None:
    """``log`` holds one tracing warning, naming ``packages``, and no traceback."""
    assert "Traceback" not in log, log
    lines = [line for line in log.splitlines() if "asks for traces" in line]
    assert len(lines) == 1, log
    assert f"{packages} not installed: pip install 'emotion[otel]'" in lines[0]
    assert lines[0].endswith("continuing without tracing")


@pytest.mark.parametrize(
    ("hidden", "exporters", "missing"),
    [
        ("opentelemetry.sdk", "console", ["opentelemetry-sdk"]),
        ("opentelemetry.sdk", "otlp", ["opentelemetry-sdk"]),
        (OTLP_HTTP, "console", []),
        (OTLP_HTTP, "console,otlp", ["opentelemetry-exporter-otlp-proto-http"]),
        ("opentelemetry", "none", []),
    ],
)
def test_missing_packages_are_those_the_exporters_need(
    hidden: str, exporters: str, missing: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip(OTLP_HTTP, reason="needs the extra: pip install 'emotion[otel]'")
    monkeypatch.setitem(sys.modules, hidden, None)  # None: import it as if not installed

    assert missing_packages({"OTEL_TRACES_EXPORTER": exporters}) == missing


@CASES
async def test_serve_warns_once_for_all_its_workers_and_serves(
    hidden: str, exporter: str, packages: str
) -> None:
    served = await start_serving(
        "--port", "0", "--workers", "2", "--inference-processes", "1",
        "--model", "emotion.models.mock:MockModel",
        env=hiding(hidden, OTEL_TRACES_EXPORTER=exporter),
    )  # fmt: skip
    try:
        async with Client(f"127.0.0.1:{served.port}", timeout=10) as client:
            response = await client.predict(ASTRONAUT.read_bytes())
        served.process.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(served.process.communicate(), 30)
    finally:
        if served.process.returncode is None:
            served.process.kill()
            await served.process.wait()

    assert len(response.response) == 1
    assert served.process.returncode == 0
    warned(err.decode(), packages)


@CASES
async def test_predict_warns_once_and_answers(
    hidden: str, exporter: str, packages: str, server: Server
) -> None:
    code, out, err = await run_emotion(
        "predict", str(ASTRONAUT), str(ASTRONAUT), "--target", f"127.0.0.1:{server.port}",
        **hiding(hidden, OTEL_TRACES_EXPORTER=exporter),
    )  # fmt: skip

    assert code == 0, err
    assert [json.loads(line)["file"] for line in out.splitlines()] == [str(ASTRONAUT)] * 2
    warned(err, packages)


async def test_demo_with_the_api_alone_answers(server: Server, tmp_path: Path) -> None:
    pytest.importorskip("gradio", reason="the demo extra is not installed: pip install '.[demo]'")
    from gradio_client import Client as GradioClient
    from gradio_client import handle_file

    port = free_port()
    log = tmp_path / "demo.log"
    env = hiding(
        "opentelemetry.sdk",
        OTEL_TRACES_EXPORTER="console",
        EMOTION_TARGET=f"127.0.0.1:{server.port}",
        EMOTION_DEMO_PORT=str(port),
    )
    with log.open("wb") as sink:
        demo = await asyncio.create_subprocess_exec(
            *EMOTION, "demo", stdout=sink, stderr=asyncio.subprocess.STDOUT, env=env
        )
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 60
        while f"emotion demo: {url}" not in log.read_text():
            assert demo.returncode is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            await asyncio.sleep(0.1)

        def ask() -> tuple[Any, dict[str, Any]]:
            page = GradioClient(url, verbose=False, analytics_enabled=False)
            drawn, faces = page.predict(handle_file(str(ASTRONAUT)), api_name="/predict")
            return drawn, faces

        _, faces = await asyncio.to_thread(ask)
    finally:
        if demo.returncode is None:
            demo.send_signal(signal.SIGINT)
            try:
                await asyncio.wait_for(demo.wait(), 15)
            except TimeoutError:
                demo.kill()
                await demo.wait()

    assert len(faces["faces"]) == 1
    assert "Traceback" not in log.read_text(), log.read_text()
