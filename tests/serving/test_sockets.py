"""Sockets as the server and the supervisor bind them, and addresses as logs show them."""

from __future__ import annotations

import socket

import pytest

from emotion.serving.sockets import bound_socket, format_address, free_port, reserved_socket


@pytest.mark.parametrize(
    ("host", "shown"),
    [("127.0.0.1", "127.0.0.1:50051"), ("::1", "[::1]:50051"), ("::", "[::]:50051")],
)
def test_ipv6_addresses_are_bracketed(host: str, shown: str) -> None:
    assert format_address(host, 50051) == shown


def test_a_bound_socket_has_nagle_off_once_listening_and_accepts_connections() -> None:
    with bound_socket("127.0.0.1", 0) as server:
        server.listen(8)
        port = server.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            accepted, _ = server.accept()
        with accepted:
            # asyncio sets TCP_NODELAY only on sockets made with IPPROTO_TCP.
            assert server.proto == socket.IPPROTO_TCP


def test_processes_share_a_port_only_when_each_asks_to() -> None:
    with bound_socket("127.0.0.1", 0, reuse_port=True) as first:
        first.listen(8)
        port = first.getsockname()[1]
        with bound_socket("127.0.0.1", port, reuse_port=True) as second:
            second.listen(8)
        with pytest.raises(OSError, match="Address already in use"):
            bound_socket("127.0.0.1", port)


def test_free_port_refuses_a_port_that_sharing_servers_hold() -> None:
    with bound_socket("127.0.0.1", 0, reuse_port=True) as held:
        port = held.getsockname()[1]
        held.listen(8)

        with pytest.raises(OSError, match="Address already in use"):
            free_port("127.0.0.1", port)
    assert free_port("127.0.0.1", 0) > 0


@pytest.mark.parametrize("client_closes", [True, False], ids=["time-wait", "fin-wait-2"])
def test_a_port_is_free_as_soon_as_the_server_that_held_it_stops(client_closes: bool) -> None:
    with bound_socket("127.0.0.1", 0, reuse_port=True) as listener:
        listener.listen(8)
        port = listener.getsockname()[1]
        client = socket.create_connection(("127.0.0.1", port), timeout=5)
        accepted, _ = listener.accept()
    # The server closes first, as at its drain: its side lingers (TIME_WAIT
    # once the client closes too, FIN_WAIT2 while it does not) for a minute.
    accepted.close()
    with client:
        if client_closes:
            assert client.recv(1) == b""
            client.close()

        assert free_port("127.0.0.1", port) == port
        with reserved_socket("127.0.0.1", port) as reservation:
            assert reservation.getsockname()[1] == port
            with bound_socket("127.0.0.1", port, reuse_port=True) as worker:
                worker.listen(8)


def test_a_reserved_port_is_refused_to_another_server_before_its_workers_listen() -> None:
    with reserved_socket("127.0.0.1", 0) as reservation:
        port = reservation.getsockname()[1]

        with pytest.raises(OSError, match="Address already in use"):
            free_port("127.0.0.1", port)
        with pytest.raises(OSError, match="Address already in use"):
            reserved_socket("127.0.0.1", port)


@pytest.mark.skipif(not socket.has_dualstack_ipv6(), reason="no IPv6 on this machine")
def test_all_interfaces_on_ipv6_take_ipv4_clients_too() -> None:
    with bound_socket("::", 0) as server:
        server.listen(8)
        port = server.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass
