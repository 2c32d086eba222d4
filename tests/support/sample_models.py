"""Models with known behaviour, loaded by the tests in-process or by import string."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from PIL import Image

from emotion import BBox, Expression, Model, Response, Result
from emotion.contract import Landmarks, Options, Point

# Which processes import this module: tests that check it name a file here.
if os.environ.get("EMOTION_TEST_IMPORTS"):
    with open(os.environ["EMOTION_TEST_IMPORTS"], "a") as imports:
        imports.write(f"{os.getpid()}\n")


class SizeModel(Model):
    """One face covering the whole image, with scores that depend on its size.

    Lets a test see exactly which image the model received.
    """

    def process_sample(self, image: Image.Image) -> Response:
        width, height = image.size
        happiness = width / (width + height)
        return Response(
            response=[
                Result(
                    bbox=BBox(x1=0, y1=0, x2=width, y2=height),
                    expression=Expression(happiness=happiness, neutral=1 - happiness),
                ),
                Result(bbox=BBox(x1=1.5, y1=2.5, x2=3.5, y2=4.5), expression=Expression(fear=1)),
            ]
        )


class HalfSizeModel(SizeModel):
    """Answers like SizeModel from a JPEG decoded at reduced scale (min_size 500).

    Its boxes come back scaled to the full image: a test sees both steps.
    """

    min_size = 500


class SeenModeModel(Model):
    """Reports the image's mode and size through its box, for decode tests."""

    seen: list[tuple[str, tuple[int, int]]]

    def __init__(self) -> None:
        self.seen = []

    def process_sample(self, image: Image.Image) -> Response:
        self.seen.append((image.mode, image.size))
        return Response()


class GatedModel(Model):
    """Blocks in process_sample until the test opens the gate."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.gate = threading.Event()
        self.fail = False

    def process_sample(self, image: Image.Image) -> Response:
        self.entered.set()
        if not self.gate.wait(timeout=30):
            raise TimeoutError("the test never opened the gate")
        if self.fail:
            raise RuntimeError("failed after the gate opened")
        return Response(response=[Result()])


class FileGatedModel(Model):
    """GatedModel for another process: the gate is the file EMOTION_TEST_GATE.

    Adds a line to EMOTION_TEST_CALLS for each image it starts, then waits
    for the file to exist.
    """

    def process_sample(self, image: Image.Image) -> Response:
        with open(os.environ["EMOTION_TEST_CALLS"], "a") as calls:
            calls.write(f"{os.getpid()}\n")
        gate = Path(os.environ["EMOTION_TEST_GATE"])
        deadline = time.monotonic() + 30
        while not gate.exists():
            if time.monotonic() > deadline:
                raise TimeoutError("the test never opened the gate")
            time.sleep(0.01)
        return Response(response=[Result()])


class CrowdModel(Model):
    """Forty thousand faces in every image: an answer of 1.2 MB."""

    def process_sample(self, image: Image.Image) -> Response:
        face = Result(bbox=BBox(x1=1.5, y1=2.5, x2=3.5, y2=4.5), expression=Expression(fear=1))
        return Response(response=[face] * 40_000)


class GatedLoadModel(Model):
    """Blocks in load() until the test opens the gate."""

    def __init__(self) -> None:
        self.gate = threading.Event()

    def load(self) -> None:
        if not self.gate.wait(timeout=30):
            raise TimeoutError("the test never opened the gate")

    def process_sample(self, image: Image.Image) -> Response:
        return Response()


class SlowModel(Model):
    """Takes EMOTION_TEST_SECONDS per image; touches EMOTION_TEST_MARKER when it starts.

    Also adds a line to EMOTION_TEST_CALLS for each image it starts, if set.
    Used by the subprocess tests of the graceful drain and of inference processes.
    """

    def process_sample(self, image: Image.Image) -> Response:
        marker = os.environ.get("EMOTION_TEST_MARKER")
        if marker:
            Path(marker).touch()
        calls = os.environ.get("EMOTION_TEST_CALLS")
        if calls:
            with open(calls, "a") as log:
                log.write(f"{os.getpid()}\n")
        time.sleep(float(os.environ.get("EMOTION_TEST_SECONDS", "2")))
        return Response(response=[Result(bbox=BBox(x2=image.width, y2=image.height))])


class RaisingModel(Model):
    def process_sample(self, image: Image.Image) -> Response:
        raise ZeroDivisionError("secret detail that must not reach the client")


class WrongTypeModel(Model):
    def process_sample(self, image: Image.Image) -> Response:
        return {"response": []}  # type: ignore[return-value]


class FailingLoadModel(Model):
    def load(self) -> None:
        raise FileNotFoundError("weights.bin is missing")

    def process_sample(self, image: Image.Image) -> Response:
        return Response()


class ClosingModel(Model):
    """Records its lifecycle calls."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def load(self) -> None:
        self.calls.append("load")

    def process_sample(self, image: Image.Image) -> Response:
        self.calls.append("process_sample")
        return Response()

    def close(self) -> None:
        self.calls.append("close")


class NotAModel:
    def process_sample(self, image: Image.Image) -> Response:
        return Response()


class AbstractModel(Model):
    """Forgets to implement process_sample."""


class CrashingInitModel(Model):
    def __init__(self) -> None:
        raise RuntimeError("no GPU here")

    def process_sample(self, image: Image.Image) -> Response:
        return Response()


class PidModel(Model):
    """Answers with the serving process's pid as the box's x1."""

    def process_sample(self, image: Image.Image) -> Response:
        return Response(response=[Result(bbox=BBox(x1=os.getpid()))])


class CrashingModel(Model):
    """Kills its process on an image wider than 1000 pixels; answers like PidModel otherwise."""

    def load(self) -> None:
        flag = os.environ.get("EMOTION_TEST_FAIL_FILE")
        if flag and Path(flag).exists():
            raise RuntimeError("told to fail by the test")

    def process_sample(self, image: Image.Image) -> Response:
        if image.width > 1000:
            os._exit(3)
        return Response(response=[Result(bbox=BBox(x1=os.getpid()))])


class SlowLoadModel(Model):
    """load() takes EMOTION_TEST_SECONDS."""

    def load(self) -> None:
        time.sleep(float(os.environ.get("EMOTION_TEST_SECONDS", "30")))

    def process_sample(self, image: Image.Image) -> Response:
        return Response()


class BatchModel(SizeModel):
    """Answers like SizeModel, and records the size of every batch it gets."""

    min_size = 500

    def __init__(self) -> None:
        self.batches: list[int] = []
        self.broken: str | None = None

    def process_batch(self, images: Sequence[Image.Image]) -> list[Response]:
        self.batches.append(len(images))
        if self.broken == "raise":
            raise MemoryError("batch too big for the device")
        answers = [self.process_sample(image) for image in images]
        if self.broken == "short":
            return answers[:-1]
        return answers


class UnencodableModel(Model):
    """Returns a Response whose float field holds a string."""

    def process_sample(self, image: Image.Image) -> Response:
        return Response(response=[Result(bbox=BBox(x1="wide"))])  # type: ignore[arg-type]


# Models that break one of check_model's properties each (tests/testing/test_check_model.py).


class WholeImageModel(Model):
    """One face the size of the image, happiness 0.75: keeps every property."""

    happiness = 0.75

    def process_sample(self, image: Image.Image) -> Response:
        return self.answer(image, Expression(happiness=self.happiness, neutral=1 - self.happiness))

    def answer(self, image: Image.Image, expression: Expression) -> Response:
        box = BBox(x1=0, y1=0, x2=image.width, y2=image.height)
        return Response(response=[Result(bbox=box, expression=expression)])


class OverconfidentModel(WholeImageModel):
    """Happiness 1.5 and neutral -0.5: they sum to 1, but are not probabilities."""

    happiness = 1.5


class UnnormalizedModel(WholeImageModel):
    """Happiness 0.5 and nothing else: a distribution that does not sum to 1."""

    def process_sample(self, image: Image.Image) -> Response:
        return self.answer(image, Expression(happiness=0.5))


class OverflowingBoxModel(WholeImageModel):
    """Its box's width and height swapped: outside any image that is not square."""

    def process_sample(self, image: Image.Image) -> Response:
        box = BBox(x1=0, y1=0, x2=image.height, y2=image.width)
        return Response(response=[Result(bbox=box, expression=Expression(neutral=1))])


class UnsureModel(WholeImageModel):
    """A detection confidence of 1.5."""

    def process_sample(self, image: Image.Image) -> Response:
        response = super().process_sample(image)
        response.response[0].confidence = 1.5
        return response


class WanderingLandmarksModel(WholeImageModel):
    """A nose tip one pixel right of the image."""

    def process_sample(self, image: Image.Image) -> Response:
        response = super().process_sample(image)
        nose = Point(x=image.width + 1, y=image.height / 2)
        response.response[0].landmarks = Landmarks(nose_tip=nose)
        return response


class FussyModel(WholeImageModel):
    """Fails on one kind of image, named by EMOTION_TEST_REFUSE: a mode, "tiny" or "large"."""

    def process_sample(self, image: Image.Image) -> Response:
        refused = os.environ["EMOTION_TEST_REFUSE"]
        if refused == "tiny" and min(image.size) < 32:
            raise ValueError("the face detector needs 32 pixels")
        if refused == "large" and max(image.size) > 2048:
            raise MemoryError("the model's input buffer holds 2048 pixels a side")
        if image.mode == refused:
            raise ValueError(f"cannot read mode {image.mode}")
        return super().process_sample(image)


class CoinFlipModel(WholeImageModel):
    """Happy on every other call."""

    def __init__(self) -> None:
        self.calls = 0

    def process_sample(self, image: Image.Image) -> Response:
        self.calls += 1
        happiness = float(self.calls % 2)
        return self.answer(image, Expression(happiness=happiness, neutral=1 - happiness))


class RememberingModel(WholeImageModel):
    """Less happy with each new image size it sees: the same answer twice, not after others."""

    def __init__(self) -> None:
        self.seen: set[tuple[int, int]] = set()

    def process_sample(self, image: Image.Image) -> Response:
        self.seen.add(image.size)
        happiness = 1 / len(self.seen)
        return self.answer(image, Expression(happiness=happiness, neutral=1 - happiness))


class ConfiguredModel(WholeImageModel):
    """Takes its happiness as an argument, which the server's own instances never get."""

    def __init__(self, happiness: float = 0.75) -> None:
        self.happiness = happiness


class ConfidentModel(Model):
    """Four faces, not in order of confidence, one without a confidence; ignores options.

    Each face's box has its place in the model's answer as x1 (1 to 4).
    """

    version = "2.5.0"
    fills_confidence = True
    labels = ("happiness", "neutral")
    #: The confidence of each face, in the order the model gives them.
    CONFIDENCES = (0.6, 0.9, None, 0.3)

    def process_sample(self, image: Image.Image) -> Response:
        return Response(
            response=[
                Result(bbox=BBox(x1=place), expression=Expression(neutral=1), confidence=value)
                for place, value in enumerate(self.CONFIDENCES, start=1)
            ]
        )


class OptionsModel(Model):
    """Declares options, and answers with what it got.

    Each face's box has max_faces as x1 and min_confidence as y1 (-1 when
    unset); it gives two faces more than max_faces, so a test sees the server
    cut its answer. Every face has confidence 1.
    """

    fills_confidence = True

    def process_sample(self, image: Image.Image, options: Options | None = None) -> Response:
        assert options is not None, "the server always passes options"
        lowest = -1.0 if options.min_confidence is None else options.min_confidence
        face = Result(bbox=BBox(x1=options.max_faces, y1=lowest), confidence=1.0)
        return Response(response=[face] * (options.max_faces + 2))


class BatchOptionsModel(OptionsModel):
    """OptionsModel whose batches take each image's options, and are recorded."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []

    def process_batch(
        self, images: Sequence[Image.Image], options: Sequence[Options] | None = None
    ) -> list[Response]:
        assert options is not None
        assert len(options) == len(images)
        self.batches.append([each.max_faces for each in options])
        return [self.process_sample(i, o) for i, o in zip(images, options, strict=True)]


class DigestModel(Model):
    """Its weights digest names the process that loaded it; "" where load() never ran."""

    version = "0.3"
    fills_landmarks = True

    def __init__(self) -> None:
        self.digest = ""

    def load(self) -> None:
        self.digest = "sha256:" + hashlib.sha256(str(os.getpid()).encode()).hexdigest()

    def weights_digest(self) -> str:
        return self.digest

    def process_sample(self, image: Image.Image) -> Response:
        return Response()


class SquaresModel(Model):
    """A face for each coloured square on black: its box, and an expression read from its colour.

    Red is happiness, blue sadness (in proportion), the rest neutral; the
    faces come smallest first, an order unrelated to who is who. Lets a test
    draw a video whose true tracks it knows (tests/serving/test_tracking.py).
    """

    def process_sample(self, image: Image.Image) -> Response:
        import numpy as np

        pixels = np.asarray(image.convert("RGB")).reshape(-1, 3)
        width = image.size[0]
        faces = []
        for colour in np.unique(pixels, axis=0):
            if not colour.any():
                continue
            where = np.flatnonzero((pixels == colour).all(axis=1))
            ys, xs = np.divmod(where, width)
            red, _, blue = (float(c) / 255 for c in colour)
            happiness, sadness = red / 2, blue / 2
            faces.append(
                Result(
                    bbox=BBox(
                        x1=float(xs.min()),
                        y1=float(ys.min()),
                        x2=float(xs.max() + 1),
                        y2=float(ys.max() + 1),
                    ),
                    expression=Expression(
                        happiness=happiness, sadness=sadness, neutral=1 - happiness - sadness
                    ),
                )
            )
        faces.sort(key=lambda face: (face.bbox.x2 - face.bbox.x1) if face.bbox else 0)
        return Response(response=faces)
