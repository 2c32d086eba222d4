"""Admission as the service uses it: credentials, then the server's state, at a call's headers
(``check``); room for the call once its message came (``hold``)."""

from __future__ import annotations

import pytest

from emotion.security import BearerTokens, Unauthenticated
from emotion.serving.admission import Admission, Busy, NotServing, State


def serving(capacity: int = 2, tokens: BearerTokens | None = None) -> Admission:
    admission = Admission(capacity=capacity, tokens=tokens)
    admission.start_serving()
    return admission


def test_calls_wait_for_the_model_and_are_refused_while_draining() -> None:
    admission = Admission(capacity=1)

    assert admission.state is State.LOADING
    with pytest.raises(NotServing, match="model is still loading"):
        admission.check(None)
    admission.start_serving()
    admission.check(None)
    with admission.hold():
        admission.start_draining()
        # A call admitted before the drain goes on; new ones are refused.
        assert admission.admitted == 1
        with pytest.raises(NotServing, match="server is shutting down"):
            admission.check(None)
    assert admission.admitted == 0


def test_a_call_past_the_capacity_is_refused_and_a_finished_one_frees_its_place() -> None:
    admission = serving(capacity=2)

    with (
        admission.hold(),
        admission.hold(),
        pytest.raises(Busy, match="server is busy: 2 calls are in progress"),
        admission.hold(),
    ):
        pass
    with admission.hold():
        assert admission.admitted == 1


def test_a_failed_call_frees_its_place_too() -> None:
    admission = serving(capacity=1)

    with pytest.raises(RuntimeError), admission.hold():
        raise RuntimeError

    assert admission.admitted == 0


def test_credentials_are_checked_before_anything_else() -> None:
    admission = Admission(capacity=1, tokens=BearerTokens(["s3cret"]))

    # Loading, but the caller without a token learns only that.
    with pytest.raises(Unauthenticated):
        admission.check(None)
    with pytest.raises(NotServing):
        admission.check("Bearer s3cret")
    admission.start_serving()
    with admission.hold(), pytest.raises(Unauthenticated):
        admission.check("Bearer other")


@pytest.mark.parametrize(
    ("header", "accepted"),
    [
        ("Bearer s3cret", True),
        ("bearer s3cret", True),
        ("BEARER  s3cret ", True),
        ("Bearer other", False),
        ("Basic s3cret", False),
        ("s3cret", False),
        ("Bearer ", False),
        (None, False),
    ],
)
def test_bearer_tokens_accept_only_their_own_tokens(header: str | None, accepted: bool) -> None:
    tokens = BearerTokens(["s3cret", "another"])

    if accepted:
        tokens.check(header)
    else:
        with pytest.raises(Unauthenticated):
            tokens.check(header)
