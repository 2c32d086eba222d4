"""Admission: whether a call may start (at its headers), and its place (once its message came)."""

from __future__ import annotations

import contextlib
import enum
from collections.abc import Iterator

from emotion.security import BearerTokens


class State(enum.Enum):
    LOADING = "loading"
    SERVING = "serving"
    DRAINING = "draining"


class NotServing(Exception):
    """The model is still loading, or the server is shutting down; retry."""


class Busy(Exception):
    """As many calls are in progress as the server takes; retry with backoff."""


class Admission:
    """Checks a call's credentials, the server's state, and room for one more call.

    ``capacity`` bounds the calls in progress at once: those in the model,
    and those waiting for it or answering it. A call over it is
    refused at once rather than queued, so a client learns to back off
    instead of timing out.
    """

    def __init__(self, *, capacity: int, tokens: BearerTokens | None = None) -> None:
        self.capacity = capacity
        self._tokens = tokens
        self._state = State.LOADING
        self._admitted = 0

    @property
    def state(self) -> State:
        return self._state

    @property
    def admitted(self) -> int:
        """Calls admitted and not yet finished."""
        return self._admitted

    def start_serving(self) -> None:
        self._state = State.SERVING

    def start_draining(self) -> None:
        """Refuse every new call; those admitted go on."""
        self._state = State.DRAINING

    def check(self, authorization: str | None) -> None:
        """Raise why a call may not start: its credentials, or the server's state.

        ``authorization`` is the call's ``authorization`` header, if any.
        Checked at the headers, before the body is read.
        """
        if self._tokens is not None:
            self._tokens.check(authorization)
        if self._state is State.LOADING:
            raise NotServing("model is still loading; retry shortly")
        if self._state is State.DRAINING:
            raise NotServing("server is shutting down; retry on another")

    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        """Hold a place for one call, or raise Busy.

        Taken once the call's message has arrived, not at its headers: a
        client that sends its body slowly, or never, holds no place.
        """
        if self._admitted >= self.capacity:
            raise Busy(
                f"server is busy: {self._admitted} calls are in progress; retry with backoff"
            )
        self._admitted += 1
        try:
            yield
        finally:
            self._admitted -= 1
