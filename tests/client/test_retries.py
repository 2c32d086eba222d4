"""When a failed call is tried again: the policy, its backoff, the budget and the server's pushback.

Decisions only, with the random source and the clock given: the calls
themselves are in test_retrying.py.
"""

from __future__ import annotations

import pytest
from grpclib.const import Status
from grpclib.exceptions import GRPCError, StreamTerminatedError
from grpclib.metadata import Deadline

from emotion.client.retries import Failure, Retries, RetryBudget, Tries, classify
from emotion.config import RetryPolicy


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def retries(policy: RetryPolicy | None = None, random: float = 1.0) -> Retries:
    """Retries whose random draws are all ``random``: 1.0 waits the whole bound."""
    return Retries(policy or RetryPolicy(), random=lambda: random, clock=Clock())


def waits(tries: Tries, failure: Failure, count: int) -> list[float | None]:
    """The waits before up to ``count`` more tries, ending at the first give-up (None)."""
    found: list[float | None] = []
    while len(found) < count and None not in found:
        found.append(tries.next(failure))
    return found


def test_the_backoff_grows_by_the_multiplier_to_its_cap_and_is_drawn_below_the_bound() -> None:
    policy = RetryPolicy(initial_backoff=0.1, max_backoff=1.0, backoff_multiplier=2.0)

    assert [retries(policy).backoff(n) for n in range(1, 7)] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    assert [retries(policy, random=0.25).backoff(n) for n in (1, 2, 5)] == [0.025, 0.05, 0.25]


def test_a_retryable_failure_is_tried_again_up_to_max_attempts() -> None:
    tries = retries(RetryPolicy(max_attempts=4)).tries(None)

    assert waits(tries, Failure.RETRYABLE, 5) == [0.1, 0.2, 0.4, None]
    assert tries.attempts == 4


def test_a_final_failure_is_never_tried_again() -> None:
    tries = retries().tries(None)

    assert tries.next(Failure.FINAL) is None


def test_the_server_s_pushback_is_waited_exactly_and_starts_the_backoff_again() -> None:
    tries = retries().tries(None)

    assert tries.next(Failure.RETRYABLE) == 0.1
    assert tries.next(Failure.RETRYABLE) == 0.2
    assert tries.next(Failure.RETRYABLE, asked=0.75) == 0.75
    assert tries.next(Failure.RETRYABLE) == 0.1  # A6: after a pushback, the initial backoff


def test_a_negative_pushback_means_no_retry_and_counts_as_a_failure() -> None:
    client = retries()
    tries = client.tries(None)

    assert tries.next(Failure.RETRYABLE, asked=-1.0) is None
    assert client.budget.tokens == RetryPolicy().max_tokens - 1


def test_no_wait_reaches_past_the_deadline() -> None:
    tries = retries(RetryPolicy(initial_backoff=1.0, max_backoff=1.0)).tries(
        Deadline.from_timeout(0.5)
    )

    assert tries.next(Failure.RETRYABLE) is None  # a 1 s wait would end past a 0.5 s deadline
    assert tries.next(Failure.RETRYABLE, asked=0.2) == 0.2


def test_a_call_sent_away_unseen_goes_again_at_once_once_per_try_and_uncounted() -> None:
    tries = retries(RetryPolicy(max_attempts=2)).tries(None)

    assert tries.next(Failure.TURNED_AWAY) == 0.0
    assert tries.attempts == 1
    assert tries.next(Failure.TURNED_AWAY) == 0.1  # twice in a row: a try like any other
    assert tries.next(Failure.TURNED_AWAY) == 0.0  # the new try may be sent away once
    assert tries.next(Failure.TURNED_AWAY) is None  # and the tries are spent


def test_a_refused_connection_counts_as_a_try_until_the_server_was_once_reached() -> None:
    client = retries(RetryPolicy(max_attempts=2))

    assert waits(client.tries(None), Failure.UNREACHABLE, 2) == [0.1, None]


def test_a_server_reached_before_is_waited_for_uncounted_for_wait_for_server() -> None:
    client = retries(RetryPolicy(max_attempts=2, wait_for_server=2.0))
    clock = client.clock
    assert isinstance(clock, Clock)
    client.succeeded()
    tries = client.tries(None)

    delays = []
    while (delay := tries.next(Failure.UNREACHABLE)) is not None:
        delays.append(delay)
        clock.now += delay

    assert delays == [0.0, 0.1, 0.2, 0.4, 0.8]  # the next, 1.0 s, would end 2.5 s after the first
    assert tries.attempts == 1
    assert client.budget.tokens == client.budget.max_tokens


def test_a_server_waited_for_gets_one_last_try_just_before_the_deadline() -> None:
    client = retries(RetryPolicy(initial_backoff=1.0, max_backoff=1.0))
    client.succeeded()
    tries = client.tries(Deadline.from_timeout(0.5))

    assert tries.next(Failure.UNREACHABLE) == 0.0
    last = tries.next(Failure.UNREACHABLE)  # a 1 s wait would end past the deadline

    assert last is not None
    assert 0.35 < last < 0.46
    tight = client.tries(Deadline.from_timeout(0.08))
    assert tight.next(Failure.UNREACHABLE) == 0.0
    assert tight.next(Failure.UNREACHABLE) is None  # no time for a try after any wait


def test_wait_for_server_0_counts_refused_connections_as_tries() -> None:
    client = retries(RetryPolicy(max_attempts=2, wait_for_server=0))
    client.succeeded()

    assert waits(client.tries(None), Failure.UNREACHABLE, 2) == [0.1, None]


def test_an_answer_on_a_stream_forgives_its_failures_so_far() -> None:
    tries = retries(RetryPolicy(max_attempts=2)).tries(None)

    assert tries.next(Failure.RETRYABLE) == 0.1
    tries.progressed()

    assert tries.next(Failure.RETRYABLE) == 0.1


def test_the_budget_allows_retries_while_over_half_full_and_refills_by_the_ratio() -> None:
    budget = RetryBudget(max_tokens=4, token_ratio=0.5)

    assert [budget.failed() for _ in range(3)] == [True, False, False]
    assert budget.tokens == 1
    for _ in range(10):
        budget.succeeded()
    assert budget.tokens == 4  # never above max_tokens
    assert [budget.failed() for _ in range(2)] == [True, False]


def test_after_an_outage_a_client_s_calls_are_tried_once_each() -> None:
    client = retries(RetryPolicy(max_tokens=6, token_ratio=1.0))

    first = waits(client.tries(None), Failure.RETRYABLE, 5)
    second = waits(client.tries(None), Failure.RETRYABLE, 5)
    for _ in range(3):
        client.succeeded()
    after = waits(client.tries(None), Failure.RETRYABLE, 1)

    assert first == [0.1, 0.2, None]  # 6 tokens, 3 the threshold: the third failure is final
    assert second == [None]
    assert after == [0.1]  # successes brought it back over half


@pytest.mark.parametrize(
    ("exc", "failure"),
    [
        (GRPCError(Status.UNAVAILABLE, "draining"), Failure.RETRYABLE),
        (GRPCError(Status.RESOURCE_EXHAUSTED, "busy"), Failure.RETRYABLE),
        (GRPCError(Status.INVALID_ARGUMENT, "not an image"), Failure.FINAL),
        (GRPCError(Status.DEADLINE_EXCEEDED, "late"), Failure.FINAL),
        (StreamTerminatedError("Connection lost"), Failure.RETRYABLE),
        (ConnectionRefusedError(111, "refused"), Failure.UNREACHABLE),
        (TimeoutError("Deadline exceeded"), Failure.FINAL),
        (ValueError("image too large"), Failure.FINAL),
    ],
)
def test_each_failure_is_classified(exc: Exception, failure: Failure) -> None:
    assert classify(exc, None, RetryPolicy()) is failure


def test_a_policy_names_the_statuses_it_retries() -> None:
    policy = RetryPolicy(retryable=frozenset({Status.UNAVAILABLE}))

    assert classify(GRPCError(Status.RESOURCE_EXHAUSTED), None, policy) is Failure.FINAL
