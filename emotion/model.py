"""The model API: what a model author implements, and how the server finds it."""

from __future__ import annotations

import abc
import functools
import importlib
import inspect
import math
from collections.abc import Callable, Sequence
from typing import ClassVar

from PIL import Image

from emotion.codec import encode
from emotion.contract import (
    EXPRESSION_FIELDS,
    ModelDescription,
    ModelVersion,
    Options,
    Response,
    Result,
)


class Model(abc.ABC):
    """Base class of every model the server can serve.

    Subclass it, implement :meth:`process_sample`, and start the server with
    ``emotion serve --model package.module:ClassName``. The server creates one
    instance per process with no arguments, calls :meth:`load` once before the
    first request and :meth:`close` once at shutdown.

    :meth:`process_sample` runs in inference processes, one image at a time in
    each; with ``--inference-processes 0`` or batching, in a worker's threads,
    several at once. Keep per-call state local, or guard shared state.

    A model that wants the caller's :class:`~emotion.contract.Options` (the
    most faces wanted, the lowest confidence) declares a parameter named
    ``options`` on :meth:`process_sample` (or :meth:`process_batch`): the
    server then passes them, always an ``Options``, empty when the request
    set none. Whether the model uses them or not, the server cuts every
    answer to them before it is sent.
    """

    #: Shown in logs and error messages; defaults to the class name.
    name: ClassVar[str] = ""

    #: The model's version, sent with every answer (``Response.model``) and by
    #: Describe, so that callers can tell which version answered during a
    #: rolling update. Change it whenever the answers may change.
    version: ClassVar[str] = ""

    #: The Expression fields the model scores, in the contract's order; it
    #: leaves the others at 0. Describe tells callers.
    labels: ClassVar[tuple[str, ...]] = EXPRESSION_FIELDS

    #: Whether the model sets ``Result.confidence`` and ``Result.landmarks``
    #: (Describe tells callers; the default model does both).
    fills_confidence: ClassVar[bool] = False
    fills_landmarks: ClassVar[bool] = False

    #: The length in pixels the image's longer side needs for this model to
    #: work as well as on the full image, or None to always get the full image.
    #: With a value, the server decodes large JPEGs at 1/2, 1/4 or 1/8 scale
    #: (never below this length) and scales the returned boxes to the full image.
    min_size: ClassVar[int | None] = None

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if not cls.__dict__.get("name"):
            cls.name = cls.__name__
        unknown = [label for label in cls.labels if label not in EXPRESSION_FIELDS]
        if unknown:
            raise TypeError(
                f"{cls.__qualname__}.labels names {', '.join(unknown)}, which are not "
                f"Expression fields ({', '.join(EXPRESSION_FIELDS)})"
            )

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

        To skip work the caller does not want, declare a parameter
        ``options: Options | None = None``: the server passes the request's
        (an empty Options when it set none). Set ``Result.confidence`` and
        ``Result.landmarks`` where the model knows them, and say so with
        ``fills_confidence`` and ``fills_landmarks``.
        """

    def process_batch(self, images: Sequence[Image.Image]) -> list[Response]:
        """One Response per image, in order. Used only when the server batches.

        Override it when the model is faster per image in batches; the
        default runs :meth:`process_sample` on each. With ``--max-batch-size``
        above 1 the server collects concurrent calls into one call of this.
        Declare ``options`` (then a sequence, one Options per image) to get
        the requests'.
        """
        return [self.process_sample(image) for image in images]

    def weights_digest(self) -> str:
        """The digest of the weights this instance serves, or "" if it gives none.

        Written the OCI way, ``"sha256:"`` and 64 hex digits; Describe tells
        callers, so that two servers with one version but other weights can be
        told apart. Called after :meth:`load`.
        """
        return ""

    def close(self) -> None:  # noqa: B027 - optional hook, empty by design
        """Release what :meth:`load` acquired. Runs once, at shutdown."""


class ModelFailure(Exception):
    """The model raised, or broke its contract; the message names the model and is safe to send."""


def run_sample(model: Model, image: Image.Image, options: Options | None = None) -> Response:
    """``model.process_sample(image)``, its answer checked against the contract.

    A model whose ``process_sample`` declares ``options`` gets them (an empty
    Options for a request without); the answer is not yet cut to them: see
    :func:`apply_options`.
    """
    try:
        response = _sample(model, image, options)
    except Exception as exc:
        raise ModelFailure(f"model {model.name} failed: {type(exc).__name__}") from exc
    if not isinstance(response, Response):
        raise ModelFailure(
            f"model {model.name} returned {type(response).__name__}, not emotion.v1.Response"
        )
    return response


def run_batch(
    model: Model, images: Sequence[Image.Image], options: Sequence[Options | None] = ()
) -> list[Response]:
    """``model.process_batch(images)``, its answer checked against the contract.

    ``options`` are each image's (none for all when empty); a model whose
    ``process_batch`` declares ``options`` gets one Options per image, one
    that keeps the default gets each image's through ``process_sample``.
    """
    every = list(options) or [None] * len(images)
    try:
        method = type(model).process_batch
        if method is Model.process_batch:  # the default, with each image's options
            responses = [_sample(model, i, o) for i, o in zip(images, every, strict=True)]
        elif _takes_options(method):
            wanted = [o or Options() for o in every]
            responses = model.process_batch(images, options=wanted)  # type: ignore[call-arg]
        else:
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


def _sample(model: Model, image: Image.Image, options: Options | None) -> Response:
    if _takes_options(type(model).process_sample):
        return model.process_sample(image, options=options or Options())  # type: ignore[call-arg]
    return model.process_sample(image)


@functools.cache
def _takes_options(method: Callable[..., object]) -> bool:
    """Whether a model's method declares ``options``: looked up once per method."""
    try:
        return "options" in inspect.signature(method).parameters
    except (TypeError, ValueError):  # a builtin or a callable with no signature
        return False


class InvalidOptions(ValueError):
    """A request's options that no answer can keep; the message names the field."""


def check_options(options: Options | None) -> None:
    """Raise InvalidOptions for options no answer can keep: a NaN or out-of-range confidence."""
    if options is None or options.min_confidence is None:
        return
    value = options.min_confidence
    if math.isnan(value) or not 0.0 <= value <= 1.0:
        raise InvalidOptions(
            f"request.options.min_confidence is {value:g}; send a confidence from 0 to 1, "
            "or leave it unset for the model's own threshold"
        )


def apply_options(response: Response, options: Options | None) -> None:
    """Cut ``response`` to ``options`` in place, whether or not the model did.

    Faces below ``min_confidence`` go; a face without a confidence stays, as
    nothing says it is below. With ``max_faces``, the faces are put most
    confident first (those without a confidence after those with, each kind
    in the model's order) and the first ``max_faces`` kept. Without options,
    the answer is left exactly as the model gave it.
    """
    if options is None:
        return
    faces = response.response
    lowest = options.min_confidence
    if lowest is not None:
        faces = [f for f in faces if f.confidence is None or f.confidence >= lowest]
    if options.max_faces:
        faces = sorted(faces, key=_most_confident_first)[: options.max_faces]
    response.response = faces


def _most_confident_first(face: Result) -> tuple[bool, float]:
    return (face.confidence is None, -(face.confidence or 0.0))


def describe(model: Model) -> ModelDescription:
    """What Describe says of ``model``; call it after ``load()`` (for its weights digest)."""
    return ModelDescription(
        name=model.name,
        version=model.version,
        weights_digest=model.weights_digest(),
        labels=[label for label in EXPRESSION_FIELDS if label in model.labels],
        fills_confidence=model.fills_confidence,
        fills_landmarks=model.fills_landmarks,
    )


def stamp(response: Response, model: Model) -> None:
    """Name the model that produced ``response``, and its version, on the answer itself."""
    response.model = _version_of(model.name, model.version)


@functools.cache
def _version_of(name: str, version: str) -> ModelVersion:
    # One message per model, shared by its answers: they are written, never changed.
    return ModelVersion(name=name, version=version)


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
