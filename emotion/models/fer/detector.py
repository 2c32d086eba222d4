"""MediaPipe BlazeFace on LiteRT: anchors, box decoding and weighted non-max suppression.

The .tflite graphs stop at raw regressor and classifier tensors; MediaPipe's
calculators that turn those into boxes are C++, so the decoding lives here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    from numpy.typing import NDArray

    from emotion.models.fer.runtime import Runner


@dataclass(frozen=True)
class BlazeFaceSpec:
    """What one BlazeFace variant expects and how its anchors are laid out."""

    filename: str
    input_size: int
    #: (stride, anchors per cell) for each feature map, in output order.
    layers: tuple[tuple[int, int], ...]
    min_score: float

    def anchors(self) -> NDArray[np.float32]:
        """Anchor centres, normalised to [0, 1], one row per raw output box."""
        centres = []
        for stride, per_cell in self.layers:
            cells = self.input_size // stride
            grid = (np.arange(cells, dtype=np.float32) + 0.5) / cells
            ys, xs = np.meshgrid(grid, grid, indexing="ij")
            cell_centres = np.stack([xs.ravel(), ys.ravel()], axis=1)
            centres.append(np.repeat(cell_centres, per_cell, axis=0))
        return np.concatenate(centres).astype(np.float32)


#: Made for faces up to ~5 m away: group photos, faces small in the frame.
FULL_RANGE = BlazeFaceSpec("face_detection_full_range.tflite", 192, ((4, 1),), 0.5)
#: Made for faces within ~2 m: selfies and close-ups.
SHORT_RANGE = BlazeFaceSpec("face_detection_short_range.tflite", 128, ((8, 2), (16, 6)), 0.5)


#: BlazeFace's six keypoints in its output order, named as the contract's
#: Landmarks fields. Right and left are the subject's: the right eye's x is
#: the smaller in a photo of someone facing the camera.
KEYPOINTS = ("right_eye", "left_eye", "nose_tip", "mouth", "right_ear", "left_ear")

#: (x, y) of each keypoint, in KEYPOINTS order, in the same pixels as the box.
Points = tuple[tuple[float, float], ...]


@dataclass(frozen=True)
class Detection:
    """A face box in pixels of the image it was found in, its confidence and its keypoints."""

    x1: float
    y1: float
    x2: float
    y2: float
    score: float
    keypoints: Points = ()

    def moved(self, scale: float, dx: float, dy: float) -> Detection:
        """The same face in other pixels: each coordinate times ``scale``, then shifted."""
        return Detection(
            self.x1 * scale + dx,
            self.y1 * scale + dy,
            self.x2 * scale + dx,
            self.y2 * scale + dy,
            self.score,
            tuple((x * scale + dx, y * scale + dy) for x, y in self.keypoints),
        )


def letterbox(image: Image.Image, size: int) -> tuple[NDArray[np.float32], float, float, float]:
    """Fit an RGB image into a square float tensor of side ``size`` in [-1, 1], padded black.

    Returns the tensor and the scale and offsets that map tensor pixels back.
    """
    scale = size / max(image.width, image.height)
    width = max(1, round(image.width * scale))
    height = max(1, round(image.height * scale))
    resized = image
    if (width, height) != image.size:
        resized = image.resize((width, height), Image.Resampling.BILINEAR, reducing_gap=2.0)
    canvas = np.full((size, size, 3), -1.0, dtype=np.float32)
    left = (size - width) // 2
    top = (size - height) // 2
    pixels = np.asarray(resized, dtype=np.float32)
    canvas[top : top + height, left : left + width] = pixels / 127.5 - 1.0
    return canvas, scale, float(left), float(top)


class BlazeFace:
    """One BlazeFace variant; call it with an RGB image to get its faces."""

    def __init__(self, spec: BlazeFaceSpec, runner: Runner) -> None:
        self.spec = spec
        self._runner = runner
        self._anchors = spec.anchors()

    def __call__(self, image: Image.Image, min_score: float | None = None) -> list[Detection]:
        """The faces in ``image`` scored at least ``min_score`` (the variant's own by default)."""
        size = self.spec.input_size
        tensor, scale, left, top = letterbox(image, size)
        outputs = self._runner(tensor[np.newaxis])
        # The variants name their outputs differently; the box regressor is the wide one.
        regressors, classifiers = sorted(outputs, key=lambda o: o.shape[-1], reverse=True)
        boxes, points, scores = self.decode(regressors[0], classifiers[0])
        keep = scores >= (self.spec.min_score if min_score is None else min_score)
        detections = []
        for (cx, cy, w, h), found, score in zip(
            boxes[keep], points[keep], scores[keep], strict=True
        ):
            # From the letterboxed input's unit square back to the image's pixels.
            pixels = (found * size - (left, top)) / scale
            detections.append(
                Detection(
                    x1=((cx - w / 2) * size - left) / scale,
                    y1=((cy - h / 2) * size - top) / scale,
                    x2=((cx + w / 2) * size - left) / scale,
                    y2=((cy + h / 2) * size - top) / scale,
                    score=float(score),
                    keypoints=tuple((float(x), float(y)) for x, y in pixels),
                )
            )
        return detections

    def decode(
        self, regressors: NDArray[np.float32], classifiers: NDArray[np.float32]
    ) -> tuple[NDArray[np.float32], NDArray[np.float32], NDArray[np.float32]]:
        """Raw outputs to boxes, keypoints and scores, normalised to the input.

        Boxes are (cx, cy, w, h); keypoints an (x, y) row for each of
        KEYPOINTS. The regressor gives both as offsets from the anchor's
        centre, in input pixels (MediaPipe's anchors have unit size).
        """
        size = self.spec.input_size
        centres = regressors[:, :2] / size + self._anchors
        sizes = regressors[:, 2:4] / size
        count = len(KEYPOINTS)
        offsets = regressors[:, 4 : 4 + 2 * count].reshape(-1, count, 2)
        points = (offsets / size + self._anchors[:, np.newaxis, :]).astype(np.float32, copy=False)
        logits = np.clip(classifiers[:, 0].astype(np.float64), -100.0, 100.0)
        scores = 1.0 / (1.0 + np.exp(-logits))
        return np.concatenate([centres, sizes], axis=1), points, scores.astype(np.float32)


def iou(box: Detection, others: list[Detection]) -> NDArray[np.float64]:
    """Intersection over union of ``box`` with each of ``others``."""
    coords = np.array([(o.x1, o.y1, o.x2, o.y2) for o in others], dtype=np.float64)
    x1 = np.maximum(box.x1, coords[:, 0])
    y1 = np.maximum(box.y1, coords[:, 1])
    x2 = np.minimum(box.x2, coords[:, 2])
    y2 = np.minimum(box.y2, coords[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = (box.x2 - box.x1) * (box.y2 - box.y1)
    areas = (coords[:, 2] - coords[:, 0]) * (coords[:, 3] - coords[:, 1])
    union = area + areas - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def weighted_nms(detections: list[Detection], threshold: float = 0.3) -> list[Detection]:
    """MediaPipe's weighted non-max suppression, most confident first.

    Overlapping boxes are averaged by score rather than dropped, which steadies
    boxes when several anchors (or several scales) see the same face.
    """
    remaining = sorted(detections, key=lambda d: d.score, reverse=True)
    merged = []
    while remaining:
        best = remaining[0]
        overlaps = iou(best, remaining) > threshold
        group = [d for d, hit in zip(remaining, overlaps, strict=True) if hit]
        weights = np.array([d.score for d in group])
        coords = np.array([(d.x1, d.y1, d.x2, d.y2) for d in group]) * weights[:, None]
        x1, y1, x2, y2 = coords.sum(axis=0) / weights.sum()
        # Keypoints are averaged as their boxes are (when every box has them).
        points = best.keypoints
        if points and all(len(d.keypoints) == len(points) for d in group):
            weighted = np.array([d.keypoints for d in group]) * weights[:, None, None]
            points = tuple((float(x), float(y)) for x, y in weighted.sum(axis=0) / weights.sum())
        merged.append(Detection(float(x1), float(y1), float(x2), float(y2), best.score, points))
        remaining = [d for d, hit in zip(remaining, overlaps, strict=True) if not hit]
    return merged


def drop_enclosing(detections: list[Detection], overlap: float = 0.7) -> list[Detection]:
    """Drop a detection that mostly holds a more confident one: a face holds no face.

    The short-range detector, seeing a small face in a large image, sometimes
    boxes the whole head and shoulders around it at low confidence; IoU-based
    suppression keeps both, since the boxes differ so much in size.
    """
    kept: list[Detection] = []
    for candidate in sorted(detections, key=lambda d: d.score, reverse=True):
        area = (candidate.x2 - candidate.x1) * (candidate.y2 - candidate.y1)
        swallows = False
        for better in kept:
            width = min(candidate.x2, better.x2) - max(candidate.x1, better.x1)
            height = min(candidate.y2, better.y2) - max(candidate.y1, better.y1)
            inner = (better.x2 - better.x1) * (better.y2 - better.y1)
            if width > 0 and height > 0 and inner < area and width * height > overlap * inner:
                swallows = True
                break
        if not swallows:
            kept.append(candidate)
    return kept
