"""TLS, mutual TLS and bearer tokens, against real servers and clients."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import EMOTION, StartServer, encode, gradient, subprocess_env
from grpclib.client import Channel
from grpclib.const import Status
from grpclib.exceptions import GRPCError, StreamTerminatedError
from grpclib.health.v1.health_grpc import HealthStub
from grpclib.health.v1.health_pb2 import HealthCheckRequest, HealthCheckResponse
from support.certs import Authority, Pair
from support.served import start_serving

from emotion import Client, PipelineStub, Request, Server
from emotion.config import ClientTls, ConnectionLimits, ServerTls
from emotion.security import SecurityConfigError, load_tokens, read_token


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Pair | Path]:
    directory = tmp_path_factory.mktemp("pki")
    ca = Authority(directory, "emotion-test-ca")
    stranger = Authority(directory, "some-other-ca")
    return {
        "ca": ca.cert,
        "server": ca.issue("server", server=True),
        "named": ca.issue("named", server=True, names_only=True),
        "client": ca.issue("client", server=False),
        "stranger": stranger.issue("stranger", server=False),
        "stranger_ca": stranger.cert,
    }


def pair(pki: dict[str, Pair | Path], name: str) -> Pair:
    value = pki[name]
    assert isinstance(value, Pair)
    return value


def path(pki: dict[str, Pair | Path], name: str) -> Path:
    value = pki[name]
    assert isinstance(value, Path)
    return value


def server_tls(pki: dict[str, Pair | Path], *, mutual: bool = False) -> ServerTls:
    server = pair(pki, "server")
    return ServerTls(server.cert, server.key, path(pki, "ca") if mutual else None)


async def test_tls_round_trip(
    start_server: StartServer, pki: dict[str, Pair | Path], jpeg: bytes
) -> None:
    server = await start_server(tls=server_tls(pki))

    async with Client(f"127.0.0.1:{server.port}", tls=ClientTls(ca=path(pki, "ca"))) as client:
        response = await client.predict(jpeg, timeout=10)

    assert len(response.response) == 1


async def test_the_client_checks_the_certificate_against_the_name_it_was_given(
    start_server: StartServer, pki: dict[str, Pair | Path], jpeg: bytes
) -> None:
    named = pair(pki, "named")  # for localhost, not for 127.0.0.1
    server = await start_server(tls=ServerTls(named.cert, named.key))
    tls = ClientTls(ca=path(pki, "ca"))

    # The client dials the address localhost resolves to, and names localhost.
    async with Client(f"localhost:{server.port}", tls=tls, timeout=10) as client:
        response = await client.predict(jpeg)
    async with Client(f"127.0.0.1:{server.port}", tls=tls, timeout=10, retry=None) as client:
        with pytest.raises(ssl.SSLCertVerificationError):
            await client.predict(jpeg)

    assert len(response.response) == 1


async def test_a_plaintext_client_cannot_talk_to_a_tls_server(
    start_server: StartServer, pki: dict[str, Pair | Path], jpeg: bytes
) -> None:
    server = await start_server(tls=server_tls(pki))

    async with Client(f"127.0.0.1:{server.port}") as client:
        with pytest.raises((StreamTerminatedError, ConnectionError, OSError)):
            await client.predict(jpeg, timeout=5)


async def test_a_client_that_does_not_trust_the_server_refuses_it(
    start_server: StartServer, pki: dict[str, Pair | Path], jpeg: bytes
) -> None:
    server = await start_server(tls=server_tls(pki))
    untrusting = ClientTls(ca=path(pki, "stranger_ca"))

    async with Client(f"127.0.0.1:{server.port}", tls=untrusting) as client:
        with pytest.raises(ssl.SSLCertVerificationError):
            await client.predict(jpeg, timeout=5)


@pytest.mark.parametrize(
    "client_pair",
    [None, "stranger"],
    ids=["no client certificate", "certificate from another CA"],
)
async def test_mutual_tls_refuses_clients_without_a_certificate_from_its_ca(
    start_server: StartServer, pki: dict[str, Pair | Path], jpeg: bytes, client_pair: str | None
) -> None:
    server = await start_server(tls=server_tls(pki, mutual=True))
    cert = pair(pki, client_pair) if client_pair else None
    tls = ClientTls(
        ca=path(pki, "ca"), cert=cert.cert if cert else None, key=cert.key if cert else None
    )

    async with Client(f"127.0.0.1:{server.port}", tls=tls) as client:
        # TLS 1.3 lets the client finish first; the server then drops it.
        with pytest.raises((StreamTerminatedError, ssl.SSLError, ConnectionError, OSError)):
            await client.predict(jpeg, timeout=5)
    # ...and keeps serving those that have one.
    good = pair(pki, "client")
    tls = ClientTls(ca=path(pki, "ca"), cert=good.cert, key=good.key)
    async with Client(f"127.0.0.1:{server.port}", tls=tls) as client:
        assert len((await client.predict(jpeg, timeout=10)).response) == 1


async def test_failed_tls_handshakes_take_no_place_among_the_connections(
    start_server: StartServer, pki: dict[str, Pair | Path], jpeg: bytes
) -> None:
    server = await start_server(
        tls=server_tls(pki), connections=ConnectionLimits(max_connections=2)
    )

    def plaintext() -> None:
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\n\r\n")
            with contextlib.suppress(OSError):
                sock.recv(100)  # the server ends the failed handshake

    for _ in range(3):
        await asyncio.to_thread(plaintext)
    # Asyncio never tells the protocol of a connection that failed TLS that it is lost.
    async with Client(f"127.0.0.1:{server.port}", tls=ClientTls(ca=path(pki, "ca"))) as client:
        response = await client.predict(jpeg, timeout=10)

    assert len(response.response) == 1


TOKENS = ("s3cret-one", "s3cret-two")


@pytest.mark.parametrize(
    ("token", "outcome"),
    [
        (None, "missing credentials: send 'authorization: Bearer <token>'"),
        ("wrong", "the bearer token is not valid"),
        ("s3cret-on", "the bearer token is not valid"),
        ("s3cret-one", None),
        ("s3cret-two", None),
    ],
)
async def test_pipeline_calls_need_a_valid_bearer_token(
    start_server: StartServer, jpeg: bytes, token: str | None, outcome: str | None
) -> None:
    server = await start_server(tokens=TOKENS)

    async with Client(f"127.0.0.1:{server.port}", token=token) as client:
        if outcome is None:
            assert len((await client.predict(jpeg, timeout=10)).response) == 1
            return
        with pytest.raises(GRPCError) as caught:
            await client.predict(jpeg, timeout=10)

    assert caught.value.status is Status.UNAUTHENTICATED
    assert caught.value.message == outcome


async def test_a_token_sent_without_the_bearer_scheme_is_refused(
    start_server: StartServer, connect: Callable[[Server], Channel], jpeg: bytes
) -> None:
    server = await start_server(tokens=TOKENS)
    stub = PipelineStub(connect(server), metadata={"authorization": "s3cret-one"})

    with pytest.raises(GRPCError) as caught:
        await stub.run_pipeline(Request(image=jpeg), timeout=10)

    assert caught.value.status is Status.UNAUTHENTICATED


async def test_health_and_reflection_need_no_token(
    start_server: StartServer, connect: Callable[[Server], Channel]
) -> None:
    server = await start_server(tokens=TOKENS)

    health = await HealthStub(connect(server)).Check(HealthCheckRequest(), timeout=5)

    assert health.status == HealthCheckResponse.SERVING


def test_token_files_skip_comments_and_blank_lines(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("# clients of team A\nabc123\n\n  def456  \n")

    assert load_tokens(tokens, "ghi789, jkl012") == ["abc123", "def456", "ghi789", "jkl012"]


def test_a_client_reads_its_token_from_a_file_or_the_environment(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("abc123\n")

    assert read_token(token, "from-env") == "abc123"
    assert read_token(None, "from-env") == "from-env"
    assert read_token(None, None) is None


@pytest.mark.parametrize(
    ("content", "message"),
    [(None, "cannot read token file"), ("# nothing here\n\n", "holds no token")],
)
def test_unusable_token_files_are_errors(tmp_path: Path, content: str | None, message: str) -> None:
    tokens = tmp_path / "tokens"
    if content is not None:
        tokens.write_text(content)

    with pytest.raises(SecurityConfigError, match=message):
        load_tokens(tokens)


def test_a_certificate_without_its_key_is_a_one_line_error(
    pki: dict[str, Pair | Path], tmp_path: Path
) -> None:
    with pytest.raises(SecurityConfigError, match="no such file"):
        ServerTls(pair(pki, "server").cert, tmp_path / "missing.key").context()
    with pytest.raises(SecurityConfigError, match="not a usable pair"):
        ServerTls(pair(pki, "server").cert, pair(pki, "client").key).context()


@pytest.mark.subprocess
async def test_serve_and_predict_over_mutual_tls_with_a_token(
    pki: dict[str, Pair | Path], tmp_path: Path
) -> None:
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(encode(gradient(), "JPEG"))
    tokens = tmp_path / "tokens"
    tokens.write_text("team-a-token\n")
    server, client = pair(pki, "server"), pair(pki, "client")
    served = await start_serving(
        "--port",
        "0",
        "--workers",
        "1",
        "--model",
        "support.sample_models:SizeModel",
        "--tls-cert",
        str(server.cert),
        "--tls-key",
        str(server.key),
        "--tls-client-ca",
        str(path(pki, "ca")),
        "--auth-tokens-file",
        str(tokens),
    )
    process, port = served.process, served.port
    try:
        predict = [
            *EMOTION,
            "predict",
            str(photo),
            "--target",
            f"127.0.0.1:{port}",
            "--tls-ca",
            str(path(pki, "ca")),
            "--tls-cert",
            str(client.cert),
            "--tls-key",
            str(client.key),
        ]
        good = await asyncio.create_subprocess_exec(
            *predict,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=subprocess_env(EMOTION_TOKEN="team-a-token"),
        )
        out, _ = await asyncio.wait_for(good.communicate(), 30)
        bad = await asyncio.create_subprocess_exec(
            *predict,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=subprocess_env(EMOTION_TOKEN="guess"),
        )
        _, err = await asyncio.wait_for(bad.communicate(), 30)
    finally:
        process.terminate()
        await asyncio.wait_for(process.wait(), 30)

    assert good.returncode == 0
    assert b'"x2": 320' in out
    assert bad.returncode == 1
    assert err.decode().strip().endswith("UNAUTHENTICATED: the bearer token is not valid")


@pytest.mark.parametrize("scheme", ["bearer", "BEARER"])
async def test_the_bearer_scheme_is_case_insensitive(
    start_server: StartServer, connect: Callable[[Server], Channel], jpeg: bytes, scheme: str
) -> None:
    server = await start_server(tokens=TOKENS)
    stub = PipelineStub(connect(server), metadata={"authorization": f"{scheme} s3cret-one"})

    assert len((await stub.run_pipeline(Request(image=jpeg), timeout=10)).response) == 1
