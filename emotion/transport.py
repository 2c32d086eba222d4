"""Connection settings that are not grpclib's: how long a client connection may live.

The transport itself (grpclib's server, h2's connection, the reading of
messages) is in :mod:`emotion._grpclib`.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ConnectionAge:
    """Retire connections after ``limit`` seconds (±10%), so clients spread over new servers.

    HTTP/2 keeps a client on one connection, so behind a plain load balancer
    it stays on one server however many are added. An aged connection is
    closed as soon as it has no call in flight, and at most ``grace`` seconds
    later regardless.
    """

    limit: float
    grace: float = 30.0
