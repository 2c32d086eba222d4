"""The policies that guard one connection against HTTP/2 abuse: counters that decide, nothing more.

Each guard is a small class holding the state of one connection. The h2
connection (``connection``) and the protocol (``protocol``) feed them what
arrives; a guard that trips raises :class:`Abuse`, which h2 answers with
GOAWAY(ENHANCE_YOUR_CALM) before the protocol closes the connection. Nothing
here touches a socket, h2 or grpclib, so each policy can be read, and
tested, on its own.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from h2.exceptions import DenialOfServiceError

Clock = Callable[[], float]


class Abuse(DenialOfServiceError):
    """The client did what no conforming client does, at a rate that costs the server.

    A ``DenialOfServiceError`` for h2: raised while h2 reads a frame, it makes
    h2 queue GOAWAY(ENHANCE_YOUR_CALM), as it does for its own guards.
    """


class PrematureResets:
    """Rapid Reset (CVE-2023-44487): streams the client resets before they could be answered.

    Opening a stream makes the server start a call; resetting it at once
    costs the client one frame. A client that cancels now and then (a
    deadline, a user who went away) resets a few of its streams; an attacker
    resets nearly all. So, as Envoy does, a reset counts when it comes within
    ``min_lifetime`` seconds of the stream's opening, and the guard trips
    once more than ``limit`` resets counted *and* they are more than half of
    the streams the connection opened: a long-lived connection with a few
    cancels never trips, a flood trips after ``limit`` streams.
    """

    #: Opening times kept at most; older entries cannot count as premature.
    _KEPT = 1024

    def __init__(self, limit: int, *, min_lifetime: float = 1.0, clock: Clock = time.monotonic):
        self.limit = limit
        self._min_lifetime = min_lifetime
        self._clock = clock
        self._opened: dict[int, float] = {}
        self.streams = 0
        self.premature = 0

    def opened(self, stream_id: int) -> None:
        self.streams += 1
        now = self._clock()
        if len(self._opened) >= self._KEPT:
            oldest = now - self._min_lifetime
            self._opened = {s: t for s, t in self._opened.items() if t > oldest}
        self._opened[stream_id] = now

    def reset(self, stream_id: int) -> None:
        """The client reset ``stream_id`` while it was open; raises Abuse past the limit."""
        opened = self._opened.pop(stream_id, None)
        if opened is None or self._clock() - opened >= self._min_lifetime:
            return
        self.premature += 1
        if self.premature > self.limit and 2 * self.premature > self.streams:
            raise Abuse(
                f"{self.premature} of {self.streams} streams reset within "
                f"{self._min_lifetime:g}s of opening (limit {self.limit})"
            )


class Stalls:
    """Since when each of some things (streams, a transport) has been stalled.

    :meth:`update` is told which are stalled now, at each check, and answers
    those stalled for ``limit`` seconds or more. Something that moved between
    two checks starts again from zero.
    """

    def __init__(self, limit: float, *, clock: Clock = time.monotonic) -> None:
        self.limit = limit
        self._clock = clock
        self._since: dict[int, float] = {}

    def update(self, stalled: list[int]) -> list[int]:
        now = self._clock()
        self._since = {key: self._since.get(key, now) for key in stalled}
        return [key for key, since in self._since.items() if now - since >= self.limit]


class Rate:
    """At most ``burst`` frames of a kind at once, and ``per_second`` on average (a token bucket).

    For frames that cost the server work and the client nothing: each PING
    and SETTINGS frame makes h2 write an acknowledgement. Conforming
    clients send a few (keepalive, BDP probes); a flood trips this.
    """

    def __init__(
        self, what: str, per_second: float, *, burst: float, clock: Clock = time.monotonic
    ) -> None:
        self._what = what
        self._per_second = per_second
        self._burst = burst
        self._clock = clock
        self._tokens = burst
        self._at = clock()

    def spend(self) -> None:
        """Count one frame; raises Abuse when the bucket is empty."""
        now = self._clock()
        self._tokens = min(self._burst, self._tokens + (now - self._at) * self._per_second)
        self._at = now
        if self._tokens < 1:
            raise Abuse(f"more than {self._per_second:g} {self._what} frames a second")
        self._tokens -= 1
