"""One emotion.Client over a deployment: several servers, several workers, addresses that change.

Scripted servers (support.scripted) count the tries they get and the client
connections they came on; `emotion serve` with workers shows where those
connections land.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator

import pytest
from conftest import StartServer
from grpclib.const import Status
from PIL import Image
from support.scripted import QUICK, Scripted, serve_scripted
from support.served import free_port, serving_workers, start_serving

from emotion import Client, ConnectionPolicy, Model, Response, Result, RetryPolicy, SyncClient
from emotion.client import balancing

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def two() -> AsyncIterator[list[tuple[Scripted, str]]]:
    async with serve_scripted() as first, serve_scripted() as second:
        yield [first, second]


async def test_calls_one_after_another_go_round_every_target(
    two: list[tuple[Scripted, str]], jpeg: bytes
) -> None:
    (first, first_target), (second, second_target) = two

    async with Client([first_target, second_target], timeout=5) as client:
        for _ in range(20):
            await client.predict(jpeg)

    assert len(first.tries) + len(second.tries) == 20
    assert len(first.tries) >= 5
    assert len(second.tries) >= 5


async def test_targets_separated_by_commas_are_several_targets(
    two: list[tuple[Scripted, str]], jpeg: bytes
) -> None:
    (first, first_target), (second, second_target) = two

    async with Client(f"{first_target}, {second_target}", timeout=5) as client:
        for _ in range(10):
            await client.predict(jpeg)

    assert first.tries
    assert second.tries


async def test_a_client_opens_connections_while_all_it_has_are_busy(
    two: list[tuple[Scripted, str]], jpeg: bytes
) -> None:
    (server, target), _ = two
    server.delay = 0.2

    async with Client(target, timeout=5) as client:
        for _ in range(5):
            await client.predict(jpeg)
        alone = set(server.peers)
        server.peers.clear()
        for _ in range(4):
            await asyncio.gather(*(client.predict(jpeg) for _ in range(8)))
        busy = set(server.peers)

    assert len(alone) == 1  # calls one at a time need one connection
    assert 3 <= len(busy) <= 9


async def test_a_try_refused_as_unavailable_is_tried_again_on_another_connection(
    two: list[tuple[Scripted, str]], jpeg: bytes
) -> None:
    (server, target), _ = two
    server.failures = [(Status.UNAVAILABLE, None)]  # a worker draining, say

    async with Client(target, timeout=5, retry=QUICK) as client:
        await client.predict(jpeg)
        await client.predict(jpeg)

    refused, retried, later = server.peers
    assert retried != refused
    assert later == retried


async def test_connections_per_address_are_capped_by_the_policy(
    two: list[tuple[Scripted, str]], jpeg: bytes
) -> None:
    (server, target), _ = two
    server.delay = 0.2

    async with Client(target, timeout=5, connections=ConnectionPolicy(per_address=2)) as client:
        for _ in range(6):
            await asyncio.gather(*(client.predict(jpeg) for _ in range(8)))

    assert len(set(server.peers)) == 2


async def test_an_address_that_refuses_costs_no_call_and_rejoins_when_it_serves(
    jpeg: bytes,
) -> None:
    port = free_port()
    policy = ConnectionPolicy(initial_backoff=0.05, max_backoff=0.2)
    # A refused address among several is a call no server saw: no try is spent on it.
    once = RetryPolicy(max_attempts=1)
    async with (
        serve_scripted() as (live, live_target),
        Client(
            [f"127.0.0.1:{port}", live_target], timeout=5, retry=once, connections=policy
        ) as client,
    ):
        for _ in range(20):
            await client.predict(jpeg)
        assert len(live.tries) == 20

        async with serve_scripted(port=port) as (back, _):
            for _ in range(40):
                await client.predict(jpeg)
                await asyncio.sleep(0.01)
            client.close()  # first: from 3.12 a server's wait_closed waits for its connections

    assert len(back.tries) >= 5


class Counted(Model):
    """The mock's answer, and how many images this instance answered."""

    def __init__(self) -> None:
        self.answered = 0

    def process_sample(self, image: Image.Image) -> Response:
        self.answered += 1
        return Response(response=[Result()])


@pytest.mark.parametrize("stopped", [0, 1])
async def test_stopping_either_of_two_servers_costs_no_call(
    stopped: int, start_server: StartServer, jpeg: bytes
) -> None:
    models = [Counted(), Counted()]
    servers = [await start_server(model) for model in models]
    failures: list[BaseException] = []
    stop = asyncio.Event()

    async def caller(client: Client) -> None:
        while not stop.is_set():
            try:
                await client.predict(jpeg)
            except Exception as exc:
                failures.append(exc)

    targets = [f"127.0.0.1:{server.port}" for server in servers]
    async with Client(targets, timeout=5) as client:
        callers = [asyncio.ensure_future(caller(client)) for _ in range(4)]
        await asyncio.sleep(0.5)
        both = [model.answered for model in models]
        await servers[stopped].stop(grace=1)  # a drain: refuse new calls, finish, GOAWAY
        kept = models[1 - stopped].answered
        await asyncio.sleep(1)
        stop.set()
        await asyncio.gather(*callers)

    assert failures == []
    assert min(both) > 0  # the calls went to both
    assert models[1 - stopped].answered > kept + 10


async def test_a_name_is_followed_as_its_addresses_change(
    monkeypatch: pytest.MonkeyPatch, jpeg: bytes
) -> None:
    async with serve_scripted() as (first, first_target):
        port = int(first_target.rsplit(":", 1)[1])
        try:
            second_server = serve_scripted("127.0.0.2", port)
            second, _ = await second_server.__aenter__()
        except OSError:
            pytest.skip("127.0.0.2 is not a loopback address here")
        try:
            addresses = ["127.0.0.1"]
            asked: list[str] = []

            async def resolve(host: str, port: int) -> list[str]:
                asked.append(host)
                return list(addresses)

            monkeypatch.setattr(balancing, "resolve", resolve)
            policy = ConnectionPolicy(resolve_every=0.2)
            async with Client(f"pods.example:{port}", timeout=5, connections=policy) as client:
                for _ in range(5):
                    await client.predict(jpeg)
                only_first = (len(first.tries), len(second.tries))

                addresses = ["127.0.0.1", "127.0.0.2"]  # a pod joins
                await asyncio.sleep(0.3)
                for _ in range(20):
                    await client.predict(jpeg)
                    await asyncio.sleep(0.01)
                joined = len(second.tries)

                addresses = ["127.0.0.2"]  # the first pod leaves
                await asyncio.sleep(0.3)
                await client.predict(jpeg)  # sees the change
                await asyncio.sleep(0.05)
                first.tries.clear()
                for _ in range(10):
                    await client.predict(jpeg)
        finally:
            await second_server.__aexit__(None, None, None)

    assert set(asked) == {"pods.example"}
    assert only_first == (5, 0)
    assert joined >= 5
    assert first.tries == []


@pytest.mark.subprocess
async def test_one_client_reaches_every_worker_of_a_server(jpeg: bytes) -> None:
    served = await start_serving(
        "--port", "0", "--workers", "2", "--inference-processes", "1",
        "--model", "emotion.models.mock:MockModel",
    )  # fmt: skip
    try:
        async with Client(served.target, timeout=5) as client:
            # Connections grow one at a time while all are busy: call until they have.
            for _ in range(40):
                await asyncio.gather(*(client.predict(jpeg) for _ in range(16)))
                workers = serving_workers(served.process.pid, served.port)
                if len(workers) == 2:
                    break
    finally:
        served.process.send_signal(signal.SIGTERM)
        await asyncio.wait_for(served.process.wait(), 30)

    assert len(workers) == 2


async def test_the_sync_client_spreads_over_its_targets(
    two: list[tuple[Scripted, str]], jpeg: bytes
) -> None:
    (first, first_target), (second, second_target) = two

    def call_ten_times() -> None:  # in a thread: the servers run on this test's loop
        with SyncClient([first_target, second_target], timeout=5) as client:
            for _ in range(10):
                client.predict(jpeg)

    await asyncio.to_thread(call_ten_times)

    assert first.tries
    assert second.tries
