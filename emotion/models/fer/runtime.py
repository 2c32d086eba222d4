"""Loading the bundled .tflite files and running them on LiteRT from many threads."""

from __future__ import annotations

import hashlib
import threading
from importlib import resources
from typing import TYPE_CHECKING

from ai_edge_litert.interpreter import Interpreter

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray

#: SHA-256 of every bundled model file; a mismatch means a damaged install.
CHECKSUMS = {
    "face_detection_full_range.tflite": (
        "99bf9494d84f50acc6617d89873f71bf6635a841ea699c17cb3377f9507cfec3"
    ),
    "face_detection_short_range.tflite": (
        "3bc182eb9f33925d9e58b5c8d59308a760f4adea8f282370e428c51212c26633"
    ),
    "emotion_model_quantized.tflite": (
        "65e3961bb68f497bd02a8d075da8409364db90004edb80c0c6cb15647c4de559"
    ),
}


def weights_digest() -> str:
    """One digest for the three files: sha256 of their ``sha256sum`` listing, in name order.

    Computed from CHECKSUMS, which load() checks every file against, so it
    needs no file read and names exactly the weights a loaded model runs.
    """
    listing = "".join(f"{CHECKSUMS[name]}  {name}\n" for name in sorted(CHECKSUMS))
    return f"sha256:{hashlib.sha256(listing.encode()).hexdigest()}"


class WeightsError(Exception):
    """A bundled model file is missing or not the file this release was built with."""


def read_weights(filename: str) -> bytes:
    """The bytes of a bundled model file, after checking its SHA-256."""
    expected = CHECKSUMS[filename]
    try:
        data = resources.files(__package__).joinpath("data", filename).read_bytes()
    except FileNotFoundError:
        raise WeightsError(f"model file {filename} is missing from the installation") from None
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected:
        raise WeightsError(
            f"model file {filename} has SHA-256 {actual}, expected {expected}; reinstall emotion"
        )
    return data


class Runner:
    """Runs one model; callable from any thread.

    A LiteRT interpreter is not thread-safe, so each calling thread gets its
    own, created on its first call. Each interpreter is single-threaded: the
    server gets parallelism from running calls side by side.
    """

    def __init__(self, model: bytes) -> None:
        self._model = model
        self._local = threading.local()
        self._interpreter()  # fail in load(), not in the first request

    def _interpreter(self) -> Interpreter:
        interpreter: Interpreter | None = getattr(self._local, "interpreter", None)
        if interpreter is None:
            interpreter = Interpreter(model_content=self._model, num_threads=1)
            interpreter.allocate_tensors()
            self._local.interpreter = interpreter
            self._local.inputs = [d["index"] for d in interpreter.get_input_details()]
            self._local.outputs = [d["index"] for d in interpreter.get_output_details()]
        return interpreter

    def __call__(self, *inputs: NDArray[np.float32]) -> list[NDArray[np.float32]]:
        interpreter = self._interpreter()
        for index, value in zip(self._local.inputs, inputs, strict=True):
            interpreter.set_tensor(index, value)
        interpreter.invoke()
        return [interpreter.get_tensor(index) for index in self._local.outputs]
