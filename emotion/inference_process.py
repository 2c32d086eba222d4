"""An inference process: decodes images and runs the model for the network worker that started it.

One end of a socket pair is its only link (emotion.processes holds the
other). The worker's process then holds the GIL for HTTP/2 and gRPC alone;
Pillow's Python (JPEG markers, the decoder's loop), the model and the
answer's writing run here. The protocol is a length prefix and raw bytes,
nothing pickled:

- first, the process says whether the model loaded: READY, or START_FAILED
  with the reason;
- then, for each request, in order: the deadline (a CLOCK_MONOTONIC instant,
  which every process shares; 0 for none), the image's length and bytes; the
  answer is a status, a length, and the written Response or the message.

It ends when the worker closes its end, or dies. Its command line is
``FD MODEL MAX_PIXELS LOG_LEVEL`` (see emotion.processes).
"""

from __future__ import annotations

import enum
import signal
import socket
import struct
import time
import traceback

from emotion.decode import InvalidImage, decode, to_full_size
from emotion.model import Model, ModelFailure, encode_response, load_model, run_sample
from emotion.process import LOG_FORMAT, apply_process_settings, configure_logging

REQUEST = struct.Struct("!dI")
ANSWER = struct.Struct("!BI")


class Status(enum.IntEnum):
    """What an answer holds."""

    OK = 0  # the written Response; first, READY
    INVALID_IMAGE = 1  # the message for the client
    MODEL_FAILED = 2  # the message for the client, a NUL, the model's traceback
    DEADLINE_PASSED = 3  # the call's deadline passed before its image was read
    START_FAILED = 4  # first answer only: why the model could not load


READY = Status.OK


def answer(model: Model, image: bytes, deadline: float, max_pixels: int) -> tuple[Status, bytes]:
    """Decode ``image`` and run ``model``: a status and what goes with it."""
    if deadline and time.monotonic() >= deadline:
        return Status.DEADLINE_PASSED, b""
    try:
        decoded = decode(image, min_size=model.min_size, max_pixels=max_pixels)
    except InvalidImage as exc:
        return Status.INVALID_IMAGE, str(exc).encode()
    try:
        response = run_sample(model, decoded.image)
        to_full_size(response, decoded)
        return Status.OK, encode_response(response, model)
    except ModelFailure as exc:
        # The worker logs the call with this traceback; the client gets the message.
        cause = exc.__cause__ or exc
        detail = "".join(traceback.format_exception(cause)).rstrip()
        return Status.MODEL_FAILED, f"{exc}\0{detail}".encode()


def serve(sock: socket.socket, spec: str, max_pixels: int) -> int:
    """Load ``spec``, then answer requests from ``sock`` until it closes; the exit status."""
    try:
        model = load_model(spec)
        model.load()
    except Exception as exc:
        reason = f"model {spec} failed to load: {type(exc).__name__}: {exc}".encode()
        sock.sendall(ANSWER.pack(Status.START_FAILED, len(reason)) + reason)
        return 1
    sock.sendall(ANSWER.pack(READY, 0))
    with sock.makefile("rb") as incoming:
        while len(head := incoming.read(REQUEST.size)) == REQUEST.size:
            deadline, size = REQUEST.unpack(head)
            image = incoming.read(size)
            if len(image) < size:
                break
            status, payload = answer(model, image, deadline, max_pixels)
            sock.sendall(ANSWER.pack(status, len(payload)) + payload)
    model.close()
    return 0


def main(argv: list[str]) -> int:
    fd, spec, max_pixels, level = argv
    # Ctrl-C reaches the whole process group, and a service manager may send
    # SIGTERM to every process at once: the worker drains its calls first, then
    # closes the socket, which ends this process (or kills it, if it hangs).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    configure_logging(level, LOG_FORMAT)
    apply_process_settings(max_pixels=int(max_pixels))
    with socket.socket(fileno=int(fd)) as sock:
        try:
            return serve(sock, spec, int(max_pixels))
        except (BrokenPipeError, ConnectionResetError):
            return 0  # the worker went away: nobody to answer
