"""`emotion serve`, `emotion predict` and `emotion demo`.

The flags are made from the settings classes in :mod:`emotion.config`
(:mod:`emotion.config.arguments`). Every flag can also come from an
``EMOTION_*`` environment variable, so a container or a systemd unit
configures the server without a command line; a flag given wins.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from emotion.client.predict import run as run_predict
from emotion.config import (
    ClientTls,
    ConnectionAge,
    DemoOptions,
    PredictOptions,
    ServeOptions,
    ServerConfig,
)
from emotion.config.arguments import UsageError, add_flags, values_of
from emotion.config.settings import flags, from_values
from emotion.model import ModelLoadError, load_model
from emotion.runtime import (
    LOG_FORMAT,
    available_cpus,
    configure_logging,
    exit_code,
    run,
    version,
    write_port_file,
)
from emotion.security import TOKENS_VARIABLE, SecurityConfigError, load_tokens, read_token
from emotion.serving.server import ModelStartError, serve
from emotion.serving.sockets import format_address
from emotion.supervision.supervisor import Supervisor, WorkersFailed, inference_process_count

T = TypeVar("T")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="emotion", description="Facial emotion recognition over gRPC."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve_cmd = commands.add_parser(
        "serve",
        help="serve a model over gRPC",
        description="Serve a model over gRPC until SIGTERM/SIGINT, then drain. "
        "SIGHUP reads the TLS and token files again.",
    )
    add_flags(serve_cmd, ServeOptions)
    predict_cmd = commands.add_parser(
        "predict",
        help="send images to a server and print the faces as JSON",
        description="Print one JSON object per image: its file and the faces found.",
    )
    predict_cmd.add_argument(
        "images",
        nargs="+",
        type=Path,
        metavar="IMAGE",
        help="image files (JPEG, PNG, WebP, BMP, GIF, TIFF), or folders of them; with --stream, "
        "each is one stream: an animated GIF or WebP, or a folder of frames",
    )
    add_flags(predict_cmd, PredictOptions)
    demo_cmd = commands.add_parser(
        "demo",
        help="a browser page (Gradio) that sends uploads and webcam frames to a server",
        description="Serve a Gradio page that answers through a running `emotion serve`. "
        "Needs the extra: pip install 'emotion[demo]'.",
    )
    add_flags(demo_cmd, DemoOptions)
    return parser


def serve_options(args: argparse.Namespace, environ: Mapping[str, str]) -> ServeOptions:
    """What `emotion serve`'s flags and variables ask for, with the CPU-based defaults filled in.

    Raises UsageError for bad values, SecurityConfigError for an unusable token file.
    """
    values = values_of(args, ServeOptions, environ)
    tokens_file = values.get("auth_tokens_file")
    tokens = load_tokens(tokens_file, environ.get(TOKENS_VARIABLE))
    try:
        server = from_values(
            ServerConfig,
            values,
            tokens=tuple(tokens),
            tokens_file=tokens_file,
            max_connection_age=None,
        )
        workers = values.get("workers") or available_cpus()
        age = values.get("max_connection_age", 0)
        server = replace(
            server,
            threads=server.threads or available_cpus(),
            max_connection_age=ConnectionAge(age, grace=server.grace) if age else None,
        )
        options = from_values(ServeOptions, values, server=server, workers=workers)
        return replace(options, inference_processes=inference_process_count(options))
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def predict_options(args: argparse.Namespace, environ: Mapping[str, str]) -> PredictOptions:
    """What `emotion predict`'s flags and variables ask for.

    Raises UsageError for bad values, SecurityConfigError for unusable TLS or token files.
    """
    values = values_of(args, PredictOptions, environ)
    return _client_options(PredictOptions, values, environ, images=args.images)


def demo_options(args: argparse.Namespace, environ: Mapping[str, str]) -> DemoOptions:
    """What `emotion demo`'s flags and variables ask for; raises as :func:`predict_options`."""
    return _client_options(DemoOptions, values_of(args, DemoOptions, environ), environ)


def _client_options(
    cls: type[T], values: dict[str, Any], environ: Mapping[str, str], **given: Any
) -> T:
    """A client command's options, with its TLS files and token read now."""
    token = read_token(values.get("token_file"), environ.get("EMOTION_TOKEN"))
    try:
        tls = None
        if values.get("tls") or any(flag.dest in values for _, flag in flags(ClientTls)):
            tls = from_values(ClientTls, values)
            tls.context()  # unreadable files: one line now, not one per image
        return from_values(cls, values, tls=tls, token=token, **given)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    make_options, start, unusable_files = _COMMANDS[args.command]
    try:
        options = make_options(args, os.environ)
    except UsageError as exc:
        parser.exit(2, f"emotion {args.command}: error: {exc}\n")
    except SecurityConfigError as exc:
        print(f"emotion {args.command}: {exc}", file=sys.stderr)
        return unusable_files
    return start(options)


def _predict(options: PredictOptions) -> int:
    return asyncio.run(run_predict(options))


def _demo(options: DemoOptions) -> int:
    try:
        from emotion.client import demo  # Gradio is an extra: imported only for this command
    except ModuleNotFoundError as exc:
        if (exc.name or "").partition(".")[0] != "gradio":
            raise
        print("emotion demo: Gradio is not installed: pip install 'emotion[demo]'", file=sys.stderr)
        return 1
    return demo.run(options)


class _StopBeforeServing(BaseException):
    """SIGTERM or SIGINT arrived before the server could handle it itself.

    A BaseException, like KeyboardInterrupt, so that code catching Exception
    (a model's import, load_model) lets it through.
    """


def _stop_before_serving(signum: int, frame: object) -> None:
    raise _StopBeforeServing


def _serve(options: ServeOptions) -> int:
    configure_logging(options.log_level, LOG_FORMAT)
    # Importing a model can take seconds; a stop signal meanwhile is a clean exit.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, _stop_before_serving)
    # SIGHUP reads the TLS and token files again once serving; until then it
    # must not kill, and the files are read at the start anyway.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    # Find models in the working directory, as `python -m emotion` would.
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    config = options.server
    port_file = options.port_file
    if port_file is not None and not _clear_port_file(port_file):
        return 1
    try:
        if config.tls is not None:
            config.tls.context()  # fail now, in one line, not in every worker
        # Workers import the model themselves; importing it here first turns a
        # wrong --model into one line before any process starts.
        model = load_model(options.model)
        # Inference processes are the supervisor's, even for a single worker.
        if options.workers == 1 and not options.inference_processes:
            on_serving = None if port_file is None else partial(write_port_file, port_file)
            run(serve(model, config, on_serving=on_serving), options.loop)
        else:
            del model
            Supervisor(options, log_format=LOG_FORMAT).run()
    except _StopBeforeServing:
        logging.getLogger(__name__).info("stopped before serving")
    except (ModelLoadError, ModelStartError, WorkersFailed, SecurityConfigError) as exc:
        print(f"emotion serve: {exc}", file=sys.stderr)
        return exit_code(1)
    except OSError as exc:
        reason = exc.strerror or (os.strerror(exc.errno) if exc.errno else str(exc))
        print(
            f"emotion serve: cannot listen on {format_address(config.host, config.port)}: {reason}",
            file=sys.stderr,
        )
        return exit_code(1)
    return exit_code(0)


def _clear_port_file(path: Path) -> bool:
    """Remove a port file an earlier run left (it names no server); False if unwritable."""
    try:
        path.unlink(missing_ok=True)
    except OSError as exc:
        print(f"emotion serve: cannot write {path}: {exc.strerror or exc}", file=sys.stderr)
        return False
    if not path.parent.is_dir() or not os.access(path.parent, os.W_OK):
        reason = "no such folder" if not path.parent.is_dir() else "permission denied"
        print(f"emotion serve: cannot write {path}: {reason}", file=sys.stderr)
        return False
    return True


#: Each command: its options from flags and variables, what runs them, and the
#: exit code when a certificate or token file is unusable (a server's setup
#: fails with 1; a client's files are part of its usage).
_COMMANDS: dict[
    str, tuple[Callable[[argparse.Namespace, Mapping[str, str]], Any], Callable[[Any], int], int]
] = {
    "serve": (serve_options, _serve, 1),
    "predict": (predict_options, _predict, 2),
    "demo": (demo_options, _demo, 2),
}
