"""The server's settings, each declared once and validated.

Each class is a frozen dataclass that checks itself in ``__post_init__``: a
bad value raises ValueError naming the field and what it accepts. Fields that
a command line sets carry their flag (see :mod:`emotion.config.settings`), from
which `emotion.cli` builds ``serve``'s and ``predict``'s flags. Every flag
has an environment variable named by :func:`emotion.config.settings.env_name`.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from emotion.config.limits import (
    ConnectionAge,
    ConnectionLimits,
    Limits,
)
from emotion.config.settings import (
    Settings,
    at_least,
    flag_meta,
    is_a,
    is_path,
    is_port,
    is_seconds,
    is_text,
    is_tokens,
    meta,
    one_of,
    optional,
    parse_age,
    parse_float,
    parse_host,
    parse_int,
    parse_optional_port,
    parse_path,
    parse_threads,
)
from emotion.security import server_context

DEFAULT_TARGET = "127.0.0.1:50051"
DEFAULT_MODEL = "emotion.models.fer:FerModel"
LOOPS = ("asyncio", "uvloop")
LOG_LEVELS = ("debug", "info", "warning", "error")
_serve = partial(flag_meta, "serve")


_CERT = "serve TLS with this PEM certificate chain"
_CLIENT_CA = "require client certificates signed by this CA: mutual TLS"


@dataclass(frozen=True)
class ServerTls(Settings):
    """The server's certificate, and the CA that client certificates must chain to (mTLS)."""

    cert: Path = field(metadata=_serve("--tls-cert", parse_path, is_path, _CERT))
    key: Path = field(
        metadata=_serve("--tls-key", parse_path, is_path, "the certificate's PEM private key")
    )
    client_ca: Path | None = field(
        default=None,
        metadata=_serve("--tls-client-ca", parse_path, optional(is_path), _CLIENT_CA),
    )

    def context(self) -> ssl.SSLContext:
        """Raises SecurityConfigError for unreadable or mismatched files."""
        return server_context(self.cert, self.key, self.client_ca)


@dataclass(frozen=True)
class ServerConfig(Settings):
    """How one server process listens, computes and shuts down."""

    host: str = field(
        default="127.0.0.1",
        metadata=_serve(
            "--host",
            parse_host,
            is_text,
            "address to listen on; 0.0.0.0 or :: for all interfaces",
        ),
    )
    port: int = field(
        default=50051,
        metadata=_serve("--port", parse_int, is_port, "port to listen on; 0 picks a free one"),
    )
    grace: float = field(
        default=30.0,
        metadata=_serve(
            "--grace",
            parse_float,
            is_seconds,
            "seconds in-flight calls may take to finish after SIGTERM",
        ),
    )
    #: Threads running decode and inference when there are no inference processes,
    #: started as calls need them; None means one per CPU. A client's connection is
    #: served by one worker, so with fewer threads than CPUs one client could not
    #: use the whole machine.
    threads: int | None = field(
        default=None,
        metadata=_serve(
            "--threads",
            parse_threads,
            optional(at_least(1)),
            "with --inference-processes 0: threads per worker for decode and inference, "
            "started as calls need them; 0 is one per CPU",
            default_text="0",
        ),
    )
    max_batch_size: int = field(
        default=1,
        metadata=_serve(
            "--max-batch-size",
            parse_int,
            at_least(1),
            "run up to this many concurrent calls as one Model.process_batch; 1 is off",
        ),
    )
    max_batch_delay: float = field(
        default=0.005,
        metadata=_serve(
            "--max-batch-delay", parse_float, is_seconds, "seconds a batch waits to fill"
        ),
    )
    limits: Limits = field(default_factory=Limits, metadata=meta(nested=Limits, group="limits"))
    connections: ConnectionLimits = field(
        default_factory=ConnectionLimits,
        metadata=meta(nested=ConnectionLimits, group="connection guards"),
    )
    #: Bearer tokens Pipeline calls must present (none: no authentication); read by the CLI.
    tokens: tuple[str, ...] = field(
        default=(),
        repr=False,  # secrets stay out of logs and tracebacks
        metadata=_serve(
            "--auth-tokens-file",
            parse_path,
            is_tokens,
            "require 'authorization: Bearer <token>' on Pipeline calls, with a token from "
            "this file, one per line (tokens may also come comma-separated in "
            "EMOTION_AUTH_TOKENS)",
            default_text="off",
            group="security",
            raw=True,
        ),
    )
    #: The file ``tokens`` were read from: on SIGHUP, its tokens and those of
    #: EMOTION_AUTH_TOKENS replace them. Set by the CLI with ``tokens``.
    tokens_file: Path | None = field(default=None, metadata=meta(check=optional(is_path)))
    tls: ServerTls | None = field(default=None, metadata=meta(nested=ServerTls, group="security"))
    metrics_port: int | None = field(
        default=None,
        metadata=_serve(
            "--metrics-port",
            parse_optional_port,
            optional(is_port),
            "serve Prometheus metrics at http://HOST:PORT/metrics; with workers, their sum",
            default_text="off",
        ),
    )
    #: Retire client connections after this long (None: never); the CLI adds --grace.
    max_connection_age: ConnectionAge | None = field(
        default=None,
        metadata=_serve(
            "--max-connection-age",
            parse_age,
            optional(is_a(ConnectionAge)),
            "close client connections after this many seconds (0: never), once idle or "
            "--grace later, so clients reconnect and spread over new replicas",
            default_text="0",
            raw=True,
        ),
    )


@dataclass(frozen=True)
class ServeOptions(Settings):
    """What `emotion serve` runs: which model, how many processes, and each one's server."""

    model: str = field(
        default=DEFAULT_MODEL,
        metadata=_serve("--model", str, is_text, "model to serve, as package.module:ClassName"),
    )
    server: ServerConfig = field(default_factory=ServerConfig, metadata=meta(nested=ServerConfig))
    workers: int | None = field(
        default=None,
        metadata=_serve(
            "--workers",
            parse_int,
            optional(at_least(1)),
            "server processes sharing the port; each loads the model itself only with "
            "--inference-processes 0",
            default_text="one per CPU",
        ),
    )
    #: Processes that decode and run the model, each with the model loaded, shared
    #: by every worker (the supervisor owns them); 0 keeps that work in each
    #: worker's threads. A worker's event loop then has its GIL to itself, which
    #: lets one client connection use every core (benchmarks/README.md, "Pool by
    #: default"). None means one per CPU, or 0 with max_batch_size > 1, since
    #: batches form in a worker's threads.
    inference_processes: int | None = field(
        default=None,
        metadata=_serve(
            "--inference-processes",
            parse_int,
            optional(at_least(0)),
            "processes that decode and infer, each holding the model and shared by "
            "every worker, so one client connection can use every core; 0 does that "
            "work in each worker's threads instead (--threads)",
            default_text="one per CPU; 0 with --max-batch-size above 1",
        ),
    )
    loop: str = field(
        default="asyncio",
        metadata=_serve(
            "--loop",
            str.lower,
            one_of(LOOPS),
            "event loop: asyncio, or uvloop (needs the uvloop extra)",
        ),
    )
    log_level: str = field(
        default="info",
        metadata=_serve(
            "--log-level",
            str.lower,
            one_of(LOG_LEVELS),
            "what to log: debug, info, warning or error",
        ),
    )
    port_file: Path | None = field(
        default=None,
        metadata=_serve(
            "--port-file",
            parse_path,
            optional(is_path),
            "once serving, write the port to this file (removed at start, replaced "
            "atomically), for tools that start a server on port 0",
            default_text="off",
        ),
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.inference_processes and self.server.max_batch_size > 1:
            raise ValueError(
                "ServeOptions.inference_processes (--inference-processes) cannot be combined "
                "with max_batch_size > 1 (--max-batch-size): batches run in the worker's threads"
            )
