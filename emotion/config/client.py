"""The settings of the client commands, `emotion predict` and `emotion demo`, validated.

The fields both commands share are declared once, by the functions below,
for each command: a flag's variable is named after its command.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from grpclib.const import Status

from emotion.config.limits import DEFAULT_MAX_IMAGE_SIZE
from emotion.config.server import DEFAULT_TARGET
from emotion.config.settings import (
    Settings,
    at_least,
    flag_meta,
    is_a,
    is_fixed_port,
    is_path,
    is_positive_seconds,
    is_seconds,
    is_target,
    is_text,
    meta,
    optional,
    parse_bool,
    parse_float,
    parse_host,
    parse_int,
    parse_path,
    parse_size,
)
from emotion.security import client_context

_predict = partial(flag_meta, "predict")


@dataclass(frozen=True)
class ClientTls(Settings):
    """How a client checks the server (``ca``, else the system's roots) and proves itself."""

    ca: Path | None = field(
        default=None,
        metadata=_predict(
            "--tls-ca",
            parse_path,
            optional(is_path),
            "connect with TLS, checking the server against this CA",
            aliases=("EMOTION_TLS_CA",),
        ),
    )
    cert: Path | None = field(
        default=None,
        metadata=_predict(
            "--tls-cert",
            parse_path,
            optional(is_path),
            "client certificate for mutual TLS",
            aliases=("EMOTION_CLIENT_CERT",),
        ),
    )
    key: Path | None = field(
        default=None,
        metadata=_predict(
            "--tls-key",
            parse_path,
            optional(is_path),
            "the client certificate's private key",
            aliases=("EMOTION_CLIENT_KEY",),
        ),
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if (self.cert is None) != (self.key is None):
            raise ValueError("a client certificate needs both --tls-cert and --tls-key")

    def context(self) -> ssl.SSLContext:
        """Raises SecurityConfigError for unreadable or mismatched files."""
        return client_context(self.ca, self.cert, self.key)


def _are_statuses(value: Any) -> None:
    if not isinstance(value, frozenset) or not all(
        isinstance(s, Status) and s is not Status.OK for s in value
    ):
        raise ValueError(f"must be a frozenset of grpclib Status other than OK, not {value!r}")


def _is_ratio(value: Any) -> None:
    if not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise ValueError(f"must be a number more than 0 and at most 1, not {value!r}")


def _is_confidence(value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ValueError(f"must be a confidence from 0 to 1, not {value!r}")


def _is_smoothing(value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1e6:
        raise ValueError(f"must be a number of seconds from 0, not {value!r}")


def _is_tokens(value: Any) -> None:
    if not isinstance(value, (int, float)) or not 1 <= value <= 1000:
        raise ValueError(f"must be a number from 1 to 1000, not {value!r}")


def _check_backoff(policy: RetryPolicy | ConnectionPolicy) -> None:
    if policy.max_backoff < policy.initial_backoff:
        raise ValueError(
            f"{type(policy).__name__}.max_backoff ({policy.max_backoff:g}s) is less than "
            f"initial_backoff ({policy.initial_backoff:g}s)"
        )


@dataclass(frozen=True)
class RetryPolicy(Settings):
    """How emotion.Client retries a call that failed for a reason a retry can fix.

    gRPC's client retries (gRFC A6): up to ``max_attempts`` tries, the first
    included, for the statuses in ``retryable``, the n-th retry after a random
    wait in [0, min(initial_backoff * backoff_multiplier**(n-1), max_backoff)]
    or after what the server asks for (``grpc-retry-pushback-ms``); all
    within the call's one deadline. A budget of ``max_tokens`` per client
    (A6's retryThrottling) stops retries while failures outnumber successes
    more than ``1 / token_ratio`` to one, so that an outage meets no retry storm.
    ``max_attempts=1`` leaves only the retries of calls the server never saw;
    ``Client(retry=None)`` retries nothing.
    """

    max_attempts: int = field(
        default=5,
        metadata=_predict(
            "--max-attempts",
            parse_int,
            at_least(1),
            "tries per call, the first included, while the server answers UNAVAILABLE or "
            "is busy; 1 retries only calls the server never saw",
        ),
    )
    initial_backoff: float = field(default=0.1, metadata=meta(check=is_positive_seconds))
    max_backoff: float = field(default=1.0, metadata=meta(check=is_positive_seconds))
    backoff_multiplier: float = field(default=2.0, metadata=meta(check=is_positive_seconds))
    #: RESOURCE_EXHAUSTED is a full queue (retry later) or a message too
    #: large (never): an emotion server says which with its pushback.
    retryable: frozenset[Status] = field(
        default=frozenset({Status.UNAVAILABLE, Status.RESOURCE_EXHAUSTED}),
        metadata=meta(check=_are_statuses),
    )
    max_tokens: float = field(default=100.0, metadata=meta(check=_is_tokens))
    token_ratio: float = field(default=0.1, metadata=meta(check=_is_ratio))
    #: How long a call waits for a server this client reached before to take
    #: connections again (a restart), within its deadline; 0 waits not at all.
    wait_for_server: float = field(default=10.0, metadata=meta(check=is_seconds))

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_backoff(self)


@dataclass(frozen=True)
class ConnectionPolicy(Settings):
    """How emotion.Client spreads its calls over a deployment.

    Every address of every target (a name is resolved to all its addresses,
    again every ``resolve_every`` seconds: a headless Service's pods) gets
    up to ``per_address`` connections, opened only while all of its open ones
    have calls in flight: connections land on different workers of a server
    (``SO_REUSEPORT``), so one client reaches every core where one connection
    would reach one worker. Each call takes the connection with the fewest
    calls in flight. An address that refuses is left out, and dialled again
    in the background after a backoff from ``initial_backoff`` doubling up to
    ``max_backoff``; a dial gives up after ``connect_timeout``.
    """

    per_address: int = field(default=16, metadata=meta(check=at_least(1)))
    resolve_every: float = field(default=30.0, metadata=meta(check=is_positive_seconds))
    initial_backoff: float = field(default=0.1, metadata=meta(check=is_positive_seconds))
    max_backoff: float = field(default=5.0, metadata=meta(check=is_positive_seconds))
    connect_timeout: float = field(default=10.0, metadata=meta(check=is_positive_seconds))

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_backoff(self)


def _target(command: str) -> Any:
    return field(
        default=DEFAULT_TARGET,
        metadata=flag_meta(
            command,
            "--target",
            str,
            is_target,
            "server address as host:port, or several separated by commas",
            aliases=("EMOTION_TARGET",),
        ),
    )


def _timeout(command: str) -> Any:
    return field(
        default=30.0,
        metadata=flag_meta(
            command,
            "--timeout",
            parse_float,
            is_positive_seconds,
            "seconds to wait for each answer",
        ),
    )


def _tls(command: str) -> Any:
    """Connect with TLS; its flag is a switch, and --tls-ca, --tls-cert, --tls-key imply it."""
    return field(
        default=None,
        metadata=flag_meta(
            command,
            "--tls",
            parse_bool,
            optional(is_a(ClientTls)),
            "connect with TLS, checking the server against the system's CAs",
            aliases=("EMOTION_TLS",),
            switch=True,
            raw=True,
            nested=ClientTls,
        ),
    )


def _token(command: str) -> Any:
    return field(
        default=None,
        repr=False,  # a secret: kept out of logs and tracebacks
        metadata=flag_meta(
            command,
            "--token-file",
            parse_path,
            optional(is_text),
            "send 'authorization: Bearer <token>' with the token in this file (or the "
            "token itself in EMOTION_TOKEN)",
            aliases=("EMOTION_TOKEN_FILE",),
            raw=True,
        ),
    )


@dataclass(frozen=True)
class PredictOptions(Settings):
    """What `emotion predict` sends, where, and what it does with the answers."""

    images: list[Path] = field(metadata=meta(check=is_a(list)))
    target: str = _target("predict")
    timeout: float = _timeout("predict")
    tls: ClientTls | None = _tls("predict")  # noqa: RUF009 - a field(), made per command
    token: str | None = _token("predict")
    max_image_size: int | None = field(
        default=None,
        metadata=_predict(
            "--max-image-size",
            parse_size,
            optional(at_least(1, "a size in bytes")),
            "largest image to send, e.g. 32MiB; unset, the server's own limit, asked of it "
            f"once an image is over {DEFAULT_MAX_IMAGE_SIZE // 2**20} MiB",
            default_text="the server's",
        ),
    )
    max_faces: int = field(
        default=0,
        metadata=_predict(
            "--max-faces",
            parse_int,
            at_least(0),
            "answer at most this many faces per image, the most confident first; 0 for all",
        ),
    )
    min_confidence: float | None = field(
        default=None,
        metadata=_predict(
            "--min-confidence",
            parse_float,
            optional(_is_confidence),
            "leave out the faces detected with less confidence than this, from 0 to 1",
            default_text="the model's threshold",
        ),
    )
    retry: RetryPolicy = field(
        default_factory=RetryPolicy, metadata=meta(check=is_a(RetryPolicy), nested=RetryPolicy)
    )
    stream: bool = field(
        default=False,
        metadata=_predict(
            "--stream",
            parse_bool,
            is_a(bool),
            "send each IMAGE as one stream: the frames of an animated GIF or WebP, or the "
            "images in a folder; prints one line per frame",
            switch=True,
        ),
    )
    no_track: bool = field(
        default=False,
        metadata=_predict(
            "--no-track",
            parse_bool,
            is_a(bool),
            "with --stream, answer each frame alone: no track ids, smoothed expressions or "
            "summary line",
            switch=True,
        ),
    )
    smoothing: float = field(
        default=0.0,
        metadata=_predict(
            "--smoothing",
            parse_float,
            _is_smoothing,
            "--stream, with this time constant in seconds for each track's smoothed "
            "expression; 0 for the server's default (1 s)",
            metavar="SECONDS",
        ),
    )
    annotate: Path | None = field(
        default=None,
        metadata=_predict(
            "--annotate",
            parse_path,
            optional(is_path),
            "draw the faces and their top expression: into PATH for one image, else into "
            "the folder PATH as NAME.png (NAME-FRAME.png when streaming)",
            metavar="PATH",
        ),
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        # --smoothing implies --stream, as --tls-ca implies --tls.
        if self.smoothing:
            if self.no_track:
                raise ValueError("--smoothing smooths each track's expression: not with --no-track")
            object.__setattr__(self, "stream", True)
        if self.stream and self.annotate is not None and self.annotate.suffix:
            raise ValueError(
                "with --stream, --annotate names a folder for the frames, "
                f"not a file like {self.annotate}"
            )

    @property
    def track(self) -> bool:
        """Whether the stream asks the server to follow each face across its frames."""
        return self.stream and not self.no_track


@dataclass(frozen=True)
class DemoOptions(Settings):
    """What `emotion demo` is told: where the server is, how to reach it, where to listen."""

    target: str = _target("demo")
    timeout: float = _timeout("demo")
    tls: ClientTls | None = _tls("demo")  # noqa: RUF009 - a field(), made per command
    token: str | None = _token("demo")
    host: str = field(
        default="127.0.0.1",
        metadata=flag_meta("demo", "--host", parse_host, is_text, "address the page listens on"),
    )
    port: int = field(
        default=7860,
        metadata=flag_meta(
            "demo",
            "--port",
            parse_int,
            is_fixed_port,
            "port the page listens on (Gradio cannot report one it picked, so not 0)",
        ),
    )
