"""What a supervisor tells each worker's server beyond the user's settings.

A server started on its own (:class:`emotion.Server`, `emotion serve
--workers 1 --inference-processes 0`) needs none of it; the user's
:class:`~emotion.config.ServerConfig` holds only what a user sets.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Wiring:
    """How one server joins the others of an `emotion serve`."""

    #: The Unix sockets of the inference processes (emotion.inference.process_pool)
    #: that run the model for this server, instead of its own threads.
    inference_sockets: tuple[str, ...] = ()
    #: Share the port with the other workers (SO_REUSEPORT): the kernel spreads
    #: new connections across them.
    reuse_port: bool = False
    #: Record metrics without serving them: the supervisor serves the workers' sum.
    record_metrics: bool = False

    def __post_init__(self) -> None:
        if not all(isinstance(path, str) and path for path in self.inference_sockets):
            raise ValueError(
                f"Wiring.inference_sockets must be paths, not {self.inference_sockets!r}"
            )
