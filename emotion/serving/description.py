"""What Describe answers: the model the server serves, its limits, its version.

Built once per server: none of it changes while a server runs, so every
Describe call is answered with the same written bytes.
"""

from __future__ import annotations

from emotion.codec import Encoded, encode
from emotion.config import ServerConfig
from emotion.contract import DescribeResponse, ModelDescription, ServerLimits
from emotion.decode import IMAGE_FORMATS
from emotion.runtime import version

#: gRPC's length prefix is 32 bits: no message is longer, whatever the setting.
_LONGEST_MESSAGE = 2**32 - 1


def server_limits(config: ServerConfig) -> ServerLimits:
    """The limits of ``config`` that a caller can keep to, as Describe states them."""
    return ServerLimits(
        max_message_size=min(config.limits.max_message_size, _LONGEST_MESSAGE),
        max_pixels=config.limits.max_pixels,
        image_formats=list(IMAGE_FORMATS),
        max_concurrent_calls=config.connections.max_concurrent_streams,
        body_timeout_seconds=config.limits.body_timeout,
    )


def described(model: ModelDescription, limits: ServerLimits) -> Encoded:
    """Describe's answer, written once for every call."""
    return Encoded(encode(DescribeResponse(model=model, limits=limits, server_version=version())))
