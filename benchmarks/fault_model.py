"""The mock model, saying which frame it saw: faults.py checks a stream's answers and their order.

Served with ``--model fault_model:FrameModel`` (benchmarks/ on PYTHONPATH).
"""

from __future__ import annotations

from PIL import Image

from emotion.contract import BBox, Expression, Response, Result
from emotion.models.mock import MockModel


class FrameModel(MockModel):
    """The mock's work, and a box as large as the image: frame n is 1280 - n pixels wide."""

    min_size = None  # type: ignore[assignment]  # decoded at full size, so the box gives the width exactly

    def process_sample(self, image: Image.Image) -> Response:
        image.resize((128, 128))
        box = BBox(x1=0, y1=0, x2=image.width, y2=image.height)
        return Response(response=[Result(bbox=box, expression=Expression())])
