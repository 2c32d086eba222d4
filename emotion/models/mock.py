"""The original contract's mock model: a fixed answer, for tests and demos."""

from __future__ import annotations

from PIL import Image

from emotion.contract import BBox, Expression, Response, Result
from emotion.model import Model


class MockModel(Model):
    """Resizes the image to 128x128 and reports one face with default values.

    It does the same per-image work as the blog post's mock, which makes it
    the reference load for benchmarks, and answers instantly in tests.
    """

    version = "1.0.0"
    # It shrinks every image to 128x128, so a larger decode is wasted work.
    min_size = 128

    def process_sample(self, image: Image.Image) -> Response:
        image.resize((128, 128))
        return Response(response=[Result(bbox=BBox(), expression=Expression())])
