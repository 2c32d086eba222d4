"""The one interface the service calls to answer an image, whichever backend runs it.

Two backends keep it: :class:`~emotion.inference.thread_backend.ThreadBackend`
(threads of the worker, with micro-batching as an option) and
:class:`~emotion.inference.process_client.InferenceProcesses` (the
supervisor's inference processes, the default of `emotion serve`).
"""

from __future__ import annotations

from typing import Protocol

from emotion.contract import ModelDescription, Options


class Backend(Protocol):
    """Runs images through the model, at most ``capacity`` at once, waiting or running.

    Refusals are exceptions that emotion.serving.statuses turns into statuses:
    QueueFull, DeadlinePassed, Aborted (emotion.inference.threads), InvalidImage,
    ModelFailure, ProcessExited.
    """

    @property
    def capacity(self) -> int:
        """Images it holds at most, waiting or running."""
        ...

    @property
    def queued(self) -> int:
        """Images taken and not answered yet."""
        ...

    async def start(self) -> None:
        """Get ready to run images: load the model, or reach the processes that hold it."""
        ...

    @property
    def description(self) -> ModelDescription:
        """What Describe says of the model that answers; known once :meth:`start` returned."""
        ...

    async def run(
        self, image: bytes, deadline: float | None, options: Options | None = None
    ) -> bytes:
        """The written Response for the encoded ``image``, by ``deadline`` (a monotonic instant).

        ``options`` are the request's, or None when it set none (most calls).
        """
        ...

    def abort(self) -> None:
        """End every call waiting for its answer with Aborted: the server is going down."""
        ...

    async def close(self) -> None:
        """Release the model or the processes' connections; nothing runs after it."""
        ...
