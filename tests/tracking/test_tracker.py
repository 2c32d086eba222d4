"""The tracker on synthetic boxes: crossing, leaving and coming back, missed detections."""

from __future__ import annotations

import math

import pytest

from emotion.tracking import Box, Tracker, iou

HAPPY = (0.0, 1.0, 0.0)
SAD = (0.0, 0.0, 1.0)
NEUTRAL = (1.0, 0.0, 0.0)


def box(x: float, y: float = 100.0, size: float = 60.0) -> Box:
    return (x, y, x + size, y + size)


def test_iou() -> None:
    assert iou(box(0), box(0)) == 1.0
    assert iou(box(0), box(100)) == 0.0
    assert math.isclose(iou(box(0), box(30)), 1 / 3)
    assert iou((0, 0, 0, 0), (0, 0, 0, 0)) == 0.0


def test_two_faces_crossing_keep_their_ids() -> None:
    # One moves right, one left, at 10 px a frame; they overlap wholly halfway.
    tracker = Tracker()
    seen: list[tuple[int, int]] = []
    for frame in range(41):
        left, right = box(10.0 * frame), box(400.0 - 10.0 * frame, y=104.0)
        ids = [o.track_id for o in tracker.update([left, right], [HAPPY, SAD], frame / 30)]
        seen.append((ids[0], ids[1]))
    assert set(seen) == {(1, 2)}


def test_faces_crossing_on_one_line_are_told_apart_by_their_motion() -> None:
    # Wholly overlapping at frame 20: only their velocities say who is who after,
    # whatever order the model lists them in.
    tracker = Tracker()
    ids_of: dict[str, set[int]] = {"rightwards": set(), "leftwards": set()}
    for frame in range(41):
        faces = {"rightwards": box(10.0 * frame), "leftwards": box(400.0 - 10.0 * frame)}
        names = sorted(faces, reverse=frame > 20)
        answers = tracker.update([faces[n] for n in names], [HAPPY, SAD], frame / 30)
        for name, answer in zip(names, answers, strict=True):
            ids_of[name].add(answer.track_id)
    assert ids_of == {"rightwards": {2}, "leftwards": {1}}


def test_the_order_of_detections_does_not_matter() -> None:
    # The model lists faces most confident first, an order that changes; ids do not.
    tracker = Tracker()
    ids_of: dict[str, set[int]] = {"moving": set(), "still": set()}
    for frame in range(20):
        faces = {"moving": box(10.0 * frame), "still": box(300.0, y=300.0)}
        names = sorted(faces, reverse=bool(frame % 2))
        answers = tracker.update([faces[n] for n in names], [HAPPY, SAD], frame / 30)
        for name, answer in zip(names, answers, strict=True):
            ids_of[name].add(answer.track_id)
    assert ids_of == {"moving": {1}, "still": {2}}


def test_missed_detections_are_bridged_by_the_motion_model() -> None:
    # Four frames without the face, while it moves on: it is predicted, not lost.
    tracker = Tracker(max_unseen=0.5)
    for frame in range(30):
        if 10 <= frame < 14:
            assert tracker.update([], [], frame / 30) == []
            continue
        (observation,) = tracker.update([box(15.0 * frame)], [HAPPY], frame / 30)
        assert observation.track_id == 1
    (summary,) = tracker.summaries()
    assert (summary.first_frame, summary.last_frame, summary.frames_seen) == (0, 29, 26)


def test_a_face_moving_fast_from_its_first_frame_keeps_its_id() -> None:
    # 45 px a frame for a 60 px face: a quarter overlap, before any velocity is known.
    tracker = Tracker()
    ids = {tracker.update([box(45.0 * f)], [HAPPY], f / 30)[0].track_id for f in range(10)}
    assert ids == {1}


def test_a_face_far_from_every_track_is_a_new_person() -> None:
    tracker = Tracker(max_distance=1.0)
    tracker.update([box(0)], [HAPPY], 0.0)
    assert tracker.update([box(65)], [HAPPY], 0.1)[0].track_id == 2


def test_a_face_gone_longer_than_max_unseen_comes_back_as_a_new_track() -> None:
    tracker = Tracker(max_unseen=0.5)
    assert tracker.update([box(0)], [HAPPY], 0.0)[0].track_id == 1
    assert tracker.update([], [], 0.4) == []
    assert tracker.update([box(0)], [HAPPY], 0.45)[0].track_id == 1
    assert tracker.update([], [], 0.9) == []
    assert tracker.update([box(0)], [HAPPY], 1.0)[0].track_id == 2
    assert [s.track_id for s in tracker.summaries()] == [1, 2]


def test_a_new_person_gets_a_new_id_and_ids_are_never_reused() -> None:
    tracker = Tracker(max_unseen=0.1)
    assert [o.track_id for o in tracker.update([box(0)], [HAPPY], 0)] == [1]
    ids = [o.track_id for o in tracker.update([box(0), box(300)], [HAPPY, SAD], 0.05)]
    assert ids == [1, 2]
    assert [o.track_id for o in tracker.update([box(600)], [SAD], 1.0)] == [3]


def test_smoothing_follows_time_not_frames() -> None:
    # One second constant: after 1 s of a new expression, 1 - e^-1 of the way there.
    fast, slow = Tracker(smoothing=1.0), Tracker(smoothing=1.0)
    fast.update([box(0)], [NEUTRAL], 0.0)
    slow.update([box(0)], [NEUTRAL], 0.0)
    for step in range(1, 11):
        fast_last = fast.update([box(0)], [HAPPY], step / 10)[0]
    slow_last = slow.update([box(0)], [HAPPY], 1.0)[0]
    assert math.isclose(fast_last.smoothed[1], 1 - math.exp(-1), rel_tol=1e-9)
    assert math.isclose(slow_last.smoothed[1], 1 - math.exp(-1), rel_tol=1e-9)
    assert math.isclose(sum(fast_last.smoothed), 1.0)


def test_no_smoothing_gives_each_frames_own() -> None:
    tracker = Tracker(smoothing=0)
    tracker.update([box(0)], [NEUTRAL], 0.0)
    assert tracker.update([box(0)], [HAPPY], 0.1)[0].smoothed == HAPPY


def test_a_one_frame_blip_does_not_flip_the_smoothed_label() -> None:
    tracker = Tracker(smoothing=0.5)
    labels = []
    for frame in range(30):
        expression = SAD if frame == 15 else HAPPY
        smoothed = tracker.update([box(0)], [expression], frame / 30)[0].smoothed
        labels.append(max(range(3), key=smoothed.__getitem__))
    assert set(labels) == {1}


def test_summaries_weigh_each_frame_by_how_long_it_stood() -> None:
    tracker = Tracker(max_unseen=10)
    tracker.update([box(0)], [HAPPY], 0.0)  # stands 3 s
    tracker.update([box(0)], [SAD], 3.0)  # stands 1 s
    tracker.update([box(0)], [SAD], 4.0)  # the last: as long as the one before, 1 s
    (summary,) = tracker.summaries()
    assert summary.mean == pytest.approx((0.0, 0.6, 0.4))
    assert summary.dominant == 1
    assert (summary.first_time, summary.last_time, summary.frames_seen) == (0.0, 4.0, 3)
    # Asking does not change what comes after.
    tracker.update([box(0)], [SAD], 5.0)
    assert tracker.summaries()[0].mean == pytest.approx((0.0, 0.5, 0.5))


def test_frames_at_one_time_count_once_each() -> None:
    tracker = Tracker()
    tracker.update([box(0)], [HAPPY], 0.0)
    tracker.update([box(0)], [SAD], 0.0)
    assert tracker.summaries()[0].mean == pytest.approx((0.0, 0.5, 0.5))


def test_time_going_back_and_mismatched_lists_are_refused() -> None:
    tracker = Tracker()
    tracker.update([], [], 1.0)
    with pytest.raises(ValueError, match="before the previous"):
        tracker.update([], [], 0.5)
    with pytest.raises(ValueError, match="one expression per box"):
        tracker.update([box(0)], [], 2.0)
    with pytest.raises(ValueError, match="min_iou"):
        Tracker(min_iou=0)
