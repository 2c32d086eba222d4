"""One table turns every failure into the status a client gets."""

from __future__ import annotations

import pytest
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from emotion.codec import InvalidMessage
from emotion.decode import InvalidImage
from emotion.inference.process_connection import ProcessExited
from emotion.inference.threads import Aborted, DeadlinePassed, QueueFull
from emotion.model import InvalidOptions, ModelFailure
from emotion.security import Unauthenticated
from emotion.serving.admission import Busy, NotServing
from emotion.serving.statuses import PUSHBACK_RANGE, STATUSES, pushback_ms, to_grpc_error
from emotion.transport.messages import (
    CompressedMessage,
    MalformedMessage,
    MessageTooLarge,
    ReceivingFull,
    SlowMessage,
)

#: One failure of each kind in the table, the status and the exact message a client gets.
ROWS: list[tuple[Exception, Status, str]] = [
    (Unauthenticated("no token"), Status.UNAUTHENTICATED, "no token"),
    (NotServing("loading"), Status.UNAVAILABLE, "loading"),
    (Busy("busy"), Status.RESOURCE_EXHAUSTED, "busy"),
    (
        MessageTooLarge(10, 5),
        Status.RESOURCE_EXHAUSTED,
        "request message is 10 bytes; this server accepts at most 5",
    ),
    (ReceivingFull("receiving is full"), Status.RESOURCE_EXHAUSTED, "receiving is full"),
    (SlowMessage("too slow"), Status.DEADLINE_EXCEEDED, "too slow"),
    (CompressedMessage("compressed"), Status.UNIMPLEMENTED, "compressed"),
    (
        MalformedMessage("cut short"),
        Status.INVALID_ARGUMENT,
        "request is not a valid emotion.v1.Request: cut short",
    ),
    (
        InvalidMessage("emotion.v1.Request", "broken"),
        Status.INVALID_ARGUMENT,
        "request is not a valid emotion.v1.Request: broken",
    ),
    (InvalidImage("not an image"), Status.INVALID_ARGUMENT, "not an image"),
    (InvalidOptions("no such confidence"), Status.INVALID_ARGUMENT, "no such confidence"),
    (
        QueueFull(3),
        Status.RESOURCE_EXHAUSTED,
        "server is busy: 3 images are waiting for the model; retry with backoff",
    ),
    (
        DeadlinePassed(),
        Status.DEADLINE_EXCEEDED,
        "the deadline passed while the call waited for the model",
    ),
    (Aborted(), Status.UNAVAILABLE, "server shut down before the call finished; retry"),
    (
        ProcessExited(),
        Status.UNAVAILABLE,
        "the inference process running this call exited; retry",
    ),
    (ModelFailure("model M failed: KeyError"), Status.INTERNAL, "model M failed: KeyError"),
]


@pytest.mark.parametrize(("failure", "status", "message"), ROWS)
def test_each_failure_has_its_status_and_a_message_for_the_client(
    failure: Exception, status: Status, message: str
) -> None:
    error = to_grpc_error(failure)

    assert error is not None
    assert (error.status, error.message) == (status, message)


def test_every_row_of_the_table_is_tested_once_in_its_order() -> None:
    assert [type(failure) for failure, _, _ in ROWS] == [kind for kind, _, _ in STATUSES]


def test_the_table_has_one_row_per_failure_and_no_row_hides_another() -> None:
    kinds = [kind for kind, _, _ in STATUSES]

    assert len(set(kinds)) == len(kinds)
    for earlier, kind in enumerate(kinds):
        assert not any(issubclass(kind, before) for before in kinds[:earlier]), kind


def test_an_unforeseen_error_has_no_status_here_and_a_grpc_error_keeps_its_own() -> None:
    own = GRPCError(Status.NOT_FOUND, "gone")

    assert to_grpc_error(KeyError("bug")) is None
    assert to_grpc_error(own) is own


@pytest.mark.parametrize("full", [Busy("busy"), QueueFull(3), ReceivingFull("arriving")])
def test_a_full_server_asks_to_come_back_once_its_queue_turned_over(full: Exception) -> None:
    low, high = PUSHBACK_RANGE

    assert pushback_ms(full, turnover=0.2, spread=0.5) == "200"
    assert [pushback_ms(full, 0.2, spread) for spread in (0.0, 1.0)] == ["100", "300"]
    assert pushback_ms(full, turnover=60, spread=0.5) == str(high)
    assert pushback_ms(full, turnover=0, spread=0.5) == str(low)


def test_a_message_too_large_asks_for_no_retry_and_other_refusals_ask_nothing() -> None:
    assert pushback_ms(MessageTooLarge(10, 5), 0.2, 0.5) == "-1"
    assert pushback_ms(NotServing("loading"), 0.2, 0.5) is None
