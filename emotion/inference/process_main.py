"""An inference process: decodes images and runs the model for every network worker that connects.

The owner (emotion.inference.process_pool, in the supervisor) starts it with one
end of a socket pair and a path. The process loads the model, listens on the
path (a Unix socket, in a directory only this user can enter), and says so on
the socket pair. Network workers (emotion.inference.process_client) connect to the path; each
worker's process then holds its GIL for HTTP/2 and gRPC alone, while Pillow's
Python (JPEG markers, the decoder's loop), the model and the answer's writing
run here. The protocol is a length prefix and raw bytes, nothing pickled:

- to the owner, once: READY, or START_FAILED with the reason;
- on each worker's connection, READY once accepted, with the model's
  description (a written ModelDescription, what Describe answers); then for
  each request, in order: the deadline (a CLOCK_MONOTONIC instant, which
  every process shares; 0 for none), the lengths of the options and of the
  image, the written Options (none for most calls) and the image's bytes;
  the answer is a status, a length, when decoding and the model ran (for
  the worker's trace), and the written Response or the message.

Connections take turns, one image each, so a busy worker cannot starve
another. The process ends when its owner closes the socket pair, or dies.
Its command line is ``FD PATH MODEL MAX_PIXELS LOG_LEVEL``.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import os
import selectors
import signal
import socket
import struct
import sys
import time
import traceback
from typing import NamedTuple

from emotion.codec import InvalidMessage, encode, parse
from emotion.contract import Options
from emotion.decode import InvalidImage
from emotion.inference.pipeline import decode_for, infer, written
from emotion.model import Model, ModelFailure, describe, load_model
from emotion.runtime import LOG_FORMAT, apply_process_settings, configure_logging

# Named, not __name__: run with -m, this module is __main__.
log = logging.getLogger("emotion.inference.process_main")

#: A request's head: its deadline, the length of its written options, of its image.
REQUEST = struct.Struct("!dII")
ANSWER = struct.Struct("!BI")
#: After each answer's head: when decoding and the model started and ended
#: (time.time_ns(), the clock tracing uses; 0 for a step that did not run).
STEPS = struct.Struct("!4q")
#: Seconds a worker has to send the rest of an image it began; then it is cut off.
_BODY_WAIT = 10.0


class Status(enum.IntEnum):
    """What an answer holds."""

    OK = 0  # the written Response; to the owner, READY
    INVALID_IMAGE = 1  # the message for the client
    MODEL_FAILED = 2  # the message for the client, a NUL, the model's traceback
    DEADLINE_PASSED = 3  # the call's deadline passed before its image was read
    START_FAILED = 4  # to the owner only: why the model could not load


READY = Status.OK


class Steps(NamedTuple):
    """When an image's steps ran in its process, for the worker's trace."""

    decode_start: int = 0
    decode_end: int = 0
    model_start: int = 0
    model_end: int = 0


def answer(
    model: Model, image: bytes, deadline: float, max_pixels: int, options: Options | None = None
) -> tuple[Status, bytes, Steps]:
    """Decode ``image`` and run ``model``: a status, what goes with it, and when each step ran."""
    if deadline and time.monotonic() >= deadline:
        return Status.DEADLINE_PASSED, b"", Steps()
    decode_start = time.time_ns()
    try:
        decoded = decode_for(model, image, max_pixels)
    except InvalidImage as exc:
        return Status.INVALID_IMAGE, str(exc).encode(), Steps(decode_start, time.time_ns())
    model_start = time.time_ns()
    try:
        response = infer(model, decoded, options)
        model_end = time.time_ns()
        data = written(model, response, decoded, options)
    except ModelFailure as exc:
        # An answer that cannot be written is the model's failure too.
        steps = Steps(decode_start, model_start, model_start, time.time_ns())
        # The worker logs the call with this traceback; the client gets the message.
        cause = exc.__cause__ or exc
        detail = "".join(traceback.format_exception(cause)).rstrip()
        return Status.MODEL_FAILED, f"{exc}\0{detail}".encode(), steps
    return Status.OK, data, Steps(decode_start, model_start, model_start, model_end)


class _Request(NamedTuple):
    deadline: float
    image: bytes
    options: Options | None


def _read_request(conn: socket.socket) -> _Request | None:
    """The next request on ``conn``, or None once the worker closed it (or stalled)."""
    head = conn.recv(REQUEST.size, socket.MSG_WAITALL)
    if len(head) < REQUEST.size:
        return None
    deadline, options_size, image_size = REQUEST.unpack(head)
    # The worker writes the options and the image right after their head; one
    # that stalls half-way would hold up every other worker's images.
    give_up = time.monotonic() + _BODY_WAIT
    options = None
    if options_size:
        written_options = _read_exactly(conn, options_size, give_up)
        if written_options is None:
            return None
        try:
            options = parse(Options, written_options)
        except InvalidMessage:  # not from a worker of ours
            return None
    image = _read_exactly(conn, image_size, give_up)
    if image is None:
        return None
    return _Request(deadline, image, options)


def _read_exactly(conn: socket.socket, size: int, give_up: float) -> bytes | None:
    """``size`` bytes from ``conn`` by the monotonic instant ``give_up``, or None."""
    data = bytearray(size)
    view = memoryview(data)
    received = 0
    try:
        while received < size:
            left = give_up - time.monotonic()
            if left <= 0:  # a zero timeout would make the socket non-blocking
                return None
            conn.settimeout(left)
            count = conn.recv_into(view[received:])
            if not count:
                return None
            received += count
    except TimeoutError:
        return None
    finally:
        conn.settimeout(None)
    return bytes(data)


def serve(owner: socket.socket, path: str, spec: str, max_pixels: int) -> int:
    """Load ``spec``, listen on ``path``, answer workers until ``owner`` closes; the exit status."""
    name = spec
    try:
        model = load_model(spec)
        name = model.name
        model.load()
    except Exception as exc:
        # The traceback is for the operator's log; the owner gets one line.
        log.error("model %s failed to load", name, exc_info=exc)
        reason = f"model {name} failed to load: {type(exc).__name__}: {exc}".encode()
        owner.sendall(ANSWER.pack(Status.START_FAILED, len(reason)) + reason)
        return 1
    # A process that died before this one left its socket file behind.
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen()
    # Each worker hears what the model is: what its Describe answers.
    ready = ANSWER.pack(READY, 0)
    described = encode(describe(model))
    accepted = ANSWER.pack(READY, len(described)) + described
    owner.sendall(ready)
    with selectors.DefaultSelector() as selector, listener:
        selector.register(owner, selectors.EVENT_READ)
        selector.register(listener, selectors.EVENT_READ)
        while True:
            for key, _ in selector.select():
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                if sock is owner:  # the owner is done with us, or gone
                    _remove(path)
                    model.close()
                    return 0
                if sock is listener:
                    conn, _ = listener.accept()
                    # A process that is exiting may still accept; a worker
                    # takes a connection only once it has heard this.
                    with contextlib.suppress(ConnectionError):
                        conn.sendall(accepted)
                        selector.register(conn, selectors.EVENT_READ)
                        continue
                    conn.close()
                    continue
                request = None
                with contextlib.suppress(ConnectionError):
                    request = _read_request(sock)
                if request is not None:
                    status, payload, steps = answer(
                        model, request.image, request.deadline, max_pixels, request.options
                    )
                    head = ANSWER.pack(status, len(payload)) + STEPS.pack(*steps)
                    with contextlib.suppress(ConnectionError):
                        sock.sendall(head + payload)
                        continue
                selector.unregister(sock)
                sock.close()


def _remove(path: str) -> None:
    """Remove this process's socket, and its directory once it is the last.

    The owner removes the directory when it closes the pool; an owner that
    was killed cannot, and its processes end here all the same.
    """
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    with contextlib.suppress(OSError):  # others' sockets are still there, or it is gone
        os.rmdir(os.path.dirname(path))


def main(argv: list[str]) -> int:
    fd, path, spec, max_pixels, level = argv
    # Ctrl-C reaches the whole process group, and a service manager may send
    # SIGTERM to every process at once: the workers drain their calls first,
    # then the owner closes its socket, which ends this process (or kills it,
    # if it hangs).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    configure_logging(level, LOG_FORMAT)
    apply_process_settings(max_pixels=int(max_pixels))
    with socket.socket(fileno=int(fd)) as owner:
        try:
            return serve(owner, path, spec, int(max_pixels))
        except (BrokenPipeError, ConnectionResetError):
            return 0  # the owner went away: nobody to answer


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
