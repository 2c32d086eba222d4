"""`emotion predict`: send images, print one JSON line per image or frame, draw the faces."""

from __future__ import annotations

import asyncio
import collections
import io
import json
import ssl
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from grpclib.const import Status
from grpclib.exceptions import GRPCError, ProtocolError, StreamTerminatedError
from PIL import Image, ImageSequence

from emotion.client.annotate import annotate
from emotion.client.client import Client
from emotion.codec import InvalidMessage
from emotion.config import PredictOptions
from emotion.contract import (
    EXPRESSION_FIELDS,
    LANDMARK_FIELDS,
    BBox,
    Expression,
    Options,
    Response,
    Tracking,
)
from emotion.decode import InvalidImage, decode_image
from emotion.errors import ABOUT_THE_REQUEST
from emotion.observability.environment import tracing_from_environment
from emotion.observability.tracing import Tracer

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}


@dataclass(frozen=True)
class Frame:
    """One image to send: a file, a file in a folder, or a frame of an animation."""

    source: Path
    index: int | None
    data: bytes


class Failed(Exception):
    """Stops the run: the server cannot be reached or answers only errors."""


def images_in(folder: Path) -> list[Path]:
    """The image files of ``folder``, in name order (by their suffix; the server judges content)."""
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def frames(path: Path) -> Iterator[Frame]:
    """The images a path stands for, for streaming.

    A folder gives its image files in name order; an animated GIF or WebP its
    frames (as PNG); any other file itself.
    """
    if path.is_dir():
        for index, child in enumerate(images_in(path)):
            yield Frame(child, index, child.read_bytes())
        return
    data = path.read_bytes()
    try:
        with Image.open(io.BytesIO(data)) as image:
            count = getattr(image, "n_frames", 1)
            if count > 1:
                for index, frame in enumerate(ImageSequence.Iterator(image)):
                    buffer = io.BytesIO()
                    frame.convert("RGBA").save(buffer, "PNG")
                    yield Frame(path, index, buffer.getvalue())
                return
    except (OSError, SyntaxError, ValueError):
        pass  # not something Pillow reads here: let the server say what is wrong
    yield Frame(path, 0, data)


async def run(options: PredictOptions) -> int:
    # The OTEL_* variables, as for `emotion serve`: a CLIENT span per call, sent along.
    # stdout is for the answers, one JSON object a line: spans go to stderr.
    tracing = tracing_from_environment(console=sys.stderr)
    try:
        return await _run(options, tracing)
    finally:
        await asyncio.to_thread(tracing.shutdown, 5.0)  # export the spans, within a bound


async def _run(options: PredictOptions, tracing: Tracer) -> int:
    failed = False
    async with Client(
        options.target,
        timeout=options.timeout,
        tls=options.tls,
        token=options.token,
        max_image_size=options.max_image_size,
        tracing=tracing,
        retry=options.retry,
    ) as client:
        try:
            for path in options.images:
                if options.stream:
                    failed |= not await _stream_one(client, path, options)
                elif await asyncio.to_thread(path.is_dir):
                    failed |= not await _predict_folder(client, path, options)
                else:
                    failed |= not await _predict_one(client, path, options)
        except Failed:
            return 1
    return 1 if failed else 0


async def _predict_folder(client: Client, folder: Path, options: PredictOptions) -> bool:
    """Each image of ``folder`` as a call of its own, in name order."""
    try:
        files = await asyncio.to_thread(images_in, folder)
    except OSError as exc:
        _say(f"{folder}: {exc.strerror or exc}")
        return False
    if not files:
        _say(f"{folder}: no images in it")
        return False
    answered = True
    for path in files:
        answered &= await _predict_one(client, path, options)
    return answered


async def _predict_one(client: Client, path: Path, options: PredictOptions) -> bool:
    try:
        data = await asyncio.to_thread(path.read_bytes)
    except OSError as exc:
        _say(f"{path}: {exc.strerror or exc}")
        return False
    try:
        response = await client.predict(data, options=request_options(options))
    except GRPCError as exc:
        _report(path, exc, options)
        return False
    except ValueError as exc:  # over the size a server accepts: refused before sending
        _say(f"{path}: {exc}; see --max-image-size")
        return False
    except BaseException as exc:
        _fail(options, exc, path)
        raise
    return _emit(Frame(path, None, data), response, options)


async def _stream_one(client: Client, path: Path, options: PredictOptions) -> bool:
    if not await asyncio.to_thread(path.exists):
        _say(f"{path}: No such file or directory")
        return False
    # Frames are read as the server asks for them; only those in flight are held.
    unanswered: collections.deque[Frame] = collections.deque()
    # Where each frame came from, to name a bad one by its file.
    sources: list[str] = []

    async def images() -> AsyncIterator[bytes]:
        for frame in frames(path):
            unanswered.append(frame)
            # A folder's frame is its own file; an animation's is a frame of the file.
            sources.append(
                str(frame.source) if frame.source != path else f"{path} frame {frame.index}"
            )
            yield frame.data

    answered = 0
    drawn = True
    try:
        async for response in client.stream(images(), options=request_options(options)):
            if response.summary is not None:  # a tracked stream's last: answers no frame
                print(json.dumps(summary_to_dict(path, response)), flush=True)
                continue
            drawn &= _emit(unanswered.popleft(), response, options)
            answered += 1
    except GRPCError as exc:
        _report(path, _name_the_frame(exc, sources), options)
        return False
    except (OSError, ValueError) as exc:  # an unreadable or oversized frame, after the others
        if isinstance(exc, OSError) and not exc.filename:  # the connection's, not a frame's
            _fail(options, exc, path)
            raise
        where = getattr(exc, "filename", None) or (unanswered[0].source if unanswered else path)
        _say(f"{where}: {getattr(exc, 'strerror', None) or exc}")
        return False
    except BaseException as exc:
        _fail(options, exc, path)
        raise
    if not answered:
        _say(f"{path}: no images in it")
        return False
    return drawn


def _name_the_frame(exc: GRPCError, sources: list[str]) -> GRPCError:
    """The server names a bad frame by its place in the stream ("image 3: ..."); use its file."""
    place, _, rest = (exc.message or "").partition(": ")
    number = place.removeprefix("image ")
    if place.startswith("image ") and number.isdigit() and int(number) < len(sources):
        return GRPCError(exc.status, f"{sources[int(number)]}: {rest}")
    return exc


def _report(path: Path, exc: GRPCError, options: PredictOptions) -> None:
    if exc.status is Status.DEADLINE_EXCEEDED:
        # The server's clock ran out first: the same timeout as the client's own.
        _say(f"{path}: no answer from {options.target} within {options.timeout:g}s")
        raise Failed
    _say(f"{path}: {exc.status.name}: {exc.message or 'the server gave no reason'}")
    if exc.status not in ABOUT_THE_REQUEST:
        raise Failed


def _fail(options: PredictOptions, exc: BaseException, path: Path) -> None:
    """Turn a transport failure into one line and Failed; let anything else through."""
    if isinstance(exc, InvalidMessage):
        _say(f"{options.target} sent an answer that is {exc}")
        raise Failed from None
    if isinstance(exc, TimeoutError):
        _say(f"{path}: no answer from {options.target} within {options.timeout:g}s")
        raise Failed from None
    if isinstance(exc, ssl.SSLError):
        _say(
            f"cannot reach {options.target} over TLS ({exc.reason or exc}): "
            "is the server serving TLS? Without --tls-cert it serves plaintext: leave out --tls"
        )
        raise Failed from None
    if isinstance(exc, (OSError, ProtocolError, StreamTerminatedError)):
        reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        _say(f"cannot reach {options.target}: {reason}")
        raise Failed from None


def _emit(frame: Frame, response: Response, options: PredictOptions) -> bool:
    """Print the answer, and draw it if asked; False if the drawing failed."""
    print(json.dumps(response_to_dict(frame.source, response, frame.index)), flush=True)
    return options.annotate is None or _draw(frame, response, options)


def _draw(frame: Frame, response: Response, options: PredictOptions) -> bool:
    assert options.annotate is not None
    one_file = (
        not options.stream
        and len(options.images) == 1
        and frame.source == options.images[0]
        and options.annotate.suffix != ""
    )
    if one_file:
        target = options.annotate
    else:
        suffix = "" if frame.index is None or not options.stream else f"-{frame.index:04d}"
        target = options.annotate / f"{frame.source.stem}{suffix}.png"
    try:
        picture = annotate(decode_image(frame.data), response)
        target.parent.mkdir(parents=True, exist_ok=True)
        picture.save(target)
    except (OSError, ValueError, InvalidImage) as exc:  # ValueError: an unknown extension
        _say(f"{frame.source}: cannot write {target}: {exc}")
        return False
    return True


def response_to_dict(path: Path, response: Response, frame: int | None = None) -> dict[str, Any]:
    """The JSON shape `predict` prints: the contract's fields, rounded for reading.

    A face's confidence and landmarks, and the model, are shown where the
    answer has them: a model that fills neither prints what it always did.
    """
    faces = []
    for result in response.response:
        bbox = result.bbox or BBox()
        expression = result.expression or Expression()
        face: dict[str, Any] = {
            "bbox": {k: round(getattr(bbox, k), 2) for k in ("x1", "y1", "x2", "y2")}
        }
        if result.confidence is not None:
            face["confidence"] = round(result.confidence, 4)
        face["expression"] = _rounded(expression)
        if result.track_id is not None:
            face["track"] = result.track_id
        if result.smoothed_expression is not None:
            face["smoothed"] = _rounded(result.smoothed_expression)
        if result.landmarks is not None:
            points = ((k, getattr(result.landmarks, k)) for k in LANDMARK_FIELDS)
            face["landmarks"] = {
                k: [round(p.x, 2), round(p.y, 2)] for k, p in points if p is not None
            }
        faces.append(face)
    shown: dict[str, Any] = {"file": str(path)}
    if frame is not None:
        shown["frame"] = frame
    if response.model is not None:
        shown["model"] = f"{response.model.name} {response.model.version}".strip()
    shown["faces"] = faces
    return shown


def summary_to_dict(path: Path, response: Response) -> dict[str, Any]:
    """The last line of a tracked stream: each track, when seen, and what it mostly expressed."""
    assert response.summary is not None
    tracks = [
        {
            "track": track.track_id,
            "first_frame": track.first_frame,
            "last_frame": track.last_frame,
            "frames_seen": track.frames_seen,
            "seconds": [round(track.first_seconds, 3), round(track.last_seconds, 3)],
            "dominant": track.dominant,
            "mean": _rounded(track.mean_expression or Expression()),
        }
        for track in response.summary.tracks
    ]
    return {"file": str(path), "frames": response.summary.frames, "tracks": tracks}


def _rounded(expression: Expression) -> dict[str, float]:
    return {k: round(getattr(expression, k), 4) for k in EXPRESSION_FIELDS}


def request_options(options: PredictOptions) -> Options | None:
    """The Options that --max-faces, --min-confidence and a --stream ask for; None for none."""
    tracking = Tracking(smoothing_seconds=options.smoothing) if options.track else None
    if not options.max_faces and options.min_confidence is None and tracking is None:
        return None
    return Options(
        max_faces=options.max_faces, min_confidence=options.min_confidence, tracking=tracking
    )


def _say(line: str) -> None:
    print(f"emotion predict: {line}", file=sys.stderr)
