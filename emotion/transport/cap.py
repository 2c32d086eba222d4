"""The connection cap: at the cap a new connection is served, and the least useful one makes room.

Refusing the new connection instead would let anyone who opens connections
and says nothing lock every new client out. The connection closed is the
oldest one that has not finished its HTTP/2 handshake (preface and
SETTINGS), or else the one idle longest; one with a call in flight never
is. When every connection has one, the new one is refused.

Nothing here touches grpclib or h2: each connection answers for itself
(:class:`Member`, the protocol).
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable
from typing import Protocol

log = logging.getLogger(__name__)

#: What happened at the cap, as metrics label it: a connection closed
#: before its handshake ended, one closed with no call open, or the new one refused.
HANDSHAKE = "handshake"
IDLE = "idle"
REFUSED = "refused"

#: A burst is logged once nothing happened at the cap for this long, or after _BURST_MAX.
_QUIET = 1.0
_BURST_MAX = 10.0


class Member(Protocol):
    """One open connection, as the cap sees it."""

    @property
    def closing(self) -> bool:
        """Closed, or closing already (it makes room by itself)."""

    def standing(self) -> tuple[bool, float] | None:
        """None with a call in flight; else whether it is handshaken, and since when idle."""

    def evict(self) -> None:
        """Close to make room: at once before the handshake, else GOAWAY first."""


class ConnectionCap:
    """The connections open on one worker, at most ``limit`` that are not closing."""

    def __init__(self, limit: int, *, on_event: Callable[[str], None] | None = None) -> None:
        self.limit = limit
        self._on_event = on_event
        # Oldest first (dicts keep insertion order): the first connection
        # found before its handshake is the oldest such.
        self._open: dict[Member, None] = {}
        #: What happened at the cap since the start, by HANDSHAKE, IDLE, REFUSED.
        self.events: Counter[str] = Counter()
        self._burst: Counter[str] = Counter()
        self._burst_started = 0.0
        self._last_event = 0.0

    def __len__(self) -> int:
        return len(self._open)

    def admit(self, member: Member) -> bool:
        """Count ``member`` open; at the cap, first make room. False: refuse it."""
        admitted = len(self._open) < self.limit or self._make_room()
        self._open[member] = None
        if not admitted:
            self._record(REFUSED)
        return admitted

    def lost(self, member: Member) -> None:
        self._open.pop(member, None)

    def _make_room(self) -> bool:
        """Close the least useful connection; False when every one has a call in flight.

        O(connections), and only at the cap: it stops at the first
        connection found before its handshake.
        """
        closing = 0
        victim: Member | None = None
        best: tuple[bool, float] | None = None
        for member in self._open:
            if member.closing:
                closing += 1
                continue
            standing = member.standing()
            if standing is None:
                continue
            if not standing[0]:
                member.evict()
                self._record(HANDSHAKE)
                return True
            if best is None or standing < best:
                victim, best = member, standing
        if len(self._open) - closing < self.limit:
            return True  # those closing make the room
        if victim is None:
            return False
        victim.evict()
        self._record(IDLE)
        return True

    def _record(self, event: str) -> None:
        self.events[event] += 1
        if self._on_event is not None:
            self._on_event(event)
        loop = asyncio.get_running_loop()
        self._last_event = loop.time()
        if not self._burst:
            self._burst_started = self._last_event
            loop.call_later(_QUIET, self._burst_over)
        self._burst[event] += 1

    def _burst_over(self) -> None:
        """Log the burst in one line once it is over (or has lasted _BURST_MAX)."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        quiet_for, lasted = now - self._last_event, now - self._burst_started
        if quiet_for < _QUIET and lasted < _BURST_MAX:
            loop.call_later(min(_QUIET - quiet_for, _BURST_MAX - lasted), self._burst_over)
            return
        done = {
            HANDSHAKE: "closed {} connections before their HTTP/2 handshake ended",
            IDLE: "closed {} idle connections with GOAWAY",
            REFUSED: "refused {} new connections (every open one had a call in flight)",
        }
        shown = [
            text.format(self._burst[event]) for event, text in done.items() if self._burst[event]
        ]
        took = self._last_event - self._burst_started
        log.warning("at --max-connections %d, over %.1fs: %s", self.limit, took, "; ".join(shown))
        self._burst = Counter()
