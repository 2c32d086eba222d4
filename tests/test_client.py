"""The async Client helper over the generated stub."""

from __future__ import annotations

import pytest
from conftest import StartServer
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from sample_models import SizeModel

from emotion import Client
from emotion.client import parse_target


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("127.0.0.1:50051", ("127.0.0.1", 50051)),
        ("localhost:1", ("localhost", 1)),
        ("[::1]:8080", ("::1", 8080)),
        ("emotion.internal.example:443", ("emotion.internal.example", 443)),
    ],
)
def test_parse_target_splits_host_and_port(target: str, expected: tuple[str, int]) -> None:
    assert parse_target(target) == expected


@pytest.mark.parametrize(
    "target", ["localhost", ":50051", "host:", "host:http", "host:0", "host:70000"]
)
def test_parse_target_rejects_malformed_targets(target: str) -> None:
    with pytest.raises(ValueError, match="target"):
        parse_target(target)


async def test_predict_returns_the_response_and_raises_grpc_errors(
    start_server: StartServer, jpeg: bytes
) -> None:
    server = await start_server(SizeModel())

    async with Client(f"127.0.0.1:{server.port}", timeout=10) as client:
        response = await client.predict(jpeg)
        with pytest.raises(GRPCError) as caught:
            await client.predict(b"")

    assert response.response[0].bbox is not None
    assert (response.response[0].bbox.x2, response.response[0].bbox.y2) == (320, 240)
    assert caught.value.status is Status.INVALID_ARGUMENT
