"""What a server lets each client use: message and image sizes, the queue, and its connections.

Declared and validated like every setting (see :mod:`emotion.config`); the
guards that enforce the connection limits are in :mod:`emotion.transport`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial

from emotion.config.settings import (
    Settings,
    at_least,
    flag_meta,
    is_positive_seconds,
    is_seconds,
    meta,
    parse_float,
    parse_int,
    parse_pixels,
    parse_size,
)

#: Largest image decoded by default, width times height: about a 60 MP camera's
#: output is refused; 8000x6000 passes.
DEFAULT_MAX_PIXELS = 50_000_000
#: Room in a request message for what surrounds the image.
REQUEST_OVERHEAD = 64 * 1024
#: 16 MiB for the image, plus room for the message around it.
DEFAULT_MAX_MESSAGE_SIZE = 16 * 1024 * 1024 + REQUEST_OVERHEAD
#: The largest image a server with default limits accepts.
DEFAULT_MAX_IMAGE_SIZE = DEFAULT_MAX_MESSAGE_SIZE - REQUEST_OVERHEAD


_serve = partial(flag_meta, "serve")


@dataclass(frozen=True)
class Limits(Settings):
    """What one server accepts before it refuses."""

    max_message_size: int = field(
        default=DEFAULT_MAX_MESSAGE_SIZE,
        metadata=_serve(
            "--max-message-size",
            parse_size,
            at_least(1, "a size in bytes"),
            "largest request message; larger ones get RESOURCE_EXHAUSTED before their body is read",
            default_text="16 MiB plus 64 KiB",
        ),
    )
    max_pixels: int = field(
        default=DEFAULT_MAX_PIXELS,
        metadata=_serve(
            "--max-pixels",
            parse_pixels,
            at_least(1, "a pixel count"),
            "largest image, width x height, e.g. 50M; larger ones get INVALID_ARGUMENT "
            "before decoding",
        ),
    )
    max_queue: int = field(
        default=64,
        metadata=_serve(
            "--max-queue",
            parse_int,
            at_least(0),
            "calls a worker takes beyond its inference threads before answering RESOURCE_EXHAUSTED",
        ),
    )
    body_timeout: float = field(
        default=10.0,
        metadata=_serve(
            "--body-timeout",
            parse_float,
            is_positive_seconds,
            "seconds a call's request message may take to arrive, plus one per 64 KiB of it; "
            "a later one gets DEADLINE_EXCEEDED",
        ),
    )
    max_receiving: int = field(
        default=256 * 1024 * 1024,
        metadata=_serve(
            "--max-receiving",
            parse_size,
            at_least(1, "a size in bytes"),
            "bytes of request messages a worker buffers at once while they arrive; a message "
            "that would pass it gets RESOURCE_EXHAUSTED before its body is read",
            default_text="256 MiB",
        ),
    )


@dataclass(frozen=True)
class ConnectionLimits(Settings):
    """What one client connection may do before the server refuses it or closes it.

    Each is a guard against HTTP/2 abuse (docs/security.md): the defaults are
    meant for a public deployment and are never reached by a gRPC client
    that behaves.
    """

    max_concurrent_streams: int = field(
        default=100,
        metadata=_serve(
            "--max-concurrent-streams",
            parse_int,
            at_least(1),
            "calls one connection may have open at once, advertised in HTTP/2 SETTINGS; "
            "streams over it are refused (RST_STREAM REFUSED_STREAM) and clients retry them",
        ),
    )
    max_header_list_size: int = field(
        default=16 * 1024,
        metadata=_serve(
            "--max-header-list-size",
            parse_size,
            at_least(1024, "a size in bytes, at least 1 KiB"),
            "largest header block of a call (HTTP/2 SETTINGS_MAX_HEADER_LIST_SIZE), also "
            "the bytes a header block may buffer while it arrives; larger ones close the "
            "connection with GOAWAY ENHANCE_YOUR_CALM",
            default_text="16 KiB",
        ),
    )
    max_premature_resets: int = field(
        default=100,
        metadata=_serve(
            "--max-premature-resets",
            parse_int,
            at_least(1),
            "streams a connection may reset within a second of opening them, once they are "
            "over half its streams, before GOAWAY ENHANCE_YOUR_CALM closes it (Rapid Reset)",
        ),
    )

    max_control_rate: int = field(
        default=10,
        metadata=_serve(
            "--max-control-rate",
            parse_int,
            at_least(1),
            "PING and SETTINGS frames a connection may send a second, in bursts of ten times "
            "as many, before GOAWAY ENHANCE_YOUR_CALM closes it",
        ),
    )
    max_connections: int = field(
        default=1000,
        metadata=_serve(
            "--max-connections",
            parse_int,
            at_least(1),
            "client connections a worker keeps open; at the cap a new one is served, and room "
            "made by closing one that has not finished its HTTP/2 handshake, else the one idle "
            "longest (GOAWAY); only with a call in flight on every one is the new one refused",
        ),
    )
    handshake_timeout: float = field(
        default=10.0,
        metadata=_serve(
            "--handshake-timeout",
            parse_float,
            is_positive_seconds,
            "seconds a new connection has to send the HTTP/2 preface and its SETTINGS "
            "(after TLS) before it is closed",
        ),
    )
    send_timeout: float = field(
        default=30.0,
        metadata=_serve(
            "--send-timeout",
            parse_float,
            is_positive_seconds,
            "seconds an answer may wait for a client that reads nothing (no flow-control "
            "window, or a full socket) before its call is ended and its place freed",
        ),
    )
    max_connection_idle: float = field(
        default=300.0,
        metadata=_serve(
            "--max-connection-idle",
            parse_float,
            is_positive_seconds,
            "close a connection (GOAWAY, then close) once no call has been open on it for "
            "this many seconds (up to twice as long); clients reconnect when they need to",
        ),
    )


@dataclass(frozen=True)
class ConnectionAge(Settings):
    """Retire connections after ``limit`` seconds (±10%), so clients spread over new servers.

    HTTP/2 keeps a client on one server however many are added behind a plain
    load balancer. An aged connection closes once it has no call in flight, at
    most ``grace`` seconds later.
    """

    limit: float = field(metadata=meta(check=is_positive_seconds))
    grace: float = field(default=30.0, metadata=meta(check=is_seconds))
