"""Every use of grpclib, h2, hyperframe and hpack internals, behind one boundary.

The rest of emotion imports from these modules and uses only the public APIs
of these libraries. This package imports nothing itself, so that a client
(which needs only ``client``, and the ``client_connection``, ``building``
and ``writes`` it imports) loads none of the server's h2 subclasses.
tests/transport/test_boundary.py (the server's) and test_boundary_client.py
check each name below against the installed versions, failing with the
name of the one that moved.

Modules, one concern each:

- ``server``: GrpcServer, grpclib's Server with shutdown in steps
  (stop listening, drain, GOAWAY) and our handler and protocol per connection.
- ``handler``: CallHandler, grpclib's Handler releasing a call's stream
  when its task ends, however it ends, and forgetting closed connections.
- ``protocol``: ServerProtocol, grpclib's H2Protocol building our h2
  connection, retiring connections by age, closing abusive ones with GOAWAY.
- ``connection``: H2ServerConnection, h2's connection with 1 MiB frames,
  DATA frames that format cheaply, and the guards fed each frame.
- ``guards``: the per-connection policies against HTTP/2 abuse (no internals).
- ``cap``: ConnectionCap, the connections open on a worker, and which one
  closes to make room for a new one at the cap (no internals).
- ``writes``: CoalescingTransport, a connection's writes sent once per loop pass.
- ``messages``: receive_message, a request read with its size checked first,
  in the time its size allows, within the worker's receive budget; and
  send_message, an answer counted as unread while it waits for window.
- ``client``: the client's side. ClientChannel, grpclib's Channel whose
  connections write once per loop pass; UnaryCall, a unary call's steps in
  one (what grpclib's Stream does, for less of the caller's CPU);
  turned_away, whether the server sent a failed call away (a GOAWAY, a
  refused stream) rather than failing under it; received_trailer, a
  trailer grpclib's metadata drops (``grpc-``); and channel_to and
  connect, a channel to one address of a name, dialled ahead.
- ``client_connection``: H2ClientConnection, h2's connection sending a
  message without h2's copies and reading frames unformatted; and
  AnswerFrameBuffer, an answer's frames built without hyperframe's parse.
- ``header_blocks``: HPACK as our connections use it (no internals but one
  below): RepeatingEncoder and RepeatingDecoder, giving again what they
  coded for a block of indexes; AnswerEncoder, the server's, writing
  literals raw and a value of one call out of the table.
- ``building``: grpclib's ``connection_made``, building our h2 connection
  (for the server's protocol and the client's).
- ``trailers``: add_trailer, a ``grpc-`` trailer grpclib's metadata refuses
  to send (gRFC A6's retry pushback).

Nothing here changes anything process-wide, at import or later: importing
emotion, serving, or calling leaves every grpclib, h2, hyperframe and hpack
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
      (the h2 connection) and ``Connection._transport`` (our CoalescingTransport).
    - ``grpclib.server.Stream._stream`` (its ``recv_data``, which raises
      AssertionError when a call ends short), ``Stream._codec``,
      ``Stream._dispatch``, ``Stream._messages_received``,
      ``Connection.messages_received``, ``Connection.last_message_received``.
    - ``grpclib.client.Stream._stream``: a client call's
      ``grpclib.protocol.Stream``, once its headers went out; its
      ``grpclib.protocol.Stream._h2_connection`` (the state of the call's own
      connection), ``grpclib.protocol.Stream._transport``, and the raw fields
      received, ``grpclib.protocol.Stream.headers`` and
      ``grpclib.protocol.Stream.trailers``.
    - ``Channel._authority``: set, with grpclib's own ``Channel._get_authority``,
      to the name a caller gave for a channel dialling one of its addresses;
      ``Channel.__connect__`` (what a call awaits first) opens a connection
      before a call needs it.
    - ``grpclib.protocol.Stream.send_headers``: replaced on one server call's
      stream, to add a trailer to those grpclib sends.
    - ``Handler.accept``: extended; it reads ``Handler._tasks`` (the task of
      each stream) and ``Handler._cancelled``, and ``Handler.closing``.
    - ``grpclib.protocol.Stream.wrapper`` (set by grpclib's request handler)
      and ``grpclib.utils.Wrapper._error``: the error that cancelled a call,
      dropped when its task ends (it holds the call's frames in a cycle).
    - ``H2Protocol.handler``, and ``Connection.flush`` (writes what h2
      queued, a GOAWAY included).
    - ``H2Protocol.processor`` and its ``EventsProcessor.streams`` (the calls
      open on a connection, for the idle timeout and the connection cap).
    - ending a call whose answer waits on a client that reads nothing, as
      grpclib ends one the client reset: ``Stream.window_updated`` (clear
      while an answer waits for window), ``Stream.__terminated__``,
      ``Handler.cancel``; and ``Connection.write_ready`` (clear while the
      socket's buffer is full).

grpclib, for the client (``client``)
    - ``Channel._protocol_factory``: overridden, to build our protocol
      with ``grpclib.client.Handler`` and the channel's ``Channel._config``
      and ``Channel._h2_config``.
    - a UnaryCall is a ``grpclib.client.Stream``, made as
      ``Channel.request`` makes one (``grpclib.client.Stream.__init__``,
      with ``Channel._codec``, ``Channel._status_details_codec`` and
      ``Channel.__dispatch__``), whose steps it runs itself: it connects
      (``Channel.__connect__``), opens the call's stream
      (``H2Protocol.processor``, ``EventsProcessor.connection``,
      ``Connection.create_stream`` with a ``grpclib.utils.Wrapper``,
      ``grpclib.protocol.Stream.send_request`` with its ``_processor``),
      sends headers made from ``Channel._scheme``, ``Channel._authority``,
      ``grpclib.metadata.USER_AGENT``, ``grpclib.metadata.encode_timeout``
      and ``grpclib.metadata.encode_metadata``, sends its message as DATA
      frames (``grpclib.protocol.Stream.id``, ``Connection.write_ready``,
      ``Stream.window_updated``, ``grpclib.protocol.Stream._h2_connection``,
      ``grpclib.protocol.Stream._transport``), reads the answer
      (``grpclib.protocol.Stream.recv_headers``,
      ``grpclib.stream.recv_message``,
      ``grpclib.protocol.Stream.recv_trailers``,
      ``grpclib.metadata.decode_metadata``) and ends the stream
      (``grpclib.protocol.Stream.closable``,
      ``grpclib.protocol.Stream.reset_nowait``).
    - it judges the answer with grpclib's own
      ``grpclib.client.Stream._raise_for_status``,
      ``grpclib.client.Stream._raise_for_content_type``,
      ``grpclib.client.Stream._process_grpc_status``,
      ``grpclib.client.Stream._raise_for_grpc_status`` and
      ``grpclib.client.Stream._maybe_raise``.
    - it keeps the state grpclib's steps keep, for what reads a call:
      ``grpclib.client.Stream._send_request_done``,
      ``grpclib.client.Stream._send_message_done``,
      ``grpclib.client.Stream._end_done``,
      ``grpclib.client.Stream._recv_initial_metadata_done``,
      ``grpclib.client.Stream._recv_trailing_metadata_done``,
      ``grpclib.client.Stream._trailers_only``,
      ``grpclib.client.Stream._messages_sent``,
      ``grpclib.client.Stream._messages_received``,
      ``grpclib.client.Stream.peer`` (``Connection.get_peer``),
      ``grpclib.client.Stream.trailing_metadata``; and the statistics:
      ``Connection.messages_sent``, ``Connection.data_sent``,
      ``grpclib.protocol.Stream.data_sent``, ``Connection.data_send_process``.

h2
    - ``H2Connection._receive_frame``: overridden, to give DATA frames a
      cheap repr before h2 formats them (the server), and every frame one
      that formats nothing when h2 has no logger (the client).
    - ``H2Connection._frame_dispatch_table``: keyed by exact frame class.
    - ``H2Connection._receive_headers_frame`` and
      ``H2Connection._receive_rst_stream_frame``: extended, to count streams
      opened and reset (the dispatch table holds them as bound methods, made
      after the subclass overrides them).
    - ``H2Connection.receive_data``: extended, to keep a ProtocolError (h2
      has queued its GOAWAY) instead of raising it to grpclib.
    - ``H2Connection.streams`` (the open h2 streams by id) and
      ``H2Stream.closed``.
    - ``H2Connection.incoming_buffer``: replaced by our h2 ``FrameBuffer``
      subclass, which extends ``FrameBuffer._update_header_buffer`` and reads
      ``FrameBuffer._headers_buffer`` (the frames of an unfinished header
      block).
    - refusing a stream over the limit, as h2 handles a stream it reset:
      ``h2.connection._decode_headers`` (keeps HPACK in step),
      ``H2Connection._closed_streams`` (marked ``StreamClosedBy``
      ``SEND_RST_STREAM``, from ``h2.stream.StreamClosedBy``), and the state
      machine fed ``h2.connection.ConnectionInputs``.
    - ``H2Connection.highest_inbound_stream_id``,
      ``H2Connection.state_machine`` and ``h2.connection.ConnectionState``.
    - the client's ``H2Connection._prepare_for_sending``: overridden, to
      keep a DATA frame's body out of ``H2Connection._data_to_send`` (h2's
      outgoing buffer), which it also empties in order.
    - ``H2Connection.encoder``: replaced by our RepeatingEncoder, an hpack
      ``Encoder`` extending ``encode`` and ``Encoder.header_table_size``
      (its setter, which h2 calls on the server's SETTINGS); on the server,
      by our AnswerEncoder, extending ``encode``.
    - the client's ``H2Connection.incoming_buffer``: replaced by our
      AnswerFrameBuffer, which overrides ``FrameBuffer.add_data`` and
      ``FrameBuffer.__next__``, hands the frames it does not build to an h2
      FrameBuffer of its own, reads that one's ``FrameBuffer._headers_buffer``
      (a header block left open), and checks a frame's size with
      ``FrameBuffer._validate_frame_length``.
    - ``H2Connection.decoder``: the client's replaced by our RepeatingDecoder,
      an hpack ``Decoder`` extending ``decode``, made with h2's
      ``Decoder.max_header_list_size``; a block read from kept fields runs
      hpack's check of the table's size, ``Decoder._assert_valid_table_size``.

hyperframe
    - an answer's DATA and HEADERS frames are built without their
      constructors, with every attribute they and ``Frame.parse_body`` set
      (a test compares all of them with hyperframe's own parse).
    - ``Frame._body_repr``: overridden for DATA frames; its text must stay
      that of ``hyperframe.frame._raw_data_repr``, which is only read (by the
      tests), never replaced.
"""
