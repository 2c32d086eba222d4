"""A thin async client over the generated stub."""

from __future__ import annotations

from types import TracebackType

from grpclib.client import Channel

from emotion.contract import PipelineStub, Request, Response
from emotion.security import ClientTls

DEFAULT_TARGET = "127.0.0.1:50051"


def parse_target(target: str) -> tuple[str, int]:
    """Split ``host:port`` (``[v6addr]:port`` for IPv6) into its parts."""
    host, sep, port_text = target.rpartition(":")
    if not sep or not host or not port_text.isdigit():
        raise ValueError(f"target {target!r} is not of the form host:port")
    port = int(port_text)
    if not 0 < port < 65536:
        raise ValueError(f"target {target!r} has port {port} outside 1-65535")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, port


class Client:
    """Connects lazily on the first call; use ``async with`` to close the channel.

    ``tls`` turns on TLS (and mutual TLS when it names a certificate);
    ``token`` is sent as ``authorization: Bearer <token>`` on every call.
    ``stub`` is the generated PipelineStub for anything the helpers do not cover.
    """

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        timeout: float | None = None,
        tls: ClientTls | None = None,
        token: str | None = None,
    ) -> None:
        host, port = parse_target(target)
        self.target = target
        self.timeout = timeout
        self._channel = Channel(host, port, ssl=None if tls is None else tls.context())
        metadata = None if token is None else {"authorization": f"Bearer {token}"}
        self.stub = PipelineStub(self._channel, timeout=timeout, metadata=metadata)

    async def predict(self, image: bytes, *, timeout: float | None = None) -> Response:
        """Run the pipeline on the bytes of one image file."""
        return await self.stub.run_pipeline(Request(image=image), timeout=timeout)

    def close(self) -> None:
        self._channel.close()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
