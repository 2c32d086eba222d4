"""SORT-like tracking of face boxes, and each track's smoothed expression and summary.

Each track's box is predicted at the new frame's time by a constant-velocity
motion model (its velocity smoothed over its recent frames); detections are
matched to the predictions by overlap (IoU), exactly (emotion.tracking.
assignment), or, failing any overlap, by the distance between centres (a
face moving fast, or a track whose velocity is not known yet); a track not
seen coasts on its velocity for ``max_unseen`` seconds, so a missed
detection or two keeps its id; a detection matched to no track starts a new
one. Nothing here knows gRPC or a model: boxes are four
floats, expressions a list of probabilities.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

from emotion.tracking.assignment import assign

#: x1, y1, x2, y2, in pixels (x1 <= x2, y1 <= y2).
Box = tuple[float, float, float, float]


def iou(a: Box, b: Box) -> float:
    """Intersection over union of two boxes, 0 for disjoint or empty ones."""
    width = min(a[2], b[2]) - max(a[0], b[0])
    height = min(a[3], b[3]) - max(a[1], b[1])
    if width <= 0 or height <= 0:
        return 0.0
    inter = width * height
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


@dataclasses.dataclass(frozen=True)
class Observation:
    """One detection of one frame, as the tracker sees it: whose, and its smoothed expression."""

    track_id: int
    smoothed: tuple[float, ...]


@dataclasses.dataclass(frozen=True)
class TrackSummary:
    """One person over the stream: when seen, how often, and what they mostly expressed.

    ``mean`` weighs each frame by how long it stood (the time to the stream's
    next frame), so a burst of frames after a stall does not outweigh the rest.
    """

    track_id: int
    first_frame: int
    last_frame: int
    frames_seen: int
    first_time: float
    last_time: float
    mean: tuple[float, ...]

    @property
    def dominant(self) -> int:
        """The index of the largest mean probability (the first of equals)."""
        return max(range(len(self.mean)), key=self.mean.__getitem__) if self.mean else -1


@dataclasses.dataclass
class _Track:
    id: int
    box: Box
    time: float  # when last seen
    first_frame: int
    first_time: float
    smoothed: list[float]
    velocity: Box = (0.0, 0.0, 0.0, 0.0)  # pixels per second, each edge
    moved: bool = False  # whether velocity has been measured once
    last_frame: int = 0
    frames_seen: int = 1
    weighted: list[float] = dataclasses.field(default_factory=list)
    duration: float = 0.0
    plain: list[float] = dataclasses.field(default_factory=list)
    pending: list[float] | None = None  # this frame's expression, until its duration is known

    def predicted(self, time: float) -> Box:
        elapsed = time - self.time
        return (
            self.box[0] + self.velocity[0] * elapsed,
            self.box[1] + self.velocity[1] * elapsed,
            self.box[2] + self.velocity[2] * elapsed,
            self.box[3] + self.velocity[3] * elapsed,
        )

    def close_pending(self, duration: float) -> None:
        if self.pending is None:
            return
        for index, value in enumerate(self.pending):
            self.weighted[index] += value * duration
            self.plain[index] += value
        self.duration += duration
        self.pending = None

    def summary(self, last: float) -> TrackSummary:
        """Its summary so far, a frame still pending counted as lasting ``last`` seconds."""
        weighted, duration, plain = list(self.weighted), self.duration, list(self.plain)
        if self.pending is not None:
            weighted = [w + value * last for w, value in zip(weighted, self.pending, strict=True)]
            plain = [p + value for p, value in zip(plain, self.pending, strict=True)]
            duration += last
        if duration > 0:
            mean = [value / duration for value in weighted]
        else:  # frames with equal times: each counts once
            mean = [value / self.frames_seen for value in plain]
        return TrackSummary(
            self.id,
            self.first_frame,
            self.last_frame,
            self.frames_seen,
            self.first_time,
            self.time,
            tuple(mean),
        )


class Tracker:
    """The tracks of one stream. Call :meth:`update` once per frame, in order.

    ``smoothing`` is the time constant, in seconds, of each track's
    exponential smoothing of its expression (0: none); ``max_unseen`` how
    long a track not seen keeps its id; ``min_iou`` the least overlap between
    a track's predicted box and a detection for them to be the same face by
    overlap; ``max_distance`` the farthest, in the predicted box's sizes,
    between centres for them to be the same face without it (any overlap
    match is preferred); ``velocity_weight`` how much each new frame's motion counts against the
    smoothed velocity.
    """

    def __init__(
        self,
        *,
        smoothing: float = 1.0,
        max_unseen: float = 1.0,
        min_iou: float = 0.2,
        max_distance: float = 1.0,
        velocity_weight: float = 0.5,
    ) -> None:
        if not smoothing >= 0 or not max_unseen >= 0 or not 0 < min_iou <= 1:
            raise ValueError("smoothing and max_unseen must be >= 0, min_iou in (0, 1]")
        self.smoothing = smoothing
        self.max_unseen = max_unseen
        self.min_iou = min_iou
        self.max_distance = max_distance
        self.velocity_weight = velocity_weight
        self._live: list[_Track] = []
        self._done: list[_Track] = []
        self._next_id = 1
        self._frame = -1
        self._time = -math.inf
        self._interval = 0.0  # the latest time between two frames

    def update(
        self, boxes: Sequence[Box], expressions: Sequence[Sequence[float]], time: float
    ) -> list[Observation]:
        """This frame's detections, matched to the tracks: one Observation per box, in order.

        ``time`` is the frame's, in seconds; it must not go back.
        """
        if len(boxes) != len(expressions):
            raise ValueError("one expression per box")
        if not math.isfinite(time) or time < self._time:
            raise ValueError(f"frame time {time} is before the previous frame's {self._time}")
        if self._frame >= 0:
            self._interval = time - self._time
        self._frame += 1
        self._time = time
        for track in self._live:
            track.close_pending(self._interval)
        self._retire(time)
        predicted = [track.predicted(time) for track in self._live]
        cost = [[self._cost(box, guess) for box in boxes] for guess in predicted]
        owners: list[_Track | None] = [None] * len(boxes)
        for row, column in assign(cost):
            owners[column] = self._live[row]
        answers = []
        for box, expression, owner in zip(boxes, expressions, owners, strict=True):
            if owner is None:
                track = self._start(box, expression, time)
            else:
                track = owner
                self._follow(track, box, expression, time)
            track.pending = list(expression)
            answers.append(Observation(track.id, tuple(track.smoothed)))
        return answers

    def summaries(self) -> list[TrackSummary]:
        """Every track of the stream so far, by id.

        The latest frame counts as lasting as long as the one before it.
        """
        tracks = sorted(self._done + self._live, key=lambda track: track.id)
        return [track.summary(self._interval) for track in tracks]

    def _cost(self, box: Box, guess: Box) -> float:
        """Below 1 for an overlap match (the more overlap, the less), 1 to 2 for a near one."""
        overlap = iou(box, guess)
        if overlap >= self.min_iou:
            return 1.0 - overlap
        distance = _distance(box, guess)
        if distance <= self.max_distance:
            return 1.0 + distance / (self.max_distance + 1e-9) * 0.999
        return math.inf

    def _retire(self, time: float) -> None:
        keep: list[_Track] = []
        for track in self._live:
            (keep if time - track.time <= self.max_unseen else self._done).append(track)
        self._live = keep

    def _start(self, box: Box, expression: Sequence[float], time: float) -> _Track:
        track = _Track(
            id=self._next_id,
            box=box,
            time=time,
            first_frame=self._frame,
            first_time=time,
            smoothed=_normalized(list(expression)),
            last_frame=self._frame,
            weighted=[0.0] * len(expression),
            plain=[0.0] * len(expression),
        )
        self._next_id += 1
        self._live.append(track)
        return track

    def _follow(self, track: _Track, box: Box, expression: Sequence[float], time: float) -> None:
        elapsed = time - track.time
        if elapsed > 0:
            measured = tuple((new - old) / elapsed for new, old in zip(box, track.box, strict=True))
            weight = self.velocity_weight if track.moved else 1.0
            track.velocity = _blend(track.velocity, measured, weight)
            track.moved = True
        keep = math.exp(-elapsed / self.smoothing) if self.smoothing > 0 else 0.0
        track.smoothed = _normalized(
            [
                keep * old + (1 - keep) * new
                for old, new in zip(track.smoothed, expression, strict=True)
            ]
        )
        track.box = box
        track.time = time
        track.last_frame = self._frame
        track.frames_seen += 1


def _distance(box: Box, guess: Box) -> float:
    """Between the boxes' centres, in the guess's sizes (the mean of its width and height)."""
    size = max((guess[2] - guess[0] + guess[3] - guess[1]) / 2, 1e-9)
    dx = (box[0] + box[2] - guess[0] - guess[2]) / 2
    dy = (box[1] + box[3] - guess[1] - guess[3]) / 2
    return math.hypot(dx, dy) / size


def _blend(old: Box, new: tuple[float, ...], weight: float) -> Box:
    a, b, c, d = (weight * n + (1 - weight) * o for o, n in zip(old, new, strict=True))
    return (a, b, c, d)


def _normalized(values: list[float]) -> list[float]:
    total = sum(values)
    return [value / total for value in values] if total > 0 else values
