"""annotate: the picture `emotion predict --annotate` writes, a box and a label per face."""

from __future__ import annotations

import pytest
from conftest import TESTS
from PIL import Image, ImageChops

from emotion.client.annotate import COLOURS, annotate, label
from emotion.contract import BBox, Expression, Landmarks, Point, Response, Result


def test_annotation_boxes_each_face_and_labels_its_top_expression() -> None:
    photo = Image.open(TESTS / "fixtures" / "astronaut.jpg").convert("RGB")
    face = Result(
        bbox=BBox(x1=175, y1=75, x2=275, y2=175),
        expression=Expression(happiness=0.93, neutral=0.07),
    )

    drawn = annotate(photo, Response(response=[face]))

    assert drawn.size == photo.size
    changed = ImageChops.difference(drawn, photo).getbbox()
    assert changed is not None
    left, top, right, bottom = changed
    assert left <= 175
    assert right >= 275
    assert bottom >= 175
    assert top < 75  # the label sits above the box
    # Outside the face and its label, nothing was touched.
    assert (
        ImageChops.difference(
            drawn.crop((300, 300, 512, 512)), photo.crop((300, 300, 512, 512))
        ).getbbox()
        is None
    )


@pytest.mark.parametrize("size", [(96, 96), (4000, 3000)])
def test_labels_grow_with_the_image_but_stay_readable_on_small_ones(size: tuple[int, int]) -> None:
    photo = Image.new("RGB", size, "white")
    w, h = size
    face = Result(
        bbox=BBox(x1=w * 0.3, y1=h * 0.4, x2=w * 0.7, y2=h * 0.9),
        expression=Expression(surprise=1.0),
    )

    drawn = annotate(photo, Response(response=[face]))

    label = ImageChops.difference(drawn, photo).crop((0, 0, w, int(h * 0.4))).getbbox()
    assert label is not None
    height = label[3] - label[1]
    assert height >= 12  # legible on a thumbnail
    assert height >= h / 50  # and not lost on a large photo


def test_each_landmark_is_a_dot_in_the_faces_colour_and_the_label_gives_the_confidence() -> None:
    photo = Image.new("RGB", (400, 300), "white")
    nose = Point(x=200, y=170)
    face = Result(
        bbox=BBox(x1=100, y1=100, x2=300, y2=280),
        expression=Expression(sadness=0.8, neutral=0.2),
        confidence=0.934,
        landmarks=Landmarks(nose_tip=nose, right_eye=Point(x=160, y=150)),
    )

    drawn = annotate(photo, Response(response=[face]))

    assert drawn.getpixel((200, 170)) == COLOURS["sadness"]
    assert drawn.getpixel((160, 150)) == COLOURS["sadness"]
    assert drawn.getpixel((240, 150)) == (255, 255, 255)  # the left eye was not found
    assert label(face, "sadness", 0.8) == "sadness 80%, face 93%"
    assert label(Result(), "neutral", 1.0) == "neutral 100%"  # a model without confidence
