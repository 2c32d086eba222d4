"""When emotion.Client tries a failed call again: gRPC's client retries (gRFC A6).

Every Pipeline call is safe to repeat (inference changes nothing), so any
failure a new try can mend is retried, within the call's one deadline:

- a call the server sent away unseen (a GOAWAY, a refused stream) at once,
  once per try, without counting it as a try or a failure;
- a refused connection while another address of the target serves, at
  once, on that address, uncounted;
- a refused connection to a server this client reached before (a restart)
  at once and then with backoff, for up to ``wait_for_server`` seconds,
  likewise uncounted, the last wait cut short for one more try before the
  deadline; to a server never reached, as a failed try, so that a
  wrong address fails within a second or two;
- a retryable status (UNAVAILABLE, RESOURCE_EXHAUSTED) or a connection lost
  under the call (a server that died) as a failed try: up to
  ``max_attempts`` tries, after the server's pushback or a random backoff,
  while the client's retry budget lasts.
"""

from __future__ import annotations

import enum
import random
import ssl
import time
from collections.abc import Callable
from typing import Any

from grpclib.client import Stream
from grpclib.exceptions import GRPCError, StreamTerminatedError
from grpclib.metadata import Deadline

from emotion.config.client import RetryPolicy
from emotion.errors import PUSHBACK
from emotion.transport.client import received_trailer, turned_away

#: Time left for a try on a connection just made: a last try starts no later.
_ONE_TRY = 0.05


class RetryBudget:
    """A6's retry throttling: retries stop while failures outweigh successes.

    ``tokens`` start at ``max_tokens``; a failed try takes one, a successful
    call gives back ``token_ratio``. At half or below, failed calls are not
    retried until successes bring the count back over half: in a steady state
    retries stay under about ``token_ratio`` of the calls, and after an outage
    the client sends each call once instead of a storm of retries.
    """

    def __init__(self, max_tokens: float, token_ratio: float) -> None:
        self.max_tokens = max_tokens
        self.token_ratio = token_ratio
        self.tokens = max_tokens
        self._threshold = max_tokens / 2

    def succeeded(self) -> None:
        if self.tokens < self.max_tokens:
            self.tokens = min(self.max_tokens, self.tokens + self.token_ratio)

    def failed(self) -> bool:
        """Count a failed try; whether the budget still allows a retry."""
        self.tokens = max(0.0, self.tokens - 1)
        return self.tokens > self._threshold


class Failure(enum.Enum):
    """What a failed try says about the next one."""

    #: Nothing a retry can mend, or not a failure of the server's (a deadline).
    FINAL = "final"
    #: The server sent the call away unseen: try again at once.
    TURNED_AWAY = "turned away"
    #: No connection could be made.
    UNREACHABLE = "unreachable"
    #: The server failed the call in a way a later try may not meet.
    RETRYABLE = "retryable"


def classify(exc: BaseException, call: Stream[Any, Any] | None, policy: RetryPolicy) -> Failure:
    """What ``exc``, raised by a try of ``call``, says about trying again."""
    if isinstance(exc, GRPCError):
        return Failure.RETRYABLE if exc.status in policy.retryable else Failure.FINAL
    if isinstance(exc, StreamTerminatedError):
        if call is not None and turned_away(call):
            return Failure.TURNED_AWAY
        return Failure.RETRYABLE  # the connection was lost under the call
    # TimeoutError is the deadline (and an OSError); an SSLError will not mend.
    if isinstance(exc, OSError) and not isinstance(exc, (TimeoutError, ssl.SSLError)):
        return Failure.UNREACHABLE
    return Failure.FINAL


def pushback(call: Stream[Any, Any] | None) -> float | None:
    """The seconds the server asked to wait before a retry; -1 for never; None if it did not say."""
    text = None if call is None else received_trailer(call, PUSHBACK)
    if text is None:
        return None
    try:
        milliseconds = int(text)
    except ValueError:
        return -1.0  # A6: unreadable means do not retry
    return -1.0 if milliseconds < 0 else milliseconds / 1000


class Retries:
    """A client's retry policy and budget, and what it knows of its server."""

    def __init__(
        self,
        policy: RetryPolicy,
        *,
        random: Callable[[], float] = random.random,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.policy = policy
        self.budget = RetryBudget(policy.max_tokens, policy.token_ratio)
        self.random = random
        self.clock = clock
        #: Whether a call ever reached the server: a refused connection is then a restart.
        self.reached = False
        #: Set when the client closes: a call cut by the close is not tried again,
        #: which would open the closed channel anew.
        self.closed = False

    def succeeded(self) -> None:
        self.reached = True
        self.budget.succeeded()

    def backoff(self, retry: int) -> float:
        """A6's wait before the ``retry``-th retry (from 1): random, up to a bound that grows."""
        policy = self.policy
        bound = policy.initial_backoff * policy.backoff_multiplier ** (retry - 1)
        return self.random() * min(bound, policy.max_backoff)

    def tries(self, deadline: Deadline | None) -> Tries:
        return Tries(self, deadline)


class Tries:
    """One call's failed tries so far, and whether and when the next may start."""

    def __init__(self, retries: Retries, deadline: Deadline | None) -> None:
        self._retries = retries
        self._deadline = deadline
        self.attempts = 1
        self._backoffs = 0  # retries since the last pushback: A6 starts the backoff again after one
        self._turned_away = False
        self._waiting_since: float | None = None
        self._reconnects = 0

    def progressed(self) -> None:
        """The call got somewhere (a stream's answer): its failures so far are forgiven."""
        self.attempts = 1
        self._backoffs = 0
        self._turned_away = False
        self._waiting_since = None
        self._reconnects = 0
        self._retries.succeeded()

    def after(
        self, exc: BaseException, call: Stream[Any, Any] | None, *, elsewhere: bool = False
    ) -> float | None:
        """Seconds to wait before the next try after ``exc``; None to give up and raise it.

        ``elsewhere``: another address of the target may take the call now.
        """
        if self._retries.closed:
            return None
        if isinstance(exc, (GRPCError, StreamTerminatedError)):
            self._retries.reached = True
        return self.next(classify(exc, call, self._retries.policy), pushback(call), elsewhere)

    def next(
        self, failure: Failure, asked: float | None = None, elsewhere: bool = False
    ) -> float | None:
        """Seconds to wait after a try that failed as ``failure``; None to give up.

        ``asked`` is the server's pushback in seconds (negative: do not retry).
        """
        if failure is Failure.FINAL:
            return None
        if failure is Failure.TURNED_AWAY and not self._turned_away:
            self._turned_away = True
            return self._within_deadline(0.0)
        retries = self._retries
        if failure is Failure.UNREACHABLE and elsewhere:
            return self._within_deadline(0.0)  # the balancer left that address out
        if failure is Failure.UNREACHABLE and retries.reached and retries.policy.wait_for_server:
            return self._reconnect()
        return self._retry(asked)

    def _reconnect(self) -> float | None:
        """At once, then with backoff, while the server has been gone under ``wait_for_server``."""
        retries = self._retries
        now = retries.clock()
        if self._waiting_since is None:
            self._waiting_since = now
        delay = retries.backoff(self._reconnects) if self._reconnects else 0.0
        self._reconnects += 1
        if now + delay - self._waiting_since > retries.policy.wait_for_server:
            return None
        return self._last_chance(delay)

    def _last_chance(self, delay: float) -> float | None:
        """``delay``, or less, so that one more try starts before the deadline if one fits.

        A server coming back is as likely in the deadline's last second as in
        any other: rather than give up because the next wait would end past it,
        try once more just before it.
        """
        if self._deadline is None:
            return delay
        remaining = self._deadline.time_remaining()
        if delay < remaining - _ONE_TRY:
            return delay
        if remaining > 2 * _ONE_TRY:
            return remaining - _ONE_TRY
        return None

    def _retry(self, asked: float | None) -> float | None:
        retries = self._retries
        allowed = retries.budget.failed()
        if (asked is not None and asked < 0) or not allowed:
            return None
        if self.attempts >= retries.policy.max_attempts:
            return None
        self.attempts += 1
        self._turned_away = False
        if asked is not None:
            self._backoffs = 0
            return self._within_deadline(asked)
        self._backoffs += 1
        return self._within_deadline(retries.backoff(self._backoffs))

    def _within_deadline(self, delay: float) -> float | None:
        # A try that could only start after the deadline is no try: fail now.
        if self._deadline is not None and delay >= self._deadline.time_remaining():
            return None
        return delay
