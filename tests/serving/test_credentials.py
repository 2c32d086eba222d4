"""Certificates, the client CA and tokens read again while serving (SIGHUP calls Server.reload).

The files are replaced as cert-manager or SPIFFE would, between calls of
clients that stay connected.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import StartServer
from grpclib.client import Channel
from grpclib.const import Status
from grpclib.exceptions import GRPCError, StreamTerminatedError
from support.certs import Authority, Pair, install, presented_name

from emotion import Client, PipelineStub, Request, Server
from emotion.config import ClientTls, ServerTls


@dataclass(frozen=True)
class Pki:
    """Two CAs, old and new, each with a server and a client; the server's files are ``live``."""

    old: Authority
    new: Authority
    servers: dict[str, Pair]
    clients: dict[str, Pair]
    both_cas: Path
    live: ServerTls

    def rotate(self, to: str, *, client_ca: bool = False) -> None:
        """Put ``to``'s server certificate and key (and CA, for clients) in the live files."""
        install(self.servers[to].cert, self.live.cert)
        install(self.servers[to].key, self.live.key)
        if client_ca:
            assert self.live.client_ca is not None
            install((self.old if to == "old" else self.new).cert, self.live.client_ca)

    def client(self, of: str) -> ClientTls:
        return ClientTls(ca=self.both_cas, cert=self.clients[of].cert, key=self.clients[of].key)


@pytest.fixture(scope="module")
def authorities(tmp_path_factory: pytest.TempPathFactory) -> tuple[Authority, Authority, Path]:
    directory = tmp_path_factory.mktemp("cas")
    old, new = Authority(directory, "old-ca"), Authority(directory, "new-ca")
    both = directory / "both.crt"
    both.write_bytes(old.cert.read_bytes() + new.cert.read_bytes())
    return old, new, both


@pytest.fixture
def pki(authorities: tuple[Authority, Authority, Path], tmp_path: Path) -> Pki:
    old, new, both = authorities
    live = ServerTls(tmp_path / "tls.crt", tmp_path / "tls.key", tmp_path / "ca.crt")
    made = Pki(
        old,
        new,
        {"old": old.issue("server-old", server=True), "new": new.issue("server-new", server=True)},
        {
            "old": old.issue("client-old", server=False),
            "new": new.issue("client-new", server=False),
        },
        both,
        live,
    )
    made.rotate("old", client_ca=True)
    return made


async def test_new_handshakes_get_the_new_certificate_and_open_connections_keep_going(
    start_server: StartServer, pki: Pki, jpeg: bytes
) -> None:
    server = await start_server(tls=ServerTls(pki.live.cert, pki.live.key))
    async with Client(f"127.0.0.1:{server.port}", tls=ClientTls(ca=pki.both_cas)) as client:
        await client.predict(jpeg, timeout=10)
        assert await presented_name(server.port, pki.both_cas) == "server-old"

        pki.rotate("new")
        server.reload()
        accepted = server.connections_accepted
        response = await client.predict(jpeg, timeout=10)

        assert len(response.response) == 1
        assert server.connections_accepted == accepted  # on the connection it had
        assert await presented_name(server.port, pki.both_cas) == "server-new"


async def test_a_client_ca_read_again_replaces_the_old_one(
    start_server: StartServer, pki: Pki, jpeg: bytes
) -> None:
    server = await start_server(tls=pki.live)
    async with Client(f"127.0.0.1:{server.port}", tls=pki.client("old")) as client:
        await client.predict(jpeg, timeout=10)

    pki.rotate("new", client_ca=True)
    server.reload()

    async with Client(f"127.0.0.1:{server.port}", tls=pki.client("new")) as client:
        assert len((await client.predict(jpeg, timeout=10)).response) == 1
    # Loading the new CA into the old context would only have added it.
    async with Client(f"127.0.0.1:{server.port}", tls=pki.client("old")) as client:
        with pytest.raises((StreamTerminatedError, ssl.SSLError, ConnectionError, OSError)):
            await client.predict(jpeg, timeout=5)


def half_written_certificate(pki: Pki) -> None:
    pki.live.cert.write_text("-----BEGIN CERTIFICATE-----\nMII")


def certificate_of_another_key(pki: Pki) -> None:
    install(pki.servers["new"].cert, pki.live.cert)


def key_missing(pki: Pki) -> None:
    pki.live.key.unlink()


def client_ca_not_pem(pki: Pki) -> None:
    assert pki.live.client_ca is not None
    pki.live.client_ca.write_text("not a certificate")


#: Each way to break the live files, and what the log line says of it.
BREAKAGES: dict[str, tuple[Callable[[Pki], None], str]] = {
    "certificate half written": (half_written_certificate, "tls.crt"),
    "certificate of another key": (certificate_of_another_key, "not a usable pair"),
    "key missing": (key_missing, "tls.key: no such file"),
    "client CA not PEM": (client_ca_not_pem, "ca.crt"),
}


@pytest.mark.parametrize("breakage", BREAKAGES)
async def test_files_that_fail_to_load_keep_the_old_ones_and_say_why_in_one_line(
    start_server: StartServer, pki: Pki, caplog: pytest.LogCaptureFixture, breakage: str
) -> None:
    server = await start_server(tls=pki.live)
    old_client = pki.clients["old"]
    break_files, reason = BREAKAGES[breakage]
    break_files(pki)

    with caplog.at_level(logging.INFO, logger="emotion"):
        server.reload()

    errors = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(errors) == 1
    assert errors[0].getMessage().startswith("keeping the TLS certificate in use: ")
    assert reason in errors[0].getMessage()
    assert await presented_name(server.port, pki.both_cas, old_client) == "server-old"
    # Once the files are whole again, the next reload takes them.
    pki.rotate("new", client_ca=True)
    server.reload()
    assert await presented_name(server.port, pki.both_cas, pki.clients["new"]) == "server-new"


async def call_with(server: Server, channel: Channel, token: str, jpeg: bytes) -> Status:
    stub = PipelineStub(channel, metadata={"authorization": f"Bearer {token}"})
    try:
        await stub.run_pipeline(Request(image=jpeg), timeout=10)
    except GRPCError as exc:
        return exc.status
    return Status.OK


async def test_tokens_read_again_apply_to_the_next_call_on_open_connections(
    start_server: StartServer,
    connect: Callable[[Server], Channel],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    jpeg: bytes,
) -> None:
    monkeypatch.setenv("EMOTION_AUTH_TOKENS", "from-the-environment")
    tokens = tmp_path / "tokens"
    tokens.write_text("old-token\n")
    server = await start_server(tokens=("old-token", "from-the-environment"), tokens_file=tokens)
    channel = connect(server)
    assert await call_with(server, channel, "old-token", jpeg) is Status.OK

    tokens.write_text("# rotated\nnew-token\n")
    server.reload()

    assert await call_with(server, channel, "old-token", jpeg) is Status.UNAUTHENTICATED
    assert await call_with(server, channel, "new-token", jpeg) is Status.OK
    assert await call_with(server, channel, "from-the-environment", jpeg) is Status.OK


@pytest.mark.parametrize(
    ("content", "reason"),
    [(None, "cannot read token file"), ("# emptied\n", "holds no token")],
    ids=["missing", "emptied"],
)
async def test_a_token_file_that_fails_to_load_keeps_the_tokens_in_use(
    start_server: StartServer,
    connect: Callable[[Server], Channel],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    jpeg: bytes,
    content: str | None,
    reason: str,
) -> None:
    tokens = tmp_path / "tokens"
    server = await start_server(tokens=("old-token",), tokens_file=tokens)
    if content is not None:
        tokens.write_text(content)

    with caplog.at_level(logging.INFO, logger="emotion"):
        server.reload()

    errors = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert [e.getMessage().startswith("keeping the tokens in use: ") for e in errors] == [True]
    assert reason in errors[0].getMessage()
    assert await call_with(server, connect(server), "old-token", jpeg) is Status.OK
