"""A tracked StreamPipeline call: the tracker (emotion.tracking) run over its answers.

The answers come from the backend already encoded; a tracked call reads each
back, adds track ids and smoothed expressions, and writes it again, in the
order the frames came. An untracked call never comes here, so its answers
are the bytes they always were.
"""

from __future__ import annotations

import math

from emotion.codec import Encoded, encode, parse
from emotion.contract import (
    EXPRESSION_FIELDS,
    Expression,
    Request,
    Response,
    StreamSummary,
    Tracking,
    TrackSummary,
)
from emotion.model import InvalidOptions
from emotion.tracking import Box, Tracker
from emotion.tracking import TrackSummary as Summary

#: The contract's defaults for Tracking's unset fields (emotion.proto says them).
DEFAULT_SMOOTHING_SECONDS = 1.0
DEFAULT_FRAME_RATE = 30.0
#: How long a face unseen keeps its id (missed detections, a turn of the head),
#: and how much overlap with its predicted box a detection needs: tuned on
#: benchmarks/tracking.py's video.
MAX_UNSEEN_SECONDS = 1.0
MIN_IOU = 0.2


class StreamTracks:
    """The tracks of one call, asked for by its first request's ``options.tracking``."""

    def __init__(self, tracking: Tracking, first: Request) -> None:
        smoothing = _positive_or_default(
            tracking.smoothing_seconds, DEFAULT_SMOOTHING_SECONDS, "smoothing_seconds"
        )
        self._frame_rate = _positive_or_default(
            tracking.frame_rate, DEFAULT_FRAME_RATE, "frame_rate"
        )
        self._timed = first.frame_time is not None
        self._last_time = -math.inf
        self._frames = 0
        self._tracker = Tracker(smoothing=smoothing, max_unseen=MAX_UNSEEN_SECONDS, min_iou=MIN_IOU)

    @classmethod
    def asked(cls, first: Request) -> StreamTracks | None:
        """The call's tracks if its first request asks for them; InvalidOptions for bad ones."""
        options = first.options
        if options is None or options.tracking is None:
            return None
        try:
            return cls(options.tracking, first)
        except InvalidOptions as exc:
            raise InvalidOptions(f"image 0: {exc}") from None

    def time_of(self, request: Request, index: int) -> float:
        """The frame's time in seconds, checked as the requests arrive (in order)."""
        if not self._timed:
            if request.frame_time is not None:
                raise InvalidOptions(
                    f"image {index}: request.frame_time is set, but the stream's first image "
                    "had none; set it on every image or on none"
                )
            return index / self._frame_rate
        time = request.frame_time
        if time is None:
            raise InvalidOptions(
                f"image {index}: request.frame_time is unset, but the stream's first image "
                "had one; set it on every image or on none"
            )
        if not math.isfinite(time) or time < self._last_time:
            raise InvalidOptions(
                f"image {index}: request.frame_time is {time:g}, before the previous image's "
                f"{self._last_time:g}; frame times must be finite and never go back"
            )
        self._last_time = time
        return time

    def follow(self, answer: Encoded, time: float) -> Encoded:
        """The frame's answer with each face's track id and smoothed expression."""
        response = parse(Response, answer.data)
        boxes: list[Box] = []
        expressions: list[list[float]] = []
        for face in response.response:
            b = face.bbox
            boxes.append((b.x1, b.y1, b.x2, b.y2) if b is not None else (0.0, 0.0, 0.0, 0.0))
            expressions.append(_probabilities(face.expression))
        observations = self._tracker.update(boxes, expressions, time)
        for face, observation in zip(response.response, observations, strict=True):
            face.track_id = observation.track_id
            face.smoothed_expression = Expression(
                **dict(zip(EXPRESSION_FIELDS, observation.smoothed, strict=True))
            )
        self._frames += 1
        return Encoded(encode(response))

    def summary(self) -> Encoded:
        """The call's last Response: every track, and how many frames were answered."""
        tracks = [_summary(track) for track in self._tracker.summaries()]
        return Encoded(encode(Response(summary=StreamSummary(tracks=tracks, frames=self._frames))))


def _positive_or_default(value: float, default: float, name: str) -> float:
    if math.isnan(value) or value < 0:
        raise InvalidOptions(
            f"request.options.tracking.{name} is {value:g}; send a positive number, "
            "or 0 for the server's default"
        )
    return value or default


def _probabilities(expression: Expression | None) -> list[float]:
    if expression is None:
        return [0.0] * len(EXPRESSION_FIELDS)
    return [float(getattr(expression, name)) for name in EXPRESSION_FIELDS]


def _summary(track: Summary) -> TrackSummary:
    return TrackSummary(
        track_id=track.track_id,
        first_frame=track.first_frame,
        last_frame=track.last_frame,
        frames_seen=track.frames_seen,
        first_seconds=track.first_time,
        last_seconds=track.last_time,
        mean_expression=Expression(**dict(zip(EXPRESSION_FIELDS, track.mean, strict=True))),
        dominant=EXPRESSION_FIELDS[track.dominant] if track.mean else "",
    )
