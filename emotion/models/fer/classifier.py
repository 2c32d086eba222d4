"""The FER2013 mini-Xception expression classifier on LiteRT."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    from numpy.typing import NDArray

    from emotion.models.fer.detector import Detection
    from emotion.models.fer.runtime import Runner

#: The classifier's output order, named as the contract's Expression fields.
LABELS = ("anger", "disgust", "fear", "happiness", "sadness", "surprise", "neutral")
INPUT_SIZE = 64

# The classifier was trained on Haar-cascade crops, which reach higher up the
# forehead and wider than BlazeFace's boxes; this reframes a BlazeFace box the
# same way. Chosen on the test portraits: the raw box reads Grace Hopper's
# neutral face as angry.
_GROW = 1.3
_SHIFT_UP = 0.1


def face_crop(detection: Detection) -> tuple[float, float, float, float]:
    """The square region, in image pixels, that the classifier should see."""
    width = detection.x2 - detection.x1
    height = detection.y2 - detection.y1
    side = max(width, height) * _GROW
    cx = (detection.x1 + detection.x2) / 2
    cy = (detection.y1 + detection.y2) / 2 - _SHIFT_UP * height
    return cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2


class ExpressionClassifier:
    """Scores the seven expressions of one face in a grayscale image."""

    def __init__(self, runner: Runner) -> None:
        self._runner = runner

    def __call__(self, gray: Image.Image, detection: Detection) -> NDArray[np.float64]:
        """Probabilities in LABELS order, summing to 1.

        Averages the face and its mirror image: the network is not symmetric,
        and the average is steadier than either alone.
        """
        x1, y1, x2, y2 = face_crop(detection)
        region = (max(0.0, x1), max(0.0, y1), min(gray.width, x2), min(gray.height, y2))
        face = gray.resize((INPUT_SIZE, INPUT_SIZE), Image.Resampling.BILINEAR, box=region)
        pixels = np.asarray(face, dtype=np.float32) / 127.5 - 1.0
        tensor = pixels[np.newaxis, :, :, np.newaxis]
        scores = self._runner(tensor)[0][0].astype(np.float64)
        scores += self._runner(np.ascontiguousarray(tensor[:, :, ::-1]))[0][0]
        normalised: NDArray[np.float64] = scores / scores.sum()
        return normalised
