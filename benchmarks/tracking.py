"""Tracked streams, measured: id switches, fragmentation, label flicker, and the time it adds.

    python benchmarks/tracking.py                # both videos, 3 interleaved rounds
    python benchmarks/tracking.py --no-model     # the synthetic boxes only (no fer extra)

The synthetic video (benchmarks/tracking_video.py) runs the tracker on boxes
alone, a new seed per round, with each smoothing window; the pasted one runs
the default model on every frame, then the server's own tracking step
(emotion.serving.tracks: read the answer, track, write it again), timed
against the model's time for the same frame. Rounds interleave the two.
"""

from __future__ import annotations

import argparse
import platform
import time
from collections.abc import Sequence
from dataclasses import fields

from tracking_video import (
    NOISE,
    Detection,
    Scores,
    VideoFrame,
    cast,
    median_range,
    pasted,
    score,
    synthetic,
)

from emotion.codec import Encoded, encode, parse
from emotion.contract import (
    EXPRESSION_FIELDS,
    BBox,
    Expression,
    Options,
    Request,
    Response,
    Result,
    Tracking,
)
from emotion.serving.tracks import MAX_UNSEEN_SECONDS, MIN_IOU, StreamTracks
from emotion.tracking import Tracker


def track_boxes(frames: Sequence[VideoFrame], smoothing: float) -> list[float]:
    """The tracker alone on each frame's boxes; the microseconds each update took."""
    tracker = Tracker(smoothing=smoothing, max_unseen=MAX_UNSEEN_SECONDS, min_iou=MIN_IOU)
    took = []
    for frame in frames:
        boxes = [d.box for d in frame.detections]
        expressions = [d.probabilities for d in frame.detections]
        started = time.perf_counter()
        observations = tracker.update(boxes, expressions, frame.time)
        took.append((time.perf_counter() - started) * 1e6)
        for detection, seen in zip(frame.detections, observations, strict=True):
            detection.track_id, detection.smoothed = seen.track_id, seen.smoothed
    return took


def answer_of(detections: Sequence[Detection]) -> Encoded:
    faces = [
        Result(
            bbox=BBox(x1=d.box[0], y1=d.box[1], x2=d.box[2], y2=d.box[3]),
            expression=Expression(**dict(zip(EXPRESSION_FIELDS, d.probabilities, strict=True))),
            confidence=0.9,
        )
        for d in detections
    ]
    return Encoded(encode(Response(response=faces)))


def served_step(frames: Sequence[VideoFrame], answers: Sequence[Encoded]) -> list[float]:
    """What a tracked stream adds in the server per frame: microseconds of StreamTracks.follow."""
    first = Request(options=Options(tracking=Tracking()), frame_time=0.0)
    tracks = StreamTracks.asked(first)
    assert tracks is not None
    took = []
    for index, (frame, answer) in enumerate(zip(frames, answers, strict=True)):
        request = Request(frame_time=frame.time)
        started = time.perf_counter()
        tracks.follow(answer, tracks.time_of(request, index))
        took.append((time.perf_counter() - started) * 1e6)
    return took


def model_frames(
    frames: Sequence[VideoFrame],
) -> tuple[list[VideoFrame], list[Encoded], list[float]]:
    """The default model on each pasted frame: its detections, its answers, and the
    milliseconds each frame took (decode and model).

    A detection is the person whose face is under its box's centre, the one
    pasted last (on top) where two overlap.
    """
    from emotion.decode import decode
    from emotion.models.fer import FerModel

    model = FerModel()
    model.load()
    detected, answers, took = [], [], []
    for frame in frames:
        started = time.perf_counter()
        response = model.process_sample(decode(frame.picture, min_size=model.min_size).image)
        took.append((time.perf_counter() - started) * 1e3)
        answers.append(Encoded(encode(response)))
        found = VideoFrame(frame.time)
        for face in response.response:
            assert face.bbox is not None
            assert face.expression is not None
            box = (face.bbox.x1, face.bbox.y1, face.bbox.x2, face.bbox.y2)
            cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
            under = [
                d.person
                for d in frame.detections
                if d.box[0] <= cx <= d.box[2] and d.box[1] <= cy <= d.box[3]
            ]
            probabilities = [getattr(face.expression, name) for name in EXPRESSION_FIELDS]
            found.detections.append(Detection(under[-1] if under else "?", box, probabilities))
        detected.append(found)
    model.close()
    return detected, answers, took


def tracked_ids(frames: Sequence[VideoFrame], answers: Sequence[Encoded], smoothing: float) -> None:
    """Track the model's answers as the server does, and note each detection's id."""
    first = Request(options=Options(tracking=Tracking(smoothing_seconds=smoothing)), frame_time=0.0)
    tracks = StreamTracks.asked(first)
    assert tracks is not None
    for index, (frame, answer) in enumerate(zip(frames, answers, strict=True)):
        out = parse(
            Response,
            tracks.follow(answer, tracks.time_of(Request(frame_time=frame.time), index)).data,
        )
        for detection, face in zip(frame.detections, out.response, strict=True):
            assert face.smoothed_expression is not None
            detection.track_id = face.track_id or 0
            detection.smoothed = tuple(
                getattr(face.smoothed_expression, n) for n in EXPRESSION_FIELDS
            )


#: The columns for the default model's video: its labels are the model's own,
#: so the synthetic true labels do not apply.
MODEL_COLUMNS = [
    item.name for item in fields(Scores) if item.name not in {"raw_right", "smoothed_right"}
]


def show(label: str, runs: Sequence[Scores], names: Sequence[str] | None = None) -> None:
    cells = []
    for name in names or [item.name for item in fields(Scores)]:
        med, low, high = median_range([float(getattr(run, name)) for run in runs])
        cells.append(f"{med:.3g}" if low == high else f"{med:.3g} ({low:.3g}-{high:.3g})")
    print(f"| {label} | " + " | ".join(cells) + " |")


def header(first: str, names: Sequence[str] | None = None) -> None:
    names = names or [item.name for item in fields(Scores)]
    print(f"| {first} | " + " | ".join(names) + " |")
    print("|---|" + "---:|" * len(names))


def timing(label: str, values: Sequence[float], unit: str) -> None:
    med, low, high = median_range(values)
    print(f"| {label} | {med:.1f} {unit} | {low:.1f}-{high:.1f} |")


def run(args: argparse.Namespace) -> None:
    python = platform.python_version()
    print(f"machine: {platform.machine()}, {platform.processor() or '?'}, Python {python}")
    pictures = [] if args.no_model else pasted(args.model_seconds, args.model_fps)
    synthetic_scores: dict[tuple[str, float], list[Scores]] = {
        (noise, s): [] for noise in NOISE for s in args.smoothing
    }
    model_scores: list[Scores] = []
    update_us: list[float] = []
    follow_us: list[float] = []
    follow_model_us: list[float] = []
    model_ms: list[float] = []
    for round_ in range(args.rounds):
        for noise, smoothing in synthetic_scores:
            frames = synthetic(args.seconds, args.fps, seed=round_, noise=noise)
            took = track_boxes(frames, smoothing)
            scores = score(frames, cast(args.seconds), MAX_UNSEEN_SECONDS)
            synthetic_scores[noise, smoothing].append(scores)
            if (noise, smoothing) == ("mild", args.smoothing[0]):
                update_us.append(_median(took))
                follow_us.append(
                    _median(served_step(frames, [answer_of(f.detections) for f in frames]))
                )
        if pictures:
            detected, answers, took = model_frames(pictures)
            model_ms.append(_median(took))
            follow_model_us.append(_median(served_step(detected, answers)))
            tracked_ids(detected, answers, 1.0)
            named = [
                VideoFrame(f.time, [d for d in f.detections if d.person != "?"]) for f in detected
            ]
            model_scores.append(score(named, cast(args.model_seconds), MAX_UNSEEN_SECONDS))
    print(f"\nsynthetic: {args.seconds:g} s at {args.fps:g} fps, {args.rounds} rounds (seeds 0..)")
    header("noise, smoothing (s)")
    for (noise, smoothing), runs in synthetic_scores.items():
        show(f"{noise}, {smoothing:g}", runs)
    if model_scores:
        print(f"\npasted, default model: {args.model_seconds:g} s at {args.model_fps:g} fps")
        header("smoothing (s)", MODEL_COLUMNS)
        show("1", model_scores, MODEL_COLUMNS)
    print(f"\nper frame, median of each round's median; range over {args.rounds} rounds")
    print("| step | median | range |\n|---|---:|---:|")
    timing("tracker update, synthetic (4 faces)", update_us, "µs")
    timing("server's tracking step, synthetic (read, track, write)", follow_us, "µs")
    if model_ms:
        timing("server's tracking step, default model's answers", follow_model_us, "µs")
        timing("default model, decode + process_sample", model_ms, "ms")


def _median(values: Sequence[float]) -> float:
    return median_range(values)[0]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=20.0, help="synthetic video length")
    parser.add_argument("--fps", type=float, default=30.0)
    parser.add_argument("--smoothing", type=float, nargs="+", default=[1.0, 0.1, 0.25, 0.5, 2.0])
    parser.add_argument("--model-seconds", type=float, default=8.0)
    parser.add_argument("--model-fps", type=float, default=15.0)
    parser.add_argument("--no-model", action="store_true", help="skip the default model's video")
    run(parser.parse_args(argv))


if __name__ == "__main__":
    main()
