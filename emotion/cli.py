"""`emotion serve` and `emotion predict`.

Every flag of ``serve`` defaults to an ``EMOTION_*`` environment variable, so
a container or a systemd unit configures the server without a command line.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from emotion.client import DEFAULT_TARGET, parse_target
from emotion.decode import DEFAULT_MAX_PIXELS
from emotion.model import ModelLoadError, load_model
from emotion.net import format_address
from emotion.predict import Options as PredictOptions
from emotion.predict import run as run_predict
from emotion.process import LOOPS, available_cpus, exit_code, run
from emotion.security import (
    ClientTls,
    SecurityConfigError,
    ServerTls,
    load_tokens,
    read_token,
)
from emotion.server import ModelStartError, ServerConfig, serve
from emotion.service import DEFAULT_MAX_MESSAGE_SIZE, Limits
from emotion.supervisor import Supervisor, WorkersFailed
from emotion.transport import ConnectionAge

DEFAULT_MODEL = "emotion.models.fer:FerModel"
LOG_FORMAT = "%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s"


def _env(name: str, default: str) -> str:
    return os.environ.get(f"EMOTION_{name}", default)


def _target(text: str) -> str:
    try:
        parse_target(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _seconds(text: str) -> float:
    value = float(text)
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"{text} is not a number of seconds")
    return value


def _timeout(text: str) -> float:
    value = _seconds(text)
    if value == 0:
        raise argparse.ArgumentTypeError("the timeout must be more than 0")
    return value


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{text} is not a port (0-65535; 0 picks a free one)")
    return value


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} is negative")
    return value


def _host(text: str) -> str:
    # Accept the bracketed IPv6 form that targets use.
    return text[1:-1] if text.startswith("[") and text.endswith("]") else text


LOG_LEVELS = ("debug", "info", "warning", "error")


def _log_level(text: str) -> str:
    if text.lower() not in LOG_LEVELS:
        raise argparse.ArgumentTypeError(f"{text!r} is not one of {', '.join(LOG_LEVELS)}")
    return text.lower()


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive number")
    return value


_BYTE_UNITS = {
    "": 1,
    "k": 1000,
    "kb": 1000,
    "kib": 1024,
    "m": 10**6,
    "mb": 10**6,
    "mib": 1024**2,
    "g": 10**9,
    "gb": 10**9,
    "gib": 1024**3,
}


def _size(text: str) -> int:
    """Bytes, as a number with an optional unit: 17825792, 17MiB, 20MB."""
    number = text.rstrip("kKmMgGiIbB")
    unit = text[len(number) :].lower()
    try:
        value = float(number) * _BYTE_UNITS[unit]
    except (ValueError, KeyError):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a size (a number of bytes, or with KiB, MiB, GiB, kB, MB, GB)"
        ) from None
    if not math.isfinite(value) or value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive size")
    return int(value)


def _pixels(text: str) -> int:
    """A pixel count, plain or in megapixels: 50000000 or 50M."""
    scale = 1_000_000 if text.lower().endswith("m") else 1
    try:
        value = float(text[:-1] if scale > 1 else text) * scale
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a pixel count (e.g. 50M)") from None
    if not math.isfinite(value) or value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive pixel count")
    return int(value)


def _file(text: str) -> Path | None:
    return Path(text) if text else None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="emotion", description="Facial emotion recognition over gRPC."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve_cmd = commands.add_parser(
        "serve",
        help="serve a model over gRPC",
        description="Serve a model over gRPC until SIGTERM/SIGINT, then drain.",
    )
    serve_cmd.add_argument(
        "--model",
        default=_env("MODEL", DEFAULT_MODEL),
        help="model to serve, as package.module:ClassName (env EMOTION_MODEL; default %(default)s)",
    )
    serve_cmd.add_argument(
        "--host",
        type=_host,
        default=_env("HOST", "127.0.0.1"),
        help="address to listen on; 0.0.0.0 or :: for all interfaces "
        "(env EMOTION_HOST; default %(default)s)",
    )
    serve_cmd.add_argument(
        "--port",
        type=_port,
        default=_env("PORT", "50051"),
        help="port to listen on (env EMOTION_PORT; default %(default)s)",
    )
    serve_cmd.add_argument(
        "--grace",
        type=_seconds,
        default=_env("GRACE", "30"),
        help="seconds in-flight calls may take to finish after SIGTERM "
        "(env EMOTION_GRACE; default %(default)s)",
    )
    serve_cmd.add_argument(
        "--workers",
        type=_positive_int,
        default=_env("WORKERS", str(available_cpus())),
        help="server processes sharing the port, each with its own model "
        "(env EMOTION_WORKERS; default: one per CPU, here %(default)s)",
    )
    serve_cmd.add_argument(
        "--threads",
        type=_count,
        default=_env("THREADS", "0"),
        help="threads per worker for decode and inference; 0 shares the CPUs among the "
        "workers, at least one each (env EMOTION_THREADS; default %(default)s)",
    )
    serve_cmd.add_argument(
        "--max-batch-size",
        type=_positive_int,
        default=_env("MAX_BATCH_SIZE", "1"),
        help="run up to this many concurrent calls as one Model.process_batch; 1 is off "
        "(env EMOTION_MAX_BATCH_SIZE; default %(default)s)",
    )
    serve_cmd.add_argument(
        "--max-batch-delay",
        type=_seconds,
        default=_env("MAX_BATCH_DELAY", "0.005"),
        help="seconds a batch waits to fill (env EMOTION_MAX_BATCH_DELAY; default %(default)s)",
    )
    limits = serve_cmd.add_argument_group("limits")
    limits.add_argument(
        "--max-message-size",
        type=_size,
        default=_env("MAX_MESSAGE_SIZE", str(DEFAULT_MAX_MESSAGE_SIZE)),
        help="largest request message; larger ones get RESOURCE_EXHAUSTED before their body "
        "is read (env EMOTION_MAX_MESSAGE_SIZE; default 16 MiB plus 64 KiB)",
    )
    limits.add_argument(
        "--max-pixels",
        type=_pixels,
        default=_env("MAX_PIXELS", str(DEFAULT_MAX_PIXELS)),
        help="largest image, width x height, e.g. 50M; larger ones get INVALID_ARGUMENT "
        "before decoding (env EMOTION_MAX_PIXELS; default %(default)s)",
    )
    limits.add_argument(
        "--max-queue",
        type=_count,
        default=_env("MAX_QUEUE", "64"),
        help="calls a worker takes beyond its inference threads before answering "
        "RESOURCE_EXHAUSTED (env EMOTION_MAX_QUEUE; default %(default)s)",
    )
    security = serve_cmd.add_argument_group("security")
    security.add_argument(
        "--tls-cert",
        type=_file,
        default=_env("TLS_CERT", ""),
        help="serve TLS with this PEM certificate chain (env EMOTION_TLS_CERT)",
    )
    security.add_argument(
        "--tls-key",
        type=_file,
        default=_env("TLS_KEY", ""),
        help="the certificate's PEM private key (env EMOTION_TLS_KEY)",
    )
    security.add_argument(
        "--tls-client-ca",
        type=_file,
        default=_env("TLS_CLIENT_CA", ""),
        help="require client certificates signed by this CA: mutual TLS "
        "(env EMOTION_TLS_CLIENT_CA)",
    )
    security.add_argument(
        "--auth-tokens-file",
        type=_file,
        default=_env("AUTH_TOKENS_FILE", ""),
        help="require 'authorization: Bearer <token>' on Pipeline calls, with a token from "
        "this file, one per line (env EMOTION_AUTH_TOKENS_FILE; tokens may also come "
        "comma-separated in EMOTION_AUTH_TOKENS)",
    )
    serve_cmd.add_argument(
        "--max-connection-age",
        type=_seconds,
        default=_env("MAX_CONNECTION_AGE", "0"),
        help="close client connections after this many seconds (0: never), once idle or "
        "--grace later, so clients reconnect and spread over new replicas "
        "(env EMOTION_MAX_CONNECTION_AGE; default %(default)s)",
    )
    serve_cmd.add_argument(
        "--metrics-port",
        type=_port,
        default=_env("METRICS_PORT", "") or None,
        help="serve Prometheus metrics at http://HOST:PORT/metrics; with workers, their sum "
        "(env EMOTION_METRICS_PORT; default: off)",
    )
    serve_cmd.add_argument(
        "--loop",
        choices=LOOPS,
        type=str.lower,
        default=_env("LOOP", "asyncio"),
        help="event loop; uvloop needs the uvloop extra (env EMOTION_LOOP; default %(default)s)",
    )
    serve_cmd.add_argument(
        "--log-level",
        type=_log_level,
        default=_env("LOG_LEVEL", "info"),
        metavar="{" + ",".join(LOG_LEVELS) + "}",
        help="(env EMOTION_LOG_LEVEL; default %(default)s)",
    )

    predict_cmd = commands.add_parser(
        "predict",
        help="send images to a server and print the faces as JSON",
        description="Print one JSON object per image: its file and the faces found.",
    )
    predict_cmd.add_argument("images", nargs="+", type=Path, metavar="IMAGE")
    predict_cmd.add_argument(
        "--target",
        type=_target,
        default=_env("TARGET", DEFAULT_TARGET),
        help="server address as host:port (env EMOTION_TARGET; default %(default)s)",
    )
    predict_cmd.add_argument(
        "--stream",
        action="store_true",
        help="send each IMAGE as one stream: the frames of an animated GIF or WebP, or the "
        "images in a folder; prints one line per frame",
    )
    predict_cmd.add_argument(
        "--annotate",
        type=Path,
        metavar="PATH",
        help="draw the faces and their top expression: into PATH for one image, else into "
        "the folder PATH as NAME.png (NAME-FRAME.png when streaming)",
    )
    predict_cmd.add_argument(
        "--tls",
        action="store_true",
        default=bool(_env("TLS", "")),
        help="connect with TLS, checking the server against the system's CAs (env EMOTION_TLS=1)",
    )
    predict_cmd.add_argument(
        "--tls-ca",
        type=_file,
        default=_env("TLS_CA", ""),
        help="connect with TLS, checking the server against this CA (env EMOTION_TLS_CA)",
    )
    predict_cmd.add_argument(
        "--tls-cert",
        type=_file,
        default=_env("CLIENT_CERT", ""),
        help="client certificate for mutual TLS (env EMOTION_CLIENT_CERT)",
    )
    predict_cmd.add_argument(
        "--tls-key",
        type=_file,
        default=_env("CLIENT_KEY", ""),
        help="the client certificate's private key (env EMOTION_CLIENT_KEY)",
    )
    predict_cmd.add_argument(
        "--token-file",
        type=_file,
        default=_env("TOKEN_FILE", ""),
        help="send 'authorization: Bearer <token>' with the token in this file "
        "(env EMOTION_TOKEN_FILE; or the token itself in EMOTION_TOKEN)",
    )
    predict_cmd.add_argument(
        "--timeout",
        type=_timeout,
        default=30.0,
        help="seconds to wait for each answer (default %(default)s)",
    )
    _add_demo_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "serve":
        return _serve(args)
    if args.command == "demo":
        return _demo(args)
    try:
        tls = None
        if args.tls or args.tls_ca or args.tls_cert or args.tls_key:
            tls = ClientTls(args.tls_ca, args.tls_cert, args.tls_key)
            tls.context()
        token = read_token(args.token_file, os.environ.get("EMOTION_TOKEN"))
    except SecurityConfigError as exc:
        print(f"emotion predict: {exc}", file=sys.stderr)
        return 2
    if args.stream and args.annotate is not None and args.annotate.suffix:
        print(
            "emotion predict: with --stream, --annotate names a folder for the frames, "
            f"not a file like {args.annotate}",
            file=sys.stderr,
        )
        return 2
    options = PredictOptions(
        images=args.images,
        target=args.target,
        timeout=args.timeout,
        tls=tls,
        token=token,
        stream=args.stream,
        annotate=args.annotate,
    )
    return asyncio.run(run_predict(options))


def server_config(args: argparse.Namespace) -> ServerConfig:
    """The server settings that `emotion serve`'s flags name.

    Raises SecurityConfigError for unusable certificate or token settings.
    """
    threads = args.threads or max(1, available_cpus() // args.workers)
    tls = None
    if args.tls_cert is not None or args.tls_key is not None:
        if args.tls_cert is None or args.tls_key is None:
            raise SecurityConfigError("TLS needs both --tls-cert and --tls-key")
        tls = ServerTls(args.tls_cert, args.tls_key, args.tls_client_ca)
        tls.context()  # fail now, in one line, not in every worker
    elif args.tls_client_ca is not None:
        raise SecurityConfigError("--tls-client-ca needs --tls-cert and --tls-key")
    tokens = load_tokens(args.auth_tokens_file, os.environ.get("EMOTION_AUTH_TOKENS"))
    return ServerConfig(
        host=args.host,
        port=args.port,
        grace=args.grace,
        threads=threads,
        max_batch_size=args.max_batch_size,
        max_batch_delay=args.max_batch_delay,
        limits=Limits(
            max_message_size=args.max_message_size,
            max_pixels=args.max_pixels,
            max_queue=args.max_queue,
        ),
        tokens=tuple(tokens),
        tls=tls,
        metrics_port=args.metrics_port,
        max_connection_age=ConnectionAge(args.max_connection_age, grace=args.grace)
        if args.max_connection_age
        else None,
    )


class _StopBeforeServing(BaseException):
    """SIGTERM or SIGINT arrived before the server could handle it itself.

    A BaseException, like KeyboardInterrupt, so that code catching Exception
    (a model's import, load_model) lets it through.
    """


def _stop_before_serving(signum: int, frame: object) -> None:
    raise _StopBeforeServing


def _serve(args: argparse.Namespace) -> int:
    level = getattr(logging, args.log_level.upper())
    logging.basicConfig(level=level, format=LOG_FORMAT)
    # Importing a model can take seconds; a stop signal meanwhile is a clean exit.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, _stop_before_serving)
    # Find models in the working directory, as `python -m emotion` would.
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        config = server_config(args)
        # Workers import the model themselves; importing it here first turns a
        # wrong --model into one line before any process starts.
        model = load_model(args.model)
        if args.workers == 1:
            run(serve(model, config), args.loop)
        else:
            del model
            supervisor = Supervisor(
                args.model,
                config,
                args.workers,
                loop=args.loop,
                log_level=level,
                log_format=LOG_FORMAT,
            )
            supervisor.run()
    except _StopBeforeServing:
        logging.getLogger(__name__).info("stopped before serving")
    except (ModelLoadError, ModelStartError, WorkersFailed, SecurityConfigError) as exc:
        print(f"emotion serve: {exc}", file=sys.stderr)
        return exit_code(1)
    except OSError as exc:
        reason = exc.strerror or (os.strerror(exc.errno) if exc.errno else str(exc))
        print(
            f"emotion serve: cannot listen on {format_address(args.host, args.port)}: {reason}",
            file=sys.stderr,
        )
        return exit_code(1)
    return exit_code(0)


# `emotion demo`: the Gradio page. Gradio is imported only here, lazily, so the
# core install stays small and the other commands never pay for it.


def _demo_port(text: str) -> int:
    value = int(text)
    if not 0 < value <= 65535:
        raise argparse.ArgumentTypeError(f"{text} is not a port (1-65535)")
    return value


def _add_demo_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    demo_cmd = commands.add_parser(
        "demo",
        help="a browser page (Gradio) that sends uploads and webcam frames to a server",
        description="Serve a Gradio page that answers through a running `emotion serve`. "
        "Needs the extra: pip install 'emotion[demo]'.",
    )
    demo_cmd.add_argument(
        "--target",
        type=_target,
        default=_env("TARGET", DEFAULT_TARGET),
        help="server address as host:port (env EMOTION_TARGET; default %(default)s)",
    )
    demo_cmd.add_argument(
        "--host",
        type=_host,
        default=_env("DEMO_HOST", "127.0.0.1"),
        help="address the page listens on (env EMOTION_DEMO_HOST; default %(default)s)",
    )
    demo_cmd.add_argument(
        "--port",
        type=_demo_port,
        default=_env("DEMO_PORT", "7860"),
        help="port the page listens on (env EMOTION_DEMO_PORT; default %(default)s)",
    )
    demo_cmd.add_argument(
        "--tls",
        action="store_true",
        default=bool(_env("TLS", "")),
        help="connect with TLS, checking the server against the system's CAs (env EMOTION_TLS=1)",
    )
    demo_cmd.add_argument(
        "--tls-ca",
        type=_file,
        default=_env("TLS_CA", ""),
        help="connect with TLS, checking the server against this CA (env EMOTION_TLS_CA)",
    )
    demo_cmd.add_argument(
        "--tls-cert",
        type=_file,
        default=_env("CLIENT_CERT", ""),
        help="client certificate for mutual TLS (env EMOTION_CLIENT_CERT)",
    )
    demo_cmd.add_argument(
        "--tls-key",
        type=_file,
        default=_env("CLIENT_KEY", ""),
        help="the client certificate's private key (env EMOTION_CLIENT_KEY)",
    )
    demo_cmd.add_argument(
        "--token-file",
        type=_file,
        default=_env("TOKEN_FILE", ""),
        help="send 'authorization: Bearer <token>' with the token in this file "
        "(env EMOTION_TOKEN_FILE; or the token itself in EMOTION_TOKEN)",
    )
    demo_cmd.add_argument(
        "--timeout",
        type=_timeout,
        default=30.0,
        help="seconds to wait for each answer (default %(default)s)",
    )


def _demo(args: argparse.Namespace) -> int:
    try:
        from emotion import demo
    except ModuleNotFoundError as exc:
        if (exc.name or "").partition(".")[0] != "gradio":
            raise
        print("emotion demo: Gradio is not installed: pip install 'emotion[demo]'", file=sys.stderr)
        return 1
    try:
        tls = None
        if args.tls or args.tls_ca or args.tls_cert or args.tls_key:
            tls = ClientTls(args.tls_ca, args.tls_cert, args.tls_key)
            tls.context()
        token = read_token(args.token_file, os.environ.get("EMOTION_TOKEN"))
    except SecurityConfigError as exc:
        print(f"emotion demo: {exc}", file=sys.stderr)
        return 2
    options = demo.DemoOptions(
        target=args.target,
        host=args.host,
        port=args.port,
        timeout=args.timeout,
        tls=tls,
        token=token,
    )
    return demo.run(options)
