"""The model API: what a model author implements, and how the server finds it."""

from __future__ import annotations

import abc
import importlib
from collections.abc import Sequence
from typing import ClassVar

from PIL import Image

from emotion.codec import encode
from emotion.contract import Response


class Model(abc.ABC):
    """Base class of every model the server can serve.

    Subclass it, implement :meth:`process_sample`, and start the server with
    ``emotion serve --model package.module:ClassName``. The server creates one
    instance per process with no arguments, calls :meth:`load` once before the
    first request and :meth:`close` once at shutdown.

    :meth:`process_sample` runs in inference processes, one image at a time in
    each; with ``--inference-processes 0`` or batching, in a worker's threads,
    several at once. Keep per-call state local, or guard shared state.
    """

    #: Shown in logs and error messages; defaults to the class name.
    name: ClassVar[str] = ""

    #: The length in pixels the image's longer side needs for this model to
    #: work as well as on the full image, or None to always get the full image.
    #: With a value, the server decodes large JPEGs at 1/2, 1/4 or 1/8 scale
    #: (never below this length) and scales the returned boxes to the full image.
    min_size: ClassVar[int | None] = None

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if not cls.__dict__.get("name"):
            cls.name = cls.__name__

    def load(self) -> None:  # noqa: B027 - optional hook, empty by design
        """Load weights and warm up. Runs once, off the event loop, before serving.

        The server reports NOT_SERVING on its health service until this returns.
        """

    @abc.abstractmethod
    def process_sample(self, image: Image.Image) -> Response:
        """Find the faces in ``image`` and score their expressions.

        ``image`` is decoded and already turned upright by its EXIF
        orientation; its mode is whatever the file holds (RGB, L, RGBA, P,
        I;16, ...), so convert it to what the model needs. Boxes are pixel
        coordinates of this image.
        """

    def process_batch(self, images: Sequence[Image.Image]) -> list[Response]:
        """One Response per image, in order. Used only when the server batches.

        Override it when the model is faster per image in batches; the
        default runs :meth:`process_sample` on each. With ``--max-batch-size``
        above 1 the server collects concurrent calls into one call of this.
        """
        return [self.process_sample(image) for image in images]

    def close(self) -> None:  # noqa: B027 - optional hook, empty by design
        """Release what :meth:`load` acquired. Runs once, at shutdown."""


class ModelFailure(Exception):
    """The model raised, or broke its contract; the message names the model and is safe to send."""


def run_sample(model: Model, image: Image.Image) -> Response:
    """``model.process_sample(image)``, its answer checked against the contract."""
    try:
        response = model.process_sample(image)
    except Exception as exc:
        raise ModelFailure(f"model {model.name} failed: {type(exc).__name__}") from exc
    if not isinstance(response, Response):
        raise ModelFailure(
            f"model {model.name} returned {type(response).__name__}, not emotion.v1.Response"
        )
    return response


def run_batch(model: Model, images: Sequence[Image.Image]) -> list[Response]:
    """``model.process_batch(images)``, its answer checked against the contract."""
    try:
        responses = model.process_batch(images)
    except Exception as exc:
        raise ModelFailure(f"model {model.name} failed: {type(exc).__name__}") from exc
    if not isinstance(responses, list) or len(responses) != len(images):
        got = f"a list of {len(responses)}" if isinstance(responses, list) else _a(responses)
        raise ModelFailure(
            f"model {model.name}.process_batch returned {got} for {len(images)} images, "
            "not a list of as many emotion.v1.Response"
        )
    for response in responses:
        if not isinstance(response, Response):
            raise ModelFailure(
                f"model {model.name}.process_batch returned {_a(response)} in its list, "
                "not emotion.v1.Response"
            )
    return responses


def encode_response(response: Response, model: Model) -> bytes:
    """The answer written for the wire; a field of the wrong type fails here, as INTERNAL."""
    try:
        return encode(response)
    except Exception as exc:
        raise ModelFailure(
            f"model {model.name} returned a Response that cannot be encoded: {type(exc).__name__}"
        ) from exc


def _a(value: object) -> str:
    return f"a {type(value).__name__}"


class ModelLoadError(Exception):
    """The model named on the command line cannot be imported or created."""


def spec_of(model: Model) -> str:
    """The ``module:Class`` that :func:`load_model` makes ``model`` from, in another process."""
    cls = type(model)
    if cls.__module__ == "__main__" or "<locals>" in cls.__qualname__:
        raise ModelLoadError(
            f"model {cls.__qualname__} cannot be loaded by name in another process: "
            "define it in an importable module"
        )
    return f"{cls.__module__}:{cls.__qualname__}"


def load_model(spec: str) -> Model:
    """Import ``module:Class`` and return an instance of that Model subclass.

    Every failure is a ModelLoadError whose message names what was wrong, so
    the CLI can print it as one line.
    """
    module_name, sep, class_name = spec.partition(":")
    if not sep or not module_name or not class_name or ":" in class_name:
        raise ModelLoadError(f"model {spec!r} is not of the form 'package.module:ClassName'")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name or module_name.startswith(f"{exc.name}."):
            raise ModelLoadError(f"model module {module_name!r} not found") from exc
        raise ModelLoadError(f"model module {module_name!r} failed to import: {exc}") from exc
    except Exception as exc:
        raise ModelLoadError(
            f"model module {module_name!r} failed to import: {type(exc).__name__}: {exc}"
        ) from exc
    cls = getattr(module, class_name, None)
    if cls is None:
        raise ModelLoadError(f"module {module_name!r} has no attribute {class_name!r}")
    if not (isinstance(cls, type) and issubclass(cls, Model)):
        raise ModelLoadError(f"{spec} is not a subclass of emotion.Model")
    if getattr(cls, "__abstractmethods__", None):
        missing = ", ".join(sorted(cls.__abstractmethods__))
        raise ModelLoadError(f"{spec} does not implement {missing}")
    try:
        return cls()
    except Exception as exc:
        raise ModelLoadError(f"{spec}() failed: {type(exc).__name__}: {exc}") from exc
