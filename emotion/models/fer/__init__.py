"""The default model: MediaPipe BlazeFace finds faces, the FER2013 mini-Xception scores them.

Both networks ship inside the package as .tflite files and run on LiteRT on
the CPU; nothing is downloaded. Install with ``pip install 'emotion[fer]'``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

try:
    import ai_edge_litert  # noqa: F401
    import numpy as np
except ModuleNotFoundError as exc:
    raise ModuleNotFoundError(
        f"{exc.name} is not installed; the fer model needs: pip install 'emotion[fer]'",
        name=exc.name,
    ) from exc
from PIL import Image

from emotion.contract import BBox, Expression, Landmarks, Options, Point, Response, Result
from emotion.model import Model
from emotion.models.fer.classifier import LABELS, ExpressionClassifier
from emotion.models.fer.detector import (
    FULL_RANGE,
    KEYPOINTS,
    SHORT_RANGE,
    BlazeFace,
    Detection,
    drop_enclosing,
    weighted_nms,
)
from emotion.models.fer.runtime import Runner, WeightsError, read_weights, weights_digest

if TYPE_CHECKING:
    from collections.abc import Iterator

    from numpy.typing import NDArray

__all__ = ["FerModel", "WeightsError", "to_rgb"]

# Each of 2x2 tiles spans 5/8 of a side, so that every face up to a quarter of
# the image fits whole in one of them; faces cut by a tile's inner edge are
# left to a neighbour.
_TILE_SPAN = 1.25
_EDGE_MARGIN = 0.01
#: The lowest detection score a caller's min_confidence reaches down to. Below
#: it, false faces come fast (group.jpg's 4 faces become 10 at 0.1), and the
#: anchors left to suppress cost time (5 times the detection's at 0.01).
LOWEST_SCORE = 0.25


class FerModel(Model):
    """Faces and their expressions, on the CPU, from files bundled with the package.

    Detection runs two passes and merges them: the short-range BlazeFace on
    the whole image (close-ups, down to faces ~1/8 of the image's longer
    side), and the full-range BlazeFace on ``tiles`` by ``tiles`` overlapping
    tiles (faces up to a quarter of the image, down to ~1/15 of its longer side
    with 2 and ~1/25 with 3), and where tiles could cut a face too small for
    the short-range pass, the full-range BlazeFace on the whole image too.
    ``tiles=1`` runs only that whole-image pass besides the short-range one:
    about 3 times faster, faces below ~1/10 are missed.
    """

    name = "fer"
    #: Raised whenever its answers may change: the weights, or how they are used.
    version = "1.0.0"
    fills_confidence = True
    fills_landmarks = True
    # Detection looks at no more than ~300 pixels, but expressions are read
    # from the face itself: at 1024 pixels a face 1/15 of the image is still
    # larger than the classifier's 64x64 input.
    min_size = 1024

    def __init__(self, *, tiles: int = 2) -> None:
        if tiles < 1:
            raise ValueError("tiles must be at least 1")
        self.tiles = tiles
        # Detection never looks at more pixels than this: at this size each
        # tile is exactly the detector's input, so tiles need no resizing.
        self.working_size = round(FULL_RANGE.input_size * max(1.0, tiles / _TILE_SPAN))

    def load(self) -> None:
        self._short = BlazeFace(SHORT_RANGE, Runner(read_weights(SHORT_RANGE.filename)))
        self._full = BlazeFace(FULL_RANGE, Runner(read_weights(FULL_RANGE.filename)))
        self._classify = ExpressionClassifier(
            Runner(read_weights("emotion_model_quantized.tflite"))
        )

    def process_sample(self, image: Image.Image, options: Options | None = None) -> Response:
        """Faces, most confident first, each with its box, keypoints and expression.

        With ``options``, only the faces wanted are classified: the first
        ``max_faces``, those at ``min_confidence`` or above. A min_confidence
        below the detector's own 0.5 finds fainter faces, down to LOWEST_SCORE.
        """
        options = options or Options()
        rgb = to_rgb(image)
        lowest = options.min_confidence
        faces = self.detect(rgb, None if lowest is None else max(lowest, LOWEST_SCORE))
        if lowest is not None:
            faces = [face for face in faces if face.score >= lowest]
        if options.max_faces:
            faces = faces[: options.max_faces]
        gray = rgb.convert("L")
        results = []
        for face in faces:
            scores = self.classify(gray, face)
            results.append(
                Result(
                    bbox=BBox(x1=face.x1, y1=face.y1, x2=face.x2, y2=face.y2),
                    expression=Expression(**dict(zip(LABELS, scores.tolist(), strict=True))),
                    confidence=face.score,
                    landmarks=landmarks(face),
                )
            )
        return Response(response=results)

    def weights_digest(self) -> str:
        return weights_digest()

    def classify(self, gray: Image.Image, face: Detection) -> NDArray[np.float64]:
        """The seven expression probabilities of one face, in ``LABELS`` order."""
        return self._classify(gray, face)

    def detect(self, rgb: Image.Image, min_score: float | None = None) -> list[Detection]:
        """Faces in ``rgb``, in its pixel coordinates, clipped to it, most confident first.

        ``min_score`` replaces each detector's own threshold where it is lower;
        a higher one leaves detection as it is (the caller drops the faces
        below it), so that the faces kept are those found without it.
        """
        short = full = None
        if min_score is not None:
            short = min(min_score, SHORT_RANGE.min_score)
            full = min(min_score, FULL_RANGE.min_score)
        factor = min(1.0, self.working_size / max(rgb.size))
        work = rgb
        if factor < 1.0:
            size = (max(1, round(rgb.width * factor)), max(1, round(rgb.height * factor)))
            work = rgb.resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0)
        found = self._short(work, short)
        if not _tiles_hold_small_faces(work.size, self.tiles):
            found.extend(self._full(work, full))
        for tile in _tiles(work.width, work.height, self.tiles):
            found.extend(_inside(self._full(work.crop(tile), full), tile, work.size))
        faces = []
        for face in drop_enclosing(weighted_nms(found)):
            x1, x2 = (min(max(v / factor, 0.0), rgb.width) for v in (face.x1, face.x2))
            y1, y2 = (min(max(v / factor, 0.0), rgb.height) for v in (face.y1, face.y2))
            # Keypoints as the boxes: in the image's pixels, within it.
            points = tuple(
                (min(max(x / factor, 0.0), rgb.width), min(max(y / factor, 0.0), rgb.height))
                for x, y in face.keypoints
            )
            if x2 - x1 >= 1 and y2 - y1 >= 1:
                faces.append(Detection(x1, y1, x2, y2, face.score, points))
        return sorted(faces, key=lambda f: (-f.score, f.x1, f.y1))


def landmarks(face: Detection) -> Landmarks | None:
    """The contract's Landmarks of a detection's keypoints; None when it has none."""
    if not face.keypoints:
        return None
    points = {name: Point(x=x, y=y) for name, (x, y) in zip(KEYPOINTS, face.keypoints, strict=True)}
    return Landmarks(**points)


def _tiles_hold_small_faces(size: tuple[int, int], count: int) -> bool:
    """Whether every face too small for the short-range pass fits whole in one of the tiles.

    2x2 tiles overlap by a quarter of each side: on an image at most twice as
    long as it is wide that holds such faces, and a full-range pass on the
    whole image finds nothing more (a fifth of the detection time saved).
    3x3 tiles overlap by an eighth, and a longer image by less across its
    short side: a face on a seam is cut by every tile, and the whole-image
    pass is what finds it (measured on faces 1/10 of the image).
    """
    return count == 2 and 2 * min(size) >= max(size)


def _tiles(width: int, height: int, count: int) -> Iterator[tuple[int, int, int, int]]:
    if count == 1:
        return
    tile_w = min(width, round(width / count * _TILE_SPAN))
    tile_h = min(height, round(height / count * _TILE_SPAN))
    for row in range(count):
        for col in range(count):
            left = round(col * (width - tile_w) / (count - 1))
            top = round(row * (height - tile_h) / (count - 1))
            yield left, top, left + tile_w, top + tile_h


def _inside(
    found: list[Detection], tile: tuple[int, int, int, int], size: tuple[int, int]
) -> Iterator[Detection]:
    """Tile detections moved to image coordinates, except those cut by an inner edge."""
    left, top, right, bottom = tile
    margin = _EDGE_MARGIN * max(size)
    for face in found:
        moved = face.moved(1.0, left, top)
        if (
            (left > 0 and moved.x1 < left + margin)
            or (top > 0 and moved.y1 < top + margin)
            or (right < size[0] and moved.x2 > right - margin)
            or (bottom < size[1] and moved.y2 > bottom - margin)
        ):
            continue
        yield moved


def to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB for any Pillow mode: 16-bit and float rescaled, transparency over white."""
    if image.mode == "RGB":
        return image
    if image.mode in {"I;16", "I;16B", "I;16L", "I;16N", "I", "F"}:
        pixels = np.asarray(image, dtype=np.float64)
        if image.mode == "F":
            low, high = float(pixels.min()), float(pixels.max())
        else:
            low, high = 0.0, 65535.0 if pixels.max() > 255 else 255.0
        scaled = (pixels - low) * (255.0 / max(high - low, 1e-12))
        return Image.fromarray(np.clip(scaled, 0, 255).astype(np.uint8), "L").convert("RGB")
    if image.mode in {"RGBA", "LA", "PA", "La", "RGBa"} or "transparency" in image.info:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")
