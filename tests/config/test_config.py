"""Settings: each field validates itself, each flag has its variable, and --port-file."""

from __future__ import annotations

import asyncio
import dataclasses
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
from conftest import EMOTION, run_emotion, subprocess_env
from grpclib.client import Channel
from grpclib.const import Status
from support.certs import Authority
from support.served import Served, start_serving, wait_for_port

from emotion import PipelineStub, Request
from emotion.cli import build_parser, demo_options, predict_options, serve_options
from emotion.config import (
    DEFAULT_MAX_IMAGE_SIZE,
    DEFAULT_MAX_MESSAGE_SIZE,
    ClientTls,
    ConnectionAge,
    DemoOptions,
    Limits,
    PredictOptions,
    RetryPolicy,
    ServeOptions,
    ServerConfig,
    ServerTls,
)
from emotion.config.arguments import UsageError
from emotion.config.settings import env_name, flags
from emotion.runtime import available_cpus, write_port_file

SETTINGS = (
    Limits,
    ConnectionAge,
    ServerTls,
    ClientTls,
    ServerConfig,
    ServeOptions,
    PredictOptions,
    RetryPolicy,
)
# Fields no command line sets: made by the CLI or the supervisor, or positional.
WITHOUT_FLAG = {
    "ConnectionAge.limit",
    "ConnectionAge.grace",
    "PredictOptions.images",
    "ServerConfig.tokens_file",  # set with tokens, from --auth-tokens-file
    # Python callers set these; a command line tunes only the attempts.
    "RetryPolicy.initial_backoff",
    "RetryPolicy.max_backoff",
    "RetryPolicy.backoff_multiplier",
    "RetryPolicy.retryable",
    "RetryPolicy.max_tokens",
    "RetryPolicy.token_ratio",
    "RetryPolicy.wait_for_server",
}


@pytest.mark.parametrize(
    ("make", "field", "allowed"),
    [
        (lambda: ServerConfig(port=70000), "ServerConfig.port", "0-65535"),
        (lambda: DemoOptions(port=70000), "DemoOptions.port", "1-65535"),
        (lambda: DemoOptions(port=0), "DemoOptions.port", "1-65535"),
        (lambda: ServerConfig(port=-1), "ServerConfig.port", "0-65535"),
        (lambda: ServerConfig(grace=-1), "ServerConfig.grace", "0 or more"),
        (lambda: ServerConfig(grace=float("inf")), "ServerConfig.grace", "0 or more"),
        (lambda: ServerConfig(threads=0), "ServerConfig.threads", "1 or more"),
        (lambda: ServerConfig(host=""), "ServerConfig.host", "non-empty"),
        (lambda: ServerConfig(max_batch_size=0), "ServerConfig.max_batch_size", "1 or more"),
        (lambda: ServerConfig(max_batch_delay=-0.1), "ServerConfig.max_batch_delay", "0 or more"),
        (lambda: ServerConfig(tokens=("a b",)), "ServerConfig.tokens", "without spaces"),
        (lambda: ServerConfig(metrics_port=65536), "ServerConfig.metrics_port", "0-65535"),
        (
            lambda: ServerConfig(max_connection_age=300),  # type: ignore[arg-type]
            "ServerConfig.max_connection_age",
            "ConnectionAge",
        ),
        (
            lambda: ServeOptions(inference_processes=-1),
            "ServeOptions.inference_processes",
            "0 or more",
        ),
        (
            lambda: ServeOptions(inference_processes=2, server=ServerConfig(max_batch_size=4)),
            "ServeOptions.inference_processes",
            "cannot be combined with max_batch_size > 1",
        ),
        (lambda: Limits(max_message_size=0), "Limits.max_message_size", "1 or more"),
        (lambda: Limits(max_pixels=0), "Limits.max_pixels", "1 or more"),
        (lambda: Limits(max_queue=-1), "Limits.max_queue", "0 or more"),
        (lambda: ConnectionAge(0), "ConnectionAge.limit", "more than 0"),
        (lambda: ConnectionAge(1, grace=-1), "ConnectionAge.grace", "0 or more"),
        (lambda: ServerTls(Path("c.pem"), None), "ServerTls.key", "a file path"),  # type: ignore[arg-type]
        (lambda: ServerTls(Path("c.pem"), ""), "ServerTls.key", "a file path"),  # type: ignore[arg-type]
        (lambda: ClientTls(ca=3), "ClientTls.ca", "a file path"),  # type: ignore[arg-type]
        (lambda: ServeOptions(workers=0), "ServeOptions.workers", "1 or more"),
        (lambda: ServeOptions(loop="trio"), "ServeOptions.loop", "asyncio, uvloop"),
        (lambda: ServeOptions(log_level="trace"), "ServeOptions.log_level", "debug, info"),
        (lambda: ServeOptions(model=""), "ServeOptions.model", "non-empty"),
        (lambda: PredictOptions([], timeout=0), "PredictOptions.timeout", "more than 0"),
        (lambda: PredictOptions([], target="here"), "target 'here'", "host:port"),
        (lambda: PredictOptions([], stream=1), "PredictOptions.stream", "bool"),  # type: ignore[arg-type]
        (lambda: PredictOptions([], max_faces=-1), "PredictOptions.max_faces", "0 or more"),
        (
            lambda: PredictOptions([], min_confidence=1.5),
            "PredictOptions.min_confidence",
            "a confidence from 0 to 1",
        ),
        (lambda: RetryPolicy(max_attempts=0), "RetryPolicy.max_attempts (--max-attempts)", "1 or"),
        (lambda: RetryPolicy(initial_backoff=0), "RetryPolicy.initial_backoff", "more than 0"),
        (lambda: RetryPolicy(backoff_multiplier=-1), "RetryPolicy.backoff_multiplier", "than 0"),
        (
            lambda: RetryPolicy(retryable=frozenset({Status.OK})),
            "RetryPolicy.retryable",
            "other than OK",
        ),
        (lambda: RetryPolicy(max_tokens=0), "RetryPolicy.max_tokens", "1 to 1000"),
        (lambda: RetryPolicy(token_ratio=2), "RetryPolicy.token_ratio", "at most 1"),
        (lambda: RetryPolicy(wait_for_server=-1), "RetryPolicy.wait_for_server", "0 or more"),
        (lambda: RetryPolicy(max_backoff=0.01), "RetryPolicy.max_backoff", "less than"),
    ],
)
def test_each_bad_value_raises_naming_the_field_and_what_it_accepts(
    make: Any, field: str, allowed: str
) -> None:
    with pytest.raises(ValueError, match=re.escape(field)) as raised:
        make()

    assert allowed in str(raised.value)


def test_cross_field_rules_are_checked_too() -> None:
    with pytest.raises(ValueError, match="needs both --tls-cert and --tls-key"):
        ClientTls(cert=Path("c.pem"))
    with pytest.raises(ValueError, match="--annotate names a folder"):
        PredictOptions([Path("a.gif")], stream=True, annotate=Path("out.png"))


def test_good_values_are_kept() -> None:
    config = ServerConfig(port=0, threads=1, limits=Limits(max_queue=0), grace=0)

    assert (config.port, config.threads, config.limits.max_queue, config.grace) == (0, 1, 0, 0)
    assert ServerConfig().threads is None  # one per CPU


def test_every_field_is_checked_or_nests_checked_settings() -> None:
    unchecked = [
        f"{cls.__name__}.{field.name}"
        for cls in SETTINGS
        for field in dataclasses.fields(cls)
        if field.metadata.get("check") is None and field.metadata.get("nested") is None
    ]

    assert unchecked == []


def test_every_field_has_a_flag_and_a_variable_named_by_the_rule() -> None:
    without = {
        f"{cls.__name__}.{field.name}"
        for cls in SETTINGS
        for field in dataclasses.fields(cls)
        if field.metadata.get("flag") is None and field.metadata.get("nested") is None
    }
    for command, cls in (("serve", ServeOptions), ("predict", PredictOptions)):
        for _, flag in flags(cls):
            assert flag.command == command
            assert flag.env == env_name(command, flag.name)

    assert without == WITHOUT_FLAG
    assert env_name("serve", "--max-queue") == "EMOTION_MAX_QUEUE"
    assert env_name("predict", "--tls-cert") == "EMOTION_PREDICT_TLS_CERT"


def test_serve_keeps_the_variables_the_dockerfile_and_manifests_use() -> None:
    # The flag tables of docs/ are checked against every flag by tests/test_docs.py.
    variables = {flag.env for _, flag in flags(ServeOptions)}

    assert {
        "EMOTION_HOST",
        "EMOTION_PORT",
        "EMOTION_METRICS_PORT",
        "EMOTION_WORKERS",
        "EMOTION_GRACE",
        "EMOTION_MAX_QUEUE",
        "EMOTION_MAX_CONNECTION_AGE",
        "EMOTION_TLS_CERT",
        "EMOTION_TLS_KEY",
        "EMOTION_TLS_CLIENT_CA",
    } <= variables


@pytest.mark.subprocess
def test_every_flag_is_in_the_help_with_its_variable() -> None:
    for command, cls in (("serve", ServeOptions), ("predict", PredictOptions)):
        help_text = subprocess.run(
            [*EMOTION, command, "--help"],
            capture_output=True,
            text=True,
            check=True,
            env=subprocess_env(COLUMNS="1000"),
        ).stdout
        for _, flag in flags(cls):
            assert flag.name in help_text
            assert flag.env in help_text


def _serve(argv: list[str], environ: dict[str, str]) -> ServeOptions:
    return serve_options(build_parser().parse_args(["serve", *argv]), environ)


def _predict(argv: list[str], environ: dict[str, str]) -> PredictOptions:
    return predict_options(build_parser().parse_args(["predict", "x.jpg", *argv]), environ)


def _demo(argv: list[str], environ: dict[str, str]) -> DemoOptions:
    return demo_options(build_parser().parse_args(["demo", *argv]), environ)


SERVE_SAMPLES: dict[str, tuple[str, Any]] = {
    "--model": ("pkg.mod:Cls", lambda o: o.model == "pkg.mod:Cls"),
    "--host": ("[::1]", lambda o: o.server.host == "::1"),
    "--port": ("8080", lambda o: o.server.port == 8080),
    "--grace": ("2.5", lambda o: o.server.grace == 2.5),
    "--threads": ("3", lambda o: o.server.threads == 3),
    "--max-batch-size": ("8", lambda o: o.server.max_batch_size == 8),
    "--inference-processes": ("2", lambda o: o.inference_processes == 2),
    "--max-batch-delay": ("0.01", lambda o: o.server.max_batch_delay == 0.01),
    "--max-message-size": ("32MiB", lambda o: o.server.limits.max_message_size == 32 * 2**20),
    "--max-pixels": ("20M", lambda o: o.server.limits.max_pixels == 20_000_000),
    "--max-queue": ("5", lambda o: o.server.limits.max_queue == 5),
    "--body-timeout": ("3", lambda o: o.server.limits.body_timeout == 3),
    "--max-receiving": ("64MiB", lambda o: o.server.limits.max_receiving == 64 * 2**20),
    "--max-concurrent-streams": (
        "9",
        lambda o: o.server.connections.max_concurrent_streams == 9,
    ),
    "--max-header-list-size": (
        "32KiB",
        lambda o: o.server.connections.max_header_list_size == 32 * 1024,
    ),
    "--handshake-timeout": ("2.5", lambda o: o.server.connections.handshake_timeout == 2.5),
    "--max-control-rate": ("20", lambda o: o.server.connections.max_control_rate == 20),
    "--max-connections": ("50", lambda o: o.server.connections.max_connections == 50),
    "--send-timeout": ("5", lambda o: o.server.connections.send_timeout == 5),
    "--max-connection-idle": ("60", lambda o: o.server.connections.max_connection_idle == 60),
    "--max-premature-resets": (
        "7",
        lambda o: o.server.connections.max_premature_resets == 7,
    ),
    "--auth-tokens-file": ("TOKENS", lambda o: o.server.tokens == ("t0k3n",)),
    "--tls-cert": ("c.pem", lambda o: o.server.tls == ServerTls(Path("c.pem"), Path("k.pem"))),
    "--tls-key": ("k.pem", lambda o: o.server.tls == ServerTls(Path("c.pem"), Path("k.pem"))),
    "--tls-client-ca": ("ca.pem", lambda o: o.server.tls.client_ca == Path("ca.pem")),
    "--metrics-port": ("9464", lambda o: o.server.metrics_port == 9464),
    "--max-connection-age": (
        "300",
        lambda o: o.server.max_connection_age == ConnectionAge(300, grace=30),
    ),
    "--workers": ("3", lambda o: o.workers == 3),
    "--loop": ("UVLOOP", lambda o: o.loop == "uvloop"),
    "--log-level": ("warning", lambda o: o.log_level == "warning"),
    "--port-file": ("port.txt", lambda o: o.port_file == Path("port.txt")),
}
# What predict and demo share: where the server is and how to reach it.
CLIENT_SAMPLES: dict[str, tuple[str, Any]] = {
    "--target": ("host:1234", lambda o: o.target == "host:1234"),
    "--timeout": ("2", lambda o: o.timeout == 2),
    "--tls": ("1", lambda o: o.tls == ClientTls()),
    "--tls-ca": ("CA", lambda o: o.tls is not None and o.tls.ca is not None),
    "--tls-cert": ("CERT", lambda o: o.tls is not None and o.tls.cert is not None),
    "--tls-key": ("KEY", lambda o: o.tls is not None and o.tls.key is not None),
    "--token-file": ("TOKEN", lambda o: o.token == "t0k3n"),
}
PREDICT_SAMPLES: dict[str, tuple[str, Any]] = {
    **CLIENT_SAMPLES,
    "--stream": ("true", lambda o: o.stream is True),
    "--annotate": ("out.png", lambda o: o.annotate == Path("out.png")),
    "--max-image-size": ("32MiB", lambda o: o.max_image_size == 32 * 1024 * 1024),
    "--max-attempts": ("1", lambda o: o.retry.max_attempts == 1),
    "--max-faces": ("2", lambda o: o.max_faces == 2),
    "--min-confidence": ("0.75", lambda o: o.min_confidence == 0.75),
    "--no-track": ("true", lambda o: o.no_track is True and o.track is False),
    "--smoothing": ("2.5", lambda o: (o.smoothing, o.track, o.stream) == (2.5, True, True)),
}
DEMO_SAMPLES: dict[str, tuple[str, Any]] = {
    **CLIENT_SAMPLES,
    "--host": ("0.0.0.0", lambda o: o.host == "0.0.0.0"),
    "--port": ("8000", lambda o: o.port == 8000),
}


def _files(tmp_path: Path, text: str) -> str:
    """Sample values that must name real files: the test's own."""
    if text in {"TOKENS", "TOKEN"}:
        path = tmp_path / "token"
        path.write_text("t0k3n\n")
        return str(path)
    if text in {"CA", "CERT", "KEY"}:
        if not (tmp_path / "client.key").exists():
            Authority(tmp_path, "ca").issue("client", server=False)
        return str(tmp_path / {"CA": "ca.crt", "CERT": "client.crt", "KEY": "client.key"}[text])
    return text


def test_the_samples_cover_every_flag() -> None:
    assert set(SERVE_SAMPLES) == {flag.name for _, flag in flags(ServeOptions)}
    assert set(PREDICT_SAMPLES) == {flag.name for _, flag in flags(PredictOptions)}
    assert set(DEMO_SAMPLES) == {flag.name for _, flag in flags(DemoOptions)}


@pytest.mark.parametrize("name", list(SERVE_SAMPLES))
def test_every_serve_variable_is_read(name: str, tmp_path: Path) -> None:
    text, holds = SERVE_SAMPLES[name]
    flag = next(flag for _, flag in flags(ServeOptions) if flag.name == name)
    environ = {flag.env: _files(tmp_path, text)}
    if name in {"--tls-cert", "--tls-key", "--tls-client-ca"}:  # TLS needs the pair
        environ = {"EMOTION_TLS_CERT": "c.pem", "EMOTION_TLS_KEY": "k.pem", **environ}

    others = {key: value for key, value in environ.items() if key != flag.env}

    assert holds(_serve([], environ))
    assert holds(_serve([name, environ[flag.env]], others))


CLIENT_COMMANDS: dict[str, tuple[dict[str, tuple[str, Any]], type[Any], Any]] = {
    "predict": (PREDICT_SAMPLES, PredictOptions, _predict),
    "demo": (DEMO_SAMPLES, DemoOptions, _demo),
}


@pytest.mark.parametrize(
    ("command", "name"),
    [(command, name) for command, (samples, _, _) in CLIENT_COMMANDS.items() for name in samples],
)
def test_every_client_variable_is_read_and_named_for_its_command(
    command: str, name: str, tmp_path: Path
) -> None:
    samples, options, make = CLIENT_COMMANDS[command]
    text, holds = samples[name]
    flag = next(flag for _, flag in flags(options) if flag.name == name)
    environ = {flag.env: _files(tmp_path, text)}
    if name in {"--tls-cert", "--tls-key"}:  # a client certificate needs its key
        prefix = f"EMOTION_{command.upper()}_"
        environ = {
            f"{prefix}TLS_CERT": _files(tmp_path, "CERT"),
            f"{prefix}TLS_KEY": _files(tmp_path, "KEY"),
        }
    others = {key: value for key, value in environ.items() if key != flag.env}

    assert flag.env.startswith(f"EMOTION_{command.upper()}_")
    assert holds(make([], environ))
    assert holds(make([name] if flag.switch else [name, environ[flag.env]], others))


def test_a_flag_wins_over_its_variable_and_empty_variables_are_unset() -> None:
    options = _serve(["--port", "1"], {"EMOTION_PORT": "2", "EMOTION_GRACE": ""})

    assert options.server.port == 1
    assert options.server.grace == 30


def test_predict_reads_its_old_variable_names_after_the_new_ones() -> None:
    assert _predict([], {"EMOTION_TARGET": "old:1"}).target == "old:1"
    assert _predict([], {"EMOTION_TARGET": "old:1", "EMOTION_PREDICT_TARGET": "new:2"}).target == (
        "new:2"
    )
    assert _predict([], {"EMOTION_TLS": "1"}).tls == ClientTls()


def test_serve_runs_one_inference_process_per_cpu_unless_told_or_batching() -> None:
    assert _serve([], {}).inference_processes == available_cpus()
    assert _serve(["--inference-processes", "0"], {}).inference_processes == 0
    assert _serve([], {"EMOTION_INFERENCE_PROCESSES": "3"}).inference_processes == 3
    # Batches form in a worker's threads: batching picks them by itself...
    assert _serve(["--max-batch-size", "4"], {}).inference_processes == 0
    # ...and refuses a process count it was given.
    with pytest.raises(UsageError, match="cannot be combined with max_batch_size > 1"):
        _serve(["--max-batch-size", "4", "--inference-processes", "2"], {})


@pytest.mark.parametrize(
    ("command", "environ", "message"),
    [
        ("serve", {"EMOTION_PORT": "abc"}, "EMOTION_PORT must be a whole number, not 'abc'"),
        ("serve", {"EMOTION_PORT": "70000"}, "EMOTION_PORT must be a port, 0-65535"),
        ("serve", {"EMOTION_MAX_PIXELS": "lots"}, "EMOTION_MAX_PIXELS must be a pixel count"),
        ("serve", {"EMOTION_MAX_CONNECTION_AGE": "-5"}, "EMOTION_MAX_CONNECTION_AGE must be"),
        ("serve", {"EMOTION_LOOP": "trio"}, "EMOTION_LOOP must be one of asyncio, uvloop"),
        ("predict", {"EMOTION_PREDICT_TIMEOUT": "0"}, "EMOTION_PREDICT_TIMEOUT must be"),
        ("predict", {"EMOTION_TLS": "maybe"}, "EMOTION_TLS must be 1 or 0"),
        ("predict", {"EMOTION_TARGET": "nowhere"}, "EMOTION_TARGET target 'nowhere'"),
    ],
)
def test_a_bad_variable_is_named_in_the_error(
    command: str, environ: dict[str, str], message: str
) -> None:
    with pytest.raises(UsageError) as raised:
        (_serve if command == "serve" else _predict)([], environ)

    assert str(raised.value).startswith(message)


def test_the_client_refuses_what_a_default_server_would() -> None:
    request = Request(image=bytes(DEFAULT_MAX_IMAGE_SIZE))

    assert len(bytes(request)) <= DEFAULT_MAX_MESSAGE_SIZE
    assert DEFAULT_MAX_IMAGE_SIZE == 16 * 1024 * 1024


def test_the_port_file_is_replaced_whole(tmp_path: Path) -> None:
    path = tmp_path / "port"
    path.write_text("1\n")

    write_port_file(path, 50051)

    assert path.read_text() == "50051\n"
    assert [p.name for p in tmp_path.iterdir()] == ["port"]  # no temporary file left


@pytest.mark.parametrize("workers", ["1", "2"])
@pytest.mark.subprocess
async def test_the_port_file_names_the_port_once_every_worker_serves(
    tmp_path: Path, jpeg: bytes, workers: str
) -> None:
    path = tmp_path / "port"
    process = await asyncio.create_subprocess_exec(
        *EMOTION,
        "serve",
        "--port",
        "0",
        "--workers",
        workers,
        "--inference-processes",  # the workers answer, with their pids
        "0",
        "--model",
        "support.sample_models:PidModel",
        stderr=asyncio.subprocess.DEVNULL,
        env=subprocess_env(EMOTION_PORT_FILE=str(path)),
    )
    try:
        port = await wait_for_port(path, process)
        pids = set()
        for _ in range(16):  # fresh connections land on every listening worker
            channel = Channel("127.0.0.1", port)
            try:
                answer = await PipelineStub(channel).run_pipeline(Request(image=jpeg), timeout=10)
            finally:
                channel.close()
            assert answer.response[0].bbox is not None
            pids.add(int(answer.response[0].bbox.x1))
    finally:
        process.terminate()
        await asyncio.wait_for(process.wait(), 30)

    assert len(pids) == int(workers)
    assert process.pid not in pids or workers == "1"


@pytest.mark.subprocess
async def test_a_port_file_left_by_an_earlier_run_is_removed_before_serving(
    tmp_path: Path,
) -> None:
    path = tmp_path / "port"
    path.write_text("50051\n")
    served = Served(
        await asyncio.create_subprocess_exec(
            *EMOTION,
            "serve",
            "--port",
            "0",
            "--workers",
            "1",
            "--port-file",
            str(path),
            "--model",
            "support.sample_models:SlowLoadModel",
            stderr=asyncio.subprocess.PIPE,
            env=subprocess_env(),
        ),
        0,
    )
    try:
        await served.read_until("loading model SlowLoadModel")

        assert not path.exists()
    finally:
        served.process.terminate()
        await asyncio.wait_for(served.process.wait(), 30)


@pytest.mark.subprocess
async def test_an_unwritable_port_file_fails_in_one_line(tmp_path: Path) -> None:
    path = tmp_path / "missing" / "port"
    code, _, err = await run_emotion(
        "serve",
        "--port",
        "0",
        "--port-file",
        str(path),
        "--model",
        "support.sample_models:PidModel",
    )

    assert code == 1
    assert err == f"emotion serve: cannot write {path}: no such folder\n"


@pytest.mark.subprocess
async def test_the_helper_learns_the_port_from_the_file() -> None:
    served = await start_serving(
        "--port", "0", "--workers", "1", "--model", "support.sample_models:PidModel"
    )
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", served.port)
        writer.close()
        await writer.wait_closed()
    finally:
        served.process.terminate()
        await asyncio.wait_for(served.process.wait(), 30)


def test_tokens_are_kept_out_of_the_settings_repr() -> None:
    shown = repr(ServerConfig(tokens=("s3cret",))) + repr(PredictOptions(images=[], token="s3cret"))

    assert "s3cret" not in shown
