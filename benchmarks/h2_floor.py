"""h2's own CPU per call on a client's side: one call's frames replayed through h2, in one process.

    python benchmarks/h2_floor.py                   # small JPEG, 5 rounds
    python benchmarks/h2_floor.py --images medium --calls 1000

What no client built on h2 can spend less on: a client's h2 connection
sends a call's headers and its Request (the bytes to hand to the socket
included), and reads the answer's headers, message and trailers as
``emotion serve`` sends them (a new ``x-request-id`` on every call), with
a server's h2 connection answering in memory. No socket, no event loop, no
grpclib: the time is h2's (and HPACK's) alone, for h2's own connection and
for emotion's (``H2ClientConnection``), each round one after the other;
the report gives the median of the rounds and their range.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import images
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.settings import SettingCodes

from emotion.codec import ProtobufCodec
from emotion.contract import BBox, Expression, Request, Response, Result
from emotion.transport.client_connection import H2ClientConnection

#: grpclib's client configuration for h2.
CLIENT = H2Configuration(
    client_side=True,
    header_encoding="ascii",
    validate_outbound_headers=False,
    validate_inbound_headers=False,
    normalize_inbound_headers=False,
    normalize_outbound_headers=False,
)


def replay(client: H2Connection, message: bytes, answer: bytes, calls: int) -> tuple[float, float]:
    """Microseconds of CPU per call: the client sending, and the client reading the answer."""
    server = H2Connection(H2Configuration(client_side=False, header_encoding="ascii"))
    server.initiate_connection()
    server.update_settings(
        {SettingCodes.MAX_FRAME_SIZE: 2**20, SettingCodes.INITIAL_WINDOW_SIZE: 2**24}
    )
    server.increment_flow_control_window(2**30)
    client.initiate_connection()
    server.receive_data(client.data_to_send())
    client.receive_data(server.data_to_send())
    server.receive_data(client.data_to_send())
    headers = [  # what emotion.Client sends, without a deadline
        (b":method", b"POST"),
        (b":scheme", b"http"),
        (b":path", b"/emotion.v1.Pipeline/RunPipeline"),
        (b":authority", b"127.0.0.1:50051"),
        (b"te", b"trailers"),
        (b"content-type", b"application/grpc"),
        (b"user-agent", b"grpc-python-grpclib/0.4.9 (linux; cpython/3.11.7)"),
    ]
    sending = reading = 0.0
    for _ in range(calls):
        started = time.process_time()
        stream_id = client.get_next_available_stream_id()
        client.send_headers(stream_id, list(headers))
        client.send_data(stream_id, message, end_stream=True)
        sent = client.data_to_send()
        sending += time.process_time() - started

        server.receive_data(sent)
        server.acknowledge_received_data(len(message), stream_id)
        server.send_headers(stream_id, [(":status", "200"), ("content-type", "application/grpc")])
        server.send_data(stream_id, answer)
        trailers = [("grpc-status", "0"), ("x-request-id", os.urandom(8).hex())]
        server.send_headers(stream_id, trailers, end_stream=True)
        answered = server.data_to_send()

        started = time.process_time()
        client.receive_data(answered)
        client.acknowledge_received_data(len(answer), stream_id)
        client.data_to_send()
        reading += time.process_time() - started
    return 1e6 * sending / calls, 1e6 * reading / calls


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.1f} ({min(values):.1f}-{max(values):.1f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", nargs="+", default=["small"])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=3000)
    args = parser.parse_args()
    codec = ProtobufCodec()
    answer = codec.framed(
        Response(response=[Result(bbox=BBox(), expression=Expression())]), Response
    )
    connections = {
        "h2's H2Connection": H2Connection,
        "emotion's H2ClientConnection": H2ClientConnection,
    }
    print("| image | h2 connection | sending µs/call | reading the answer µs/call |")
    print("|---|---|---:|---:|")
    for name, data in images.make_images(quick=True).items():
        if not any(word in name for word in args.images):
            continue
        message = codec.framed(Request(image=data), Request)
        results: dict[str, list[tuple[float, float]]] = {kind: [] for kind in connections}
        for _ in range(args.rounds):
            for kind, connection in connections.items():
                results[kind].append(replay(connection(config=CLIENT), message, answer, args.calls))
        for kind, runs in results.items():
            sending, reading = [r[0] for r in runs], [r[1] for r in runs]
            print(f"| {name} | {kind} | {spread(sending)} | {spread(reading)} |")


if __name__ == "__main__":
    main()
