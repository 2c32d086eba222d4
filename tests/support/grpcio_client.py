"""Calls from grpcio, the client most other callers use, with emotion's own messages."""

from __future__ import annotations

from collections.abc import Callable

import grpc

from emotion import Request, Response
from emotion.contract import RUN_PIPELINE_PATH


def run_pipeline(channel: grpc.Channel) -> Callable[..., Response]:
    """RunPipeline on ``channel``: called with a Request (and grpcio's ``timeout=`` etc.)."""
    method: Callable[..., Response] = channel.unary_unary(
        RUN_PIPELINE_PATH,
        request_serializer=bytes,
        response_deserializer=Response.parse,
        _registered_method=True,
    )
    return method


def call(channel: grpc.Channel, image: bytes, timeout: float = 10) -> Response:
    """One RunPipeline call of ``image``."""
    response: Response = run_pipeline(channel)(Request(image=image), timeout=timeout)
    return response
