"""The test videos of benchmarks/tracking.py, with who is who known, and how a tracker is scored.

Two videos. The synthetic one is boxes only, as a detector would give them:
four people (two crossing, one leaving the picture for 3 s and coming back,
one whose detection drops out in bursts), each box jittered, 3% of
detections dropped at random, and each face's seven probabilities a noisy
mixture around its true expression, which changes once per person; the
noise drifts over about 0.2 s, mild or hard (NOISE). The
pasted one is pictures for the real model: the four faces of the package's
group photo (emotion/testing/data) cut out and pasted onto a grey canvas,
moving the same way, with a few frames where a face is covered (a missed
detection the tracker has to bridge).
"""

from __future__ import annotations

import io
import itertools
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources

from PIL import Image

from emotion.contract import EXPRESSION_FIELDS
from emotion.tracking import Box, assign

LABELS = len(EXPRESSION_FIELDS)
NEUTRAL, HAPPINESS, SADNESS, SURPRISE = (
    EXPRESSION_FIELDS.index(name) for name in ("neutral", "happiness", "sadness", "surprise")
)
WIDTH, HEIGHT = 960, 540


@dataclass(frozen=True)
class Person:
    """Where a person is at time t (None: out of the picture), and what they express."""

    name: str
    start: tuple[float, float]
    velocity: tuple[float, float]  # pixels per second
    size: float
    labels: tuple[tuple[float, int], ...]  # (from time, label), in order
    away: tuple[float, float] | None = None  # out of the picture in [from, to)
    covered: tuple[tuple[float, float], ...] = ()  # undetected in these [from, to)

    def box(self, t: float) -> Box | None:
        if self.away is not None and self.away[0] <= t < self.away[1]:
            return None
        x = self.start[0] + self.velocity[0] * t
        y = self.start[1] + self.velocity[1] * t
        if x < 0 or y < 0 or x + self.size > WIDTH or y + self.size > HEIGHT:
            return None
        return (x, y, x + self.size, y + self.size)

    def label(self, t: float) -> int:
        return [label for start, label in self.labels if start <= t][-1]

    def hidden(self, t: float) -> bool:
        return any(a <= t < b for a, b in self.covered)


def cast(seconds: float) -> list[Person]:
    """Two crossing at mid-time, one leaving and coming back, one covered in bursts."""
    half = seconds / 2
    speed = (WIDTH - 220) / seconds
    return [
        Person("a", (40, 180), (speed, 0), 140, ((0, NEUTRAL), (half + 1, HAPPINESS))),
        Person("b", (WIDTH - 180, 200), (-speed, 0), 140, ((0, HAPPINESS), (half - 2, SURPRISE))),
        Person(
            "c", (380, 20), (8, 0), 120, ((0, SADNESS), (half, NEUTRAL)),
            away=(0.35 * seconds, 0.35 * seconds + 3.0),
        ),
        Person(
            "d", (760, 380), (-10, -3), 130, ((0, NEUTRAL), (0.7 * seconds, HAPPINESS)),
            covered=((0.2 * seconds, 0.2 * seconds + 0.1), (0.6 * seconds, 0.6 * seconds + 0.15)),
        ),
    ]  # fmt: skip


@dataclass
class Detection:
    person: str
    box: Box
    probabilities: list[float]
    track_id: int = 0
    smoothed: tuple[float, ...] = ()


@dataclass
class VideoFrame:
    time: float
    detections: list[Detection] = field(default_factory=list)
    picture: bytes = b""


#: How far each face's probabilities stray from its true expression: the
#: spread of the drifting noise, and the weight the true label keeps.
NOISE = {"mild": (1.0, 0.3), "hard": (1.5, 0.3)}


def synthetic(seconds: float, fps: float, seed: int, noise: str = "mild") -> list[VideoFrame]:
    """Boxes as a detector gives them: jittered, some dropped, probabilities noisy."""
    rng = random.Random(seed)
    people = cast(seconds)
    # Each face's noise drifts rather than jumping each frame (light, pose):
    # a change lasts about 0.2 s, as a model's mistakes on video do.
    keep = math.exp(-1 / (0.2 * fps))
    drifts = {p.name: [rng.gauss(0, 1) for _ in range(LABELS)] for p in people}
    frames = []
    for index in range(round(seconds * fps)):
        t = index / fps
        frame = VideoFrame(t)
        for person in people:
            drift = drifts[person.name]  # each value stays a standard normal
            drift[:] = [keep * z + math.sqrt(1 - keep**2) * rng.gauss(0, 1) for z in drift]
            box = person.box(t)
            if box is None or person.hidden(t) or rng.random() < 0.03:
                continue
            jitter = 0.02 * person.size
            noisy = tuple(v + rng.gauss(0, jitter) for v in box)
            frame.detections.append(
                Detection(
                    person.name,
                    (noisy[0], noisy[1], noisy[2], noisy[3]),
                    _noisy(person.label(t), drift, *NOISE[noise]),
                )
            )
        rng.shuffle(frame.detections)  # the model's order says nothing of who is who
        frames.append(frame)
    return frames


def _noisy(label: int, drift: Sequence[float], spread: float, weight: float) -> list[float]:
    """Mostly the true label, but close enough to others that the top one flickers."""
    noise = [math.exp(spread * z) for z in drift]
    total = sum(noise)
    return [weight * (i == label) + (1 - weight) * n / total for i, n in enumerate(noise)]


def faces() -> list[Image.Image]:
    """The four faces of the group photo, cut out square with some margin."""
    group = Image.open(
        io.BytesIO((resources.files("emotion.testing") / "data" / "group.jpg").read_bytes())
    )
    centres = [(187, 259), (517, 267), (814, 269), (1133, 268)]  # the default model's boxes
    return [group.crop((x - 100, y - 100, x + 100, y + 100)).convert("RGB") for x, y in centres]


def pasted(seconds: float, fps: float) -> list[VideoFrame]:
    """The same people as pictures: a face pasted where each box is; covered means left out."""
    pictures = faces()
    people = cast(seconds)
    frames = []
    for index in range(round(seconds * fps)):
        t = index / fps
        canvas = Image.new("RGB", (WIDTH, HEIGHT), (128, 128, 128))
        frame = VideoFrame(t)
        for person, picture in zip(people, pictures, strict=True):
            box = person.box(t)
            if box is None or person.hidden(t):
                continue
            size = round(person.size)
            canvas.paste(picture.resize((size, size)), (round(box[0]), round(box[1])))
            frame.detections.append(Detection(person.name, box, []))
        buffer = io.BytesIO()
        canvas.save(buffer, "JPEG", quality=90)
        frame.picture = buffer.getvalue()
        frames.append(frame)
    return frames


@dataclass(frozen=True)
class Scores:
    """How a tracker did on one video, as MOT benchmarks count (over the detected faces)."""

    idf1: float
    switches: int  # a person's id changed from one detection to their next
    switches_at_returns: int  # of which after being away longer than max_unseen
    ids_per_person: float  # fragmentation: 1.0 is one id each
    raw_flicker: float  # top-label changes per second of a person in view
    smoothed_flicker: float
    worst_smoothed_second: int  # most smoothed changes of one person in any 1 s
    raw_right: float  # share of detections whose top label is the true one
    smoothed_right: float


def score(frames: Sequence[VideoFrame], people: Sequence[Person], max_unseen: float) -> Scores:
    by_person: dict[str, list[tuple[float, Detection]]] = {p.name: [] for p in people}
    for frame in frames:
        for detection in frame.detections:
            by_person[detection.person].append((frame.time, detection))
    names = sorted(by_person)
    ids = sorted({d.track_id for seen in by_person.values() for _, d in seen})
    counts = [[sum(d.track_id == i for _, d in by_person[n]) for i in ids] for n in names]
    matched = sum(counts[r][c] for r, c in assign([[-v for v in row] for row in counts]))
    total = sum(len(seen) for seen in by_person.values())
    switches = returns = 0
    raw_changes = smooth_changes = worst = 0
    raw_right = smooth_right = 0
    visible = 0.0
    truth = {p.name: p for p in people}
    for name, seen in by_person.items():
        smoothed_times = []
        for (t0, before), (t1, after) in itertools.pairwise(seen):
            if after.track_id != before.track_id:
                switches += 1
                returns += t1 - t0 > max_unseen
            if t1 - t0 <= max_unseen:
                visible += t1 - t0
                raw_changes += _top(before.probabilities) != _top(after.probabilities)
                if _top(before.smoothed) != _top(after.smoothed):
                    smooth_changes += 1
                    smoothed_times.append(t1)
        worst = max(worst, _most_in_a_second(smoothed_times))
        for t, d in seen:
            raw_right += _top(d.probabilities) == truth[name].label(t)
            smooth_right += _top(d.smoothed) == truth[name].label(t)
    return Scores(
        idf1=matched / total if total else 1.0,  # 2 IDTP / (IDGT + IDPRED), both = total
        switches=switches,
        switches_at_returns=returns,
        ids_per_person=sum(len({d.track_id for _, d in s}) for s in by_person.values())
        / len(names),
        raw_flicker=raw_changes / visible if visible else 0.0,
        smoothed_flicker=smooth_changes / visible if visible else 0.0,
        worst_smoothed_second=worst,
        raw_right=raw_right / total if total else 0.0,
        smoothed_right=smooth_right / total if total else 0.0,
    )


def _top(values: Sequence[float]) -> int:
    return max(range(len(values)), key=values.__getitem__) if values else -1


def _most_in_a_second(times: list[float]) -> int:
    most = 0
    for i, start in enumerate(times):
        most = max(most, sum(1 for t in times[i:] if t < start + 1.0))
    return most


def median_range(values: Sequence[float]) -> tuple[float, float, float]:
    ordered = sorted(values)
    middle = len(ordered) // 2
    median = ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2
    return median, ordered[0], ordered[-1]
