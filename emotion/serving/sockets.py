"""Sockets and addresses, as the server and the worker supervisor both need them."""

from __future__ import annotations

import socket


def format_address(host: str, port: int) -> str:
    """``host:port``, with IPv6 addresses in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def bound_socket(host: str, port: int, *, reuse_port: bool = False) -> socket.socket:
    """A TCP socket bound to ``host:port``, not yet listening; ``::`` takes IPv4 clients too.

    Made with an explicit IPPROTO_TCP: asyncio and grpclib switch Nagle's
    algorithm off only on sockets that say so, and with Nagle on, every
    answer waits ~40 ms for the client's delayed ACK. ``reuse_port`` lets
    other processes bind the same port (SO_REUSEPORT): the kernel spreads new
    connections across them.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6 and host == "::":
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


def free_port(host: str, port: int) -> int:
    """``port`` if no server holds it (any free one for 0); OSError if one does.

    A bind without SO_REUSEPORT fails even where another server shares the
    port with SO_REUSEPORT, which a bind with SO_REUSEPORT would join instead.
    With SO_REUSEADDR, so that the connections of a server that just stopped
    (TIME_WAIT, FIN_WAIT2: a minute after it closed them) do not count; a
    listening socket still does, and so does a :func:`reserved_socket`.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6 and host == "::":
            probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        probe.bind((host, port))
        return int(probe.getsockname()[1])


def reserved_socket(host: str, port: int) -> socket.socket:
    """``port`` (a free one for 0) bound for servers that will share it, not listening.

    Bound with SO_REUSEPORT, for them to join, and without SO_REUSEADDR:
    a socket bound with it and not listening does not stop another
    :func:`free_port` (that of a second supervisor started on the same port,
    before this one's servers listen). OSError if a server holds the port.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6 and host == "::":
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind((host, free_port(host, port)))
    except OSError:
        sock.close()
        raise
    return sock
