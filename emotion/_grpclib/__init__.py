"""Every use of grpclib, h2 and hyperframe internals, behind one boundary.

The rest of emotion imports the names in ``__all__`` and uses only the public
APIs of these libraries. Their versions are pinned (pyproject.toml), and
tests/test_grpclib_boundary.py checks each name below against the installed
versions, failing with the name of the one that moved.

Modules, one concern each:

- ``server``: GrpcServer, grpclib's Server with shutdown in steps
  (stop listening, drain, GOAWAY) and our protocol per connection.
- ``protocol``: ServerProtocol, grpclib's H2Protocol building our h2
  connection and retiring connections by age.
- ``connection``: H2ServerConnection, h2's connection with 1 MiB frames and
  DATA frames that format cheaply.
- ``messages``: receive_message, a request read with its size checked first.
- ``client``: told_to_go_away, whether a channel's connection got a GOAWAY.

Nothing here changes anything process-wide, at import or later: importing
emotion, serving, or calling leaves every grpclib, h2 and hyperframe
module and class as it was (a test checks it in a fresh interpreter).

Internals used (private names, and undocumented ones that are not private
by name but no API promises):

grpclib
    - ``Server._protocol_factory``: overridden; its body is repeated, and
      ``server.GRPCLIB_PROTOCOL_FACTORY`` pins grpclib's copy.
    - read in that body: ``Server.__gc_step__``, ``Server._mapping``,
      ``Server._codec``, ``Server._status_details_codec``,
      ``Server.__dispatch__``, ``Server._handlers``, ``Server._config``,
      ``Server._h2_config``, and ``grpclib.server.Handler``.
    - ``Server._server``: the asyncio server, closed to stop listening.
    - ``H2Protocol.connection_made``: its code is run with the module-level
      name ``grpclib.protocol.H2Connection`` bound to our h2 connection.
    - ``H2Protocol.connection``, ``grpclib.protocol.Connection._connection``
      (the h2 connection) and ``Connection._transport``.
    - ``grpclib.server.Stream._stream`` (its ``recv_data``, which raises
      AssertionError when a call ends short), ``Stream._codec``,
      ``Stream._dispatch``, ``Stream._messages_received``,
      ``Connection.messages_received``, ``Connection.last_message_received``.
    - ``grpclib.client.Channel._protocol``.

h2
    - ``H2Connection._receive_frame``: overridden, to give DATA frames a
      cheap repr before h2 formats them.
    - ``H2Connection._frame_dispatch_table``: keyed by exact frame class.
    - ``H2Connection.highest_inbound_stream_id``,
      ``H2Connection.state_machine`` and ``h2.connection.ConnectionState``.

hyperframe
    - ``Frame._body_repr``: overridden for DATA frames; its text must stay
      that of ``hyperframe.frame._raw_data_repr``, which is only read (by the
      tests), never replaced.
"""

from emotion._grpclib.client import told_to_go_away
from emotion._grpclib.connection import MAX_FRAME_SIZE
from emotion._grpclib.messages import (
    CompressedMessage,
    MalformedMessage,
    MessageTooLarge,
    receive_message,
)
from emotion._grpclib.server import GrpcServer

__all__ = [
    "MAX_FRAME_SIZE",
    "CompressedMessage",
    "GrpcServer",
    "MalformedMessage",
    "MessageTooLarge",
    "receive_message",
    "told_to_go_away",
]
