"""What a supervisor tells a worker's server lives apart from the user's settings."""

from __future__ import annotations

from dataclasses import fields

import pytest
from support.sample_models import PidModel

from emotion import Server, ServerConfig
from emotion.serving.wiring import Wiring


def test_the_users_settings_hold_nothing_of_the_supervisors_wiring() -> None:
    assert {f.name for f in fields(ServerConfig)}.isdisjoint(f.name for f in fields(Wiring))


def test_inference_sockets_must_be_paths() -> None:
    with pytest.raises(ValueError, match=r"Wiring\.inference_sockets must be paths"):
        Wiring(inference_sockets=("/run/0.sock", ""))


def test_a_server_refuses_batches_it_would_send_to_inference_processes() -> None:
    wiring = Wiring(inference_sockets=("/run/0.sock",))

    with pytest.raises(ValueError, match="cannot be combined with max_batch_size > 1"):
        Server(PidModel(), ServerConfig(max_batch_size=4), wiring=wiring)
