"""The default model on real photographs: faces found, boxes placed, expressions read."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from conftest import TESTS, StartServer, encode
from grpclib.client import Channel
from numpy.typing import NDArray
from PIL import Image, ImageFilter

from emotion import BBox, PipelineStub, Request, Response, Result, Server
from emotion.contract import (
    EXPRESSION_FIELDS,
    LANDMARK_FIELDS,
    DescribeRequest,
    ModelDescription,
    ModelVersion,
    Options,
)
from emotion.decode import decode, decode_image, to_full_size
from emotion.models.fer import LOWEST_SCORE, FerModel, WeightsError, runtime
from emotion.models.fer.detector import Detection, drop_enclosing

FIXTURES = TESTS / "fixtures"
# Where the faces are, by eye, in pixels of each fixture.
FACES = {
    "astronaut.jpg": (175, 70, 278, 178),
    "grace_hopper.jpg": (162, 125, 366, 340),
}
EXPECTED_TOP = {"astronaut.jpg": "happiness", "grace_hopper.jpg": "neutral"}


def photo(name: str) -> Image.Image:
    return Image.open(FIXTURES / name).convert("RGB")


Box = tuple[float, float, float, float]


def iou(a: Box, b: Box) -> float:
    width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = width * height
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def box(result: Result) -> tuple[float, float, float, float]:
    assert result.bbox is not None
    return result.bbox.x1, result.bbox.y1, result.bbox.x2, result.bbox.y2


def top(result: Result) -> str:
    assert result.expression is not None
    return max(EXPRESSION_FIELDS, key=lambda name: getattr(result.expression, name))


@pytest.fixture(scope="module")
def model() -> FerModel:
    model = FerModel()
    model.load()
    return model


def group_photo(face_widths: list[int]) -> tuple[Image.Image, list[tuple[str, Box]]]:
    """Head-and-shoulders copies of the portraits with faces of the given widths, on 1280x853.

    Returns the picture and, for each copy, its source and where its face is.
    """
    canvas = Image.new("RGB", (1280, 853), (110, 120, 130))
    truth = []
    gap = 16
    x, y, row_height = gap, gap, 0
    for index, width in enumerate(face_widths):
        name = ("astronaut.jpg", "grace_hopper.jpg")[index % 2]
        source = photo(name)
        fx1, fy1, fx2, fy2 = FACES[name]
        face_w = fx2 - fx1
        cx, cy = (fx1 + fx2) / 2, (fy1 + fy2) / 2
        region = (
            max(0, round(cx - 1.0 * face_w)),
            max(0, round(cy - 1.0 * face_w)),
            min(source.width, round(cx + 1.0 * face_w)),
            min(source.height, round(cy + 1.2 * face_w)),
        )
        scale = width / face_w
        part = source.crop(region)
        part = part.resize((round(part.width * scale), round(part.height * scale)))
        if x + part.width > canvas.width - gap:
            x, y, row_height = gap, y + row_height + gap, 0
        assert y + part.height <= canvas.height, "faces do not fit on the canvas"
        canvas.paste(part, (x, y))
        dx, dy = x - region[0] * scale, y - region[1] * scale
        truth.append(
            (name, (fx1 * scale + dx, fy1 * scale + dy, fx2 * scale + dx, fy2 * scale + dy))
        )
        x += part.width + gap
        row_height = max(row_height, part.height)
    return canvas, truth


@pytest.mark.parametrize("name", FACES)
def test_a_portrait_gives_one_face_with_the_right_box_and_expression(
    model: FerModel, name: str
) -> None:
    response = model.process_sample(photo(name))

    assert len(response.response) == 1
    assert iou(box(response.response[0]), FACES[name]) > 0.6
    assert top(response.response[0]) == EXPECTED_TOP[name]


@pytest.mark.parametrize("name", FACES)
def test_expressions_are_probabilities_summing_to_one(model: FerModel, name: str) -> None:
    (result,) = model.process_sample(photo(name)).response

    values = [getattr(result.expression, field) for field in EXPRESSION_FIELDS]
    assert all(0.0 <= value <= 1.0 for value in values)
    assert sum(values) == pytest.approx(1.0, abs=1e-5)


def test_side_by_side_portraits_give_two_faces_in_place(model: FerModel) -> None:
    left, right = photo("astronaut.jpg"), photo("grace_hopper.jpg")
    both = Image.new("RGB", (left.width + right.width, max(left.height, right.height)), "white")
    both.paste(left, (0, 0))
    both.paste(right, (left.width, 0))
    gx1, gy1, gx2, gy2 = FACES["grace_hopper.jpg"]

    faces = sorted(model.process_sample(both).response, key=lambda r: box(r)[0])

    assert len(faces) == 2
    assert iou(box(faces[0]), FACES["astronaut.jpg"]) > 0.6
    assert iou(box(faces[1]), (gx1 + left.width, gy1, gx2 + left.width, gy2)) > 0.6
    assert [top(face) for face in faces] == ["happiness", "neutral"]


def test_every_face_of_a_group_photo_is_found(model: FerModel) -> None:
    widths = [85, 130, 95, 120, 80, 110, 100, 125, 90, 105]
    picture, truth = group_photo(widths)

    faces = model.process_sample(picture).response

    missed = [
        (name, where) for name, where in truth if not any(iou(box(f), where) > 0.4 for f in faces)
    ]
    assert missed == []
    assert len(faces) == len(truth)


def test_small_faces_below_the_requirement_are_found_with_more_tiles() -> None:
    picture, truth = group_photo([60] * 30)
    model = FerModel(tiles=3)
    model.load()

    faces = model.process_sample(picture).response

    found = sum(any(iou(box(f), where) > 0.4 for f in faces) for _, where in truth)
    assert found >= 0.9 * len(truth)


@pytest.mark.parametrize("scale", [0.5, 0.6])
def test_a_close_up_filling_the_frame_is_found(model: FerModel, scale: float) -> None:
    x1, y1, x2, y2 = FACES["astronaut.jpg"]
    cx, cy, half = (x1 + x2) / 2, (y1 + y2) / 2, (x2 - x1) * scale
    close_up = photo("astronaut.jpg").crop(
        (round(cx - half), round(cy - half * 1.1), round(cx + half), round(cy + half * 1.1))
    )
    close_up = close_up.resize((close_up.width * 4, close_up.height * 4))

    faces = model.process_sample(close_up).response

    assert len(faces) == 1
    assert top(faces[0]) == "happiness"
    left, _, right, _ = box(faces[0])
    assert right - left > 0.6 * close_up.width


def test_a_rotated_photo_with_an_exif_tag_gives_the_face_in_displayed_coordinates(
    model: FerModel,
) -> None:
    upright = photo("astronaut.jpg")
    exif = Image.Exif()
    exif[0x0112] = 6  # the camera stored it rotated; viewers turn it 90° clockwise
    stored = encode(upright.transpose(Image.Transpose.ROTATE_90), "JPEG", quality=95, exif=exif)

    faces = model.process_sample(decode_image(stored)).response

    assert len(faces) == 1
    assert iou(box(faces[0]), FACES["astronaut.jpg"]) > 0.6


@pytest.mark.parametrize(
    "picture",
    [
        Image.new("RGB", (640, 480), "white"),
        Image.new("L", (3000, 2000), 0),
        Image.new("RGB", (1, 1), "gray"),
        Image.fromarray(np.random.default_rng(7).integers(0, 256, (480, 640, 3), dtype=np.uint8)),
    ],
    ids=["white", "black-large", "one-pixel", "noise"],
)
def test_pictures_without_faces_give_an_empty_response(
    model: FerModel, picture: Image.Image
) -> None:
    assert model.process_sample(picture) == Response()


def _as_mode(image: Image.Image, mode: str) -> Image.Image:
    if mode == "I;16":
        return Image.fromarray(np.asarray(image.convert("L"), dtype=np.uint16) * 257)
    if mode == "RGBA":
        rgba = image.convert("RGBA")
        rgba.putalpha(200)
        return rgba
    return image.convert(mode)


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "I;16", "CMYK", "LA", "1"])
def test_every_image_mode_gives_the_same_face(model: FerModel, mode: str) -> None:
    image = _as_mode(photo("astronaut.jpg"), mode)
    assert image.mode == mode

    faces = model.process_sample(image).response

    assert len(faces) == 1
    assert iou(box(faces[0]), FACES["astronaut.jpg"]) > 0.6


def test_boxes_stay_inside_the_image(model: FerModel) -> None:
    # The face runs off the top-left corner, so the detector's box would too.
    picture = photo("astronaut.jpg").crop((200, 100, 512, 512))

    for face in model.process_sample(picture).response:
        assert face.bbox is not None
        assert 0 <= face.bbox.x1 <= face.bbox.x2 <= picture.width
        assert 0 <= face.bbox.y1 <= face.bbox.y2 <= picture.height


def test_faces_come_most_confident_first(model: FerModel) -> None:
    picture, _ = group_photo([130, 85, 120, 80])

    faces = model.detect(picture)

    assert [f.score for f in faces] == sorted((f.score for f in faces), reverse=True)


def test_concurrent_calls_give_the_same_answers_as_sequential_ones(model: FerModel) -> None:
    pictures = [photo("astronaut.jpg"), photo("grace_hopper.jpg"), group_photo([90, 110, 100])[0]]
    expected = [bytes(model.process_sample(p)) for p in pictures]
    barrier = threading.Barrier(4)

    def run(index: int) -> bytes:
        barrier.wait()
        return bytes(model.process_sample(pictures[index % 3]))

    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(run, range(12)))

    assert answers == [expected[i % 3] for i in range(12)]


def test_a_damaged_weights_file_fails_load_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(runtime.CHECKSUMS, "face_detection_full_range.tflite", "0" * 64)

    with pytest.raises(WeightsError, match=r"face_detection_full_range.tflite has SHA-256 99bf"):
        FerModel().load()


def test_tiles_must_be_positive() -> None:
    with pytest.raises(ValueError, match="tiles must be at least 1"):
        FerModel(tiles=0)


async def test_served_by_default_it_answers_a_real_photo(
    start_server: StartServer, connect: Callable[[Server], Channel]
) -> None:
    stub = PipelineStub(connect(await start_server(FerModel())))

    response = await stub.run_pipeline(
        Request(image=(FIXTURES / "grace_hopper.jpg").read_bytes()), timeout=30
    )
    described = await stub.describe(DescribeRequest(), timeout=10)

    assert len(response.response) == 1
    assert iou(box(response.response[0]), FACES["grace_hopper.jpg"]) > 0.6
    assert top(response.response[0]) == "neutral"
    assert response.response[0].bbox != BBox()
    assert response.response[0].confidence is not None
    assert response.response[0].landmarks is not None
    assert response.model == ModelVersion(name="fer", version=FerModel.version)
    assert described.model == ModelDescription(
        name="fer",
        version=FerModel.version,
        weights_digest=runtime.weights_digest(),
        labels=list(EXPRESSION_FIELDS),
        fills_confidence=True,
        fills_landmarks=True,
    )


def test_fixtures_are_small() -> None:
    assert all(p.stat().st_size < 100_000 for p in Path(FIXTURES).glob("*.jpg"))


def test_boxes_from_a_reduced_jpeg_decode_match_a_full_decode(model: FerModel) -> None:
    picture, truth = group_photo([110, 130, 120, 125, 115, 105])
    data = encode(picture.resize((3840, 2559), Image.Resampling.BICUBIC), "JPEG", quality=92)
    full = model.process_sample(decode_image(data)).response
    reduced = decode(data, min_size=model.min_size)
    assert reduced.scale_x == 2.0  # 3840 -> 1920, the smallest scale keeping 1024

    answer = model.process_sample(reduced.image)
    to_full_size(answer, reduced)

    assert len(answer.response) == len(full) == len(truth)
    for face in full:
        nearest = max(answer.response, key=lambda other: iou(box(other), box(face)))
        assert (
            max(abs(a - b) for a, b in zip(box(nearest), box(face), strict=True))
            < 6 * reduced.scale_x
        )
        assert top(nearest) == top(face)


def test_a_low_confidence_box_around_a_face_is_dropped_not_reported_as_a_second_face() -> None:
    face = Detection(930, 60, 1025, 158, 0.82)
    head_and_shoulders = Detection(877, 67, 1056, 246, 0.51)
    neighbour = Detection(1060, 60, 1150, 150, 0.40)

    kept = drop_enclosing([head_and_shoulders, neighbour, face])

    assert kept == [face, neighbour]


def test_a_crowded_group_gives_exactly_its_faces(model: FerModel) -> None:
    picture, truth = group_photo([100] * 15)

    faces = model.process_sample(picture).response

    assert len(faces) == len(truth)


def face_at(
    size: tuple[int, int], width: float, centre: tuple[float, float]
) -> tuple[Image.Image, Box]:
    """The astronaut's face ``width`` of the longer side wide, centred at ``centre`` (fractions)."""
    x1, y1, x2, y2 = FACES["astronaut.jpg"]
    scale = width * max(size) / (x2 - x1)
    source = photo("astronaut.jpg")
    head = source.resize((round(source.width * scale), round(source.height * scale)))
    canvas = Image.new("RGB", size, (110, 120, 130))
    dx = round(centre[0] * size[0] - (x1 + x2) / 2 * scale)
    dy = round(centre[1] * size[1] - (y1 + y2) / 2 * scale)
    canvas.paste(head, (dx, dy))
    return canvas, (x1 * scale + dx, y1 * scale + dy, x2 * scale + dx, y2 * scale + dy)


@pytest.mark.parametrize(
    ("size", "width", "centre", "tiles"),
    [
        # 2x2 tiles each span 5/8 of a side: a face across the middle third is cut by all four.
        ((1024, 1024), 0.3, (0.5, 0.5), 2),
        # 3x3 tiles overlap by 1/8 of a side: a face on a seam, too small for the short range.
        ((1024, 1024), 0.11, (0.354, 0.5), 3),
        # A 3:1 image's tiles overlap by less across its short side.
        ((1536, 512), 0.10, (0.5, 0.5), 2),
    ],
)
def test_a_face_no_tile_holds_whole_is_found_by_a_whole_image_pass(
    size: tuple[int, int], width: float, centre: tuple[float, float], tiles: int
) -> None:
    model = FerModel(tiles=tiles)
    model.load()
    canvas, where = face_at(size, width, centre)

    faces = model.process_sample(canvas).response

    assert len(faces) == 1
    assert iou(box(faces[0]), where) > 0.5
    assert top(faces[0]) == "happiness"


def test_every_face_has_its_detection_confidence_and_six_landmarks_in_place(
    model: FerModel,
) -> None:
    picture, truth = group_photo([130, 85, 120, 80])

    faces = model.process_sample(picture).response

    assert len(faces) == len(truth)
    assert [f.confidence for f in faces] == [pytest.approx(d.score) for d in model.detect(picture)]
    for face in faces:
        assert face.confidence is not None
        assert 0.5 <= face.confidence <= 1.0
        assert face.landmarks is not None
        points = {name: getattr(face.landmarks, name) for name in LANDMARK_FIELDS}
        assert all(point is not None for point in points.values())
        x1, y1, x2, y2 = box(face)
        for name in ("right_eye", "left_eye", "nose_tip", "mouth"):
            assert x1 <= points[name].x <= x2, name
            assert y1 <= points[name].y <= y2, name
        # The subject's right eye and ear are on the left of a photo of them.
        assert points["right_ear"].x < points["right_eye"].x < points["nose_tip"].x
        assert points["nose_tip"].x < points["left_eye"].x < points["left_ear"].x
        assert max(points["right_eye"].y, points["left_eye"].y) < points["nose_tip"].y
        assert points["nose_tip"].y < points["mouth"].y


def test_landmarks_stay_inside_the_image(model: FerModel) -> None:
    # The face runs off the left edge: its right ear would too.
    picture = photo("astronaut.jpg").crop((200, 100, 512, 512))

    (face,) = model.process_sample(picture).response

    assert face.landmarks is not None
    assert face.landmarks.right_ear is not None
    assert face.landmarks.right_ear.x == 0
    for name in LANDMARK_FIELDS:
        point = getattr(face.landmarks, name)
        assert 0 <= point.x <= picture.width
        assert 0 <= point.y <= picture.height


def test_landmarks_from_a_reduced_jpeg_decode_match_a_full_decode(model: FerModel) -> None:
    picture, _ = group_photo([110, 130, 120])
    data = encode(picture.resize((3840, 2559), Image.Resampling.BICUBIC), "JPEG", quality=92)
    full = model.process_sample(decode_image(data)).response
    reduced = decode(data, min_size=model.min_size)

    answer = model.process_sample(reduced.image)
    to_full_size(answer, reduced)

    for face in full:
        nearest = max(answer.response, key=lambda other: iou(box(other), box(face)))
        assert nearest.landmarks is not None
        assert face.landmarks is not None
        for name in LANDMARK_FIELDS:
            ours, theirs = getattr(nearest.landmarks, name), getattr(face.landmarks, name)
            assert abs(ours.x - theirs.x) < 6 * reduced.scale_x, name
            assert abs(ours.y - theirs.y) < 6 * reduced.scale_y, name


class CountingFer(FerModel):
    """FerModel that counts the faces it classifies."""

    def __init__(self) -> None:
        super().__init__()
        self.classified = 0

    def classify(self, gray: Image.Image, face: Detection) -> NDArray[np.float64]:
        self.classified += 1
        return super().classify(gray, face)


@pytest.fixture(scope="module")
def counting() -> CountingFer:
    model = CountingFer()
    model.load()
    return model


def test_one_face_wanted_classifies_only_the_most_confident(counting: CountingFer) -> None:
    picture, _ = group_photo([130, 85, 120, 80])
    every = counting.process_sample(picture).response
    counting.classified = 0

    (first,) = counting.process_sample(picture, Options(max_faces=1)).response

    assert counting.classified == 1
    assert bytes(first) == bytes(every[0])
    assert first.confidence == max(face.confidence or 0 for face in every)


def test_faces_below_min_confidence_are_not_classified(counting: CountingFer) -> None:
    picture, _ = group_photo([130, 85, 120, 80])
    every = counting.process_sample(picture).response
    middle = sorted(face.confidence or 0 for face in every)[len(every) // 2]
    counting.classified = 0

    kept = counting.process_sample(picture, Options(min_confidence=middle)).response

    # Above the detector's own threshold, the faces kept are those found without it.
    assert middle > 0.5
    assert [bytes(face) for face in kept] == [
        bytes(face) for face in every if (face.confidence or 0) >= middle
    ]
    assert counting.classified == len(kept) < len(every)


def test_a_min_confidence_below_the_detectors_own_finds_fainter_faces(model: FerModel) -> None:
    blurred = photo("grace_hopper.jpg").filter(ImageFilter.GaussianBlur(12))

    def on_her_face(faces: list[Result]) -> list[Result]:
        return [face for face in faces if iou(box(face), FACES["grace_hopper.jpg"]) > 0.5]

    default = model.process_sample(blurred).response
    lower = model.process_sample(blurred, Options(min_confidence=0.4)).response

    assert on_her_face(default) == []
    (face,) = on_her_face(lower)
    assert face.confidence is not None
    assert 0.4 <= face.confidence < 0.5


def test_min_confidence_reaches_down_to_its_floor_and_no_lower(model: FerModel) -> None:
    picture = photo("astronaut.jpg")

    at_floor = model.process_sample(picture, Options(min_confidence=LOWEST_SCORE)).response
    at_zero = model.process_sample(picture, Options(min_confidence=0.0)).response

    assert [bytes(face) for face in at_zero] == [bytes(face) for face in at_floor]
    assert all((face.confidence or 0) >= LOWEST_SCORE for face in at_zero)


def test_it_says_what_it_fills_and_which_weights_it_runs(model: FerModel) -> None:
    listing = "".join(f"{runtime.CHECKSUMS[n]}  {n}\n" for n in sorted(runtime.CHECKSUMS))

    assert (model.fills_confidence, model.fills_landmarks) == (True, True)
    assert model.version
    assert model.weights_digest() == "sha256:" + hashlib.sha256(listing.encode()).hexdigest()
