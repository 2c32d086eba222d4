"""What grpclib's client channel knows but does not say."""

from __future__ import annotations

from grpclib.client import Channel
from h2.connection import ConnectionState


def told_to_go_away(channel: Channel) -> bool:
    """Whether the channel's connection was closed by the server's GOAWAY.

    grpclib keeps no flag for it; its h2 connection is closed by a GOAWAY.
    False when the channel has no connection.
    """
    protocol = getattr(channel, "_protocol", None)
    h2 = getattr(getattr(protocol, "connection", None), "_connection", None)
    return h2 is not None and h2.state_machine.state is ConnectionState.CLOSED
