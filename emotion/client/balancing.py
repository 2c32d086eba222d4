"""Which connection a call goes on: every address of every target, several connections each.

One HTTP/2 connection reaches one worker process of one server: the kernel
hands each accepted connection to one worker (``SO_REUSEPORT``), and a
headless Service's name stands for several pods. So a client keeps a pool:
each address a target resolves to is an endpoint, each endpoint gets more
connections while all it has are busy, and a call takes the connection with
the fewest calls in flight. An endpoint that refuses is left out while the
others serve, and dialled again in the background with backoff; names are
resolved again as time passes, so pods that come and go are followed.
"""

from __future__ import annotations

import asyncio
import ipaddress
import random
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from grpclib.client import Channel
from grpclib.const import Status
from grpclib.exceptions import GRPCError, StreamTerminatedError

from emotion.config.client import ConnectionPolicy
from emotion.transport.client import connect

#: Makes the channel of one connection: (address, port, the name it was resolved from).
OpenChannel = Callable[[str, int, str], Channel]
#: The addresses a name stands for.
Resolve = Callable[[str, int], Awaitable[list[str]]]

#: The least time between two resolutions a refused address asks for.
_RESOLVE_AFTER_REFUSAL = 1.0
#: Above this many connections, two random choices instead of a scan of all.
_SCAN_AT_MOST = 32


async def resolve(host: str, port: int) -> list[str]:
    """Every address ``host`` stands for, in the resolver's order, each once."""
    loop = asyncio.get_running_loop()
    found = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(sockaddr[0]) for *_, sockaddr in found))


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


class Connection:
    """One channel, and the calls on it now."""

    __slots__ = ("channel", "endpoint", "failed", "in_flight", "ready")

    def __init__(self, channel: Channel, endpoint: Endpoint) -> None:
        self.channel = channel
        self.endpoint = endpoint
        self.in_flight = 0
        #: Connected, and nothing failed on it since: calls take it without waiting.
        self.ready = False
        #: A call on it was cut or refused: closed once its calls are done.
        self.failed = False


class Endpoint:
    """One address of a target, and its connections."""

    def __init__(self, name: str, address: str, port: int) -> None:
        self.name = name
        self.address = address
        self.port = port
        self.connections: list[Connection] = []
        self.failures = 0  # dials refused in a row
        self.down_until = 0.0
        self.dialing = False  # a connection is being opened in the background
        self.retired = False  # its name no longer resolves to it

    @property
    def usable(self) -> int:
        return sum(not connection.failed for connection in self.connections)

    def __repr__(self) -> str:
        return f"Endpoint({self.name}={self.address}:{self.port})"


class Balancer:
    """The pool of a client's connections, and the choice of one per call.

    ``targets`` are (host, port) pairs; a host that is a name is resolved to
    all its addresses on the first call and every ``policy.resolve_every``
    seconds after. Calls are counted in and out by the caller
    (:meth:`pick`, then :meth:`release` with how the try ended).
    """

    def __init__(
        self,
        targets: Sequence[tuple[str, int]],
        policy: ConnectionPolicy,
        open_channel: OpenChannel,
        *,
        resolver: Resolve | None = None,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self.targets = list(targets)
        self.policy = policy
        self._open_channel = open_channel
        self._resolver = resolver
        self._clock = clock
        self._random = rng or random.Random()  # noqa: S311 - spreading load, not secrets
        self.endpoints: list[Endpoint] = []
        self._ready: list[Connection] = []  # ready connections of live endpoints
        self._turn = 0
        self._resolved_at: float | None = None
        self._resolving: asyncio.Task[None] | None = None
        self._resolve_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closed = False
        if all(_is_address(host) for host, _ in self.targets):
            self._apply({(host, port): [host] for host, port in self.targets})
            self._resolved_at = float("inf")  # addresses need no resolving

    # The choice of a connection.

    async def pick(self) -> Connection:
        """The connection for a call's next try; it counts as in flight until released."""
        connection = self._pick_ready()
        if connection is None:
            connection = await self._pick_cold()
        connection.in_flight += 1
        return connection

    def _pick_ready(self) -> Connection | None:
        if self._resolved_at is not None and self._clock() - self._resolved_at >= (
            self.policy.resolve_every
        ):
            self._resolve_soon()
        ready = self._ready
        count = len(ready)
        if not count:
            return None
        if count > _SCAN_AT_MOST:
            first, second = self._random.sample(ready, 2)
            best = first if first.in_flight <= second.in_flight else second
        else:
            # From a turning start: calls far apart go round every connection.
            start = self._turn = (self._turn + 1) % count
            best = ready[start]
            if best.in_flight:
                for index in range(start + 1, start + count):
                    candidate = ready[index % count]
                    if candidate.in_flight < best.in_flight:
                        best = candidate
                        if not best.in_flight:
                            break
        if best.in_flight:
            self._grow(best.endpoint)
        return best

    async def _pick_cold(self) -> Connection:
        """No connection is ready: dial one for this call, and the other endpoints meanwhile."""
        if self._resolved_at is None:
            await self._resolve()
        connection = self._pick_ready()  # made ready while this call waited
        if connection is not None:
            return connection
        live = [endpoint for endpoint in self.endpoints if not endpoint.retired]
        if not live:
            raise OSError(f"no address to call for {self._names()}")
        now = self._clock()
        up = [endpoint for endpoint in live if endpoint.down_until <= now]
        if up:
            endpoint = up[self._turn % len(up)]
            self._turn += 1
        else:
            endpoint = min(live, key=lambda e: e.down_until)
        for other in up:
            if other is not endpoint and not other.usable:
                self._grow(other)
        usable = [connection for connection in endpoint.connections if not connection.failed]
        if usable:
            return min(usable, key=lambda c: c.in_flight)
        connection = self._connection(endpoint)  # dialled by the call itself
        endpoint.connections.append(connection)
        return connection

    def release(self, connection: Connection, failure: BaseException | None) -> None:
        """The end of a try on ``connection``: None if answered, else what it raised."""
        connection.in_flight -= 1
        endpoint = connection.endpoint
        if isinstance(failure, GRPCError) and failure.status is Status.UNAVAILABLE:
            # A worker draining (or loading) refuses each call on its open
            # connections for as long as it drains: the next try takes another.
            self._fail(connection)
        elif failure is None or isinstance(failure, GRPCError):
            if not (connection.ready or connection.failed or endpoint.retired):
                self._mark_ready(connection)
        elif isinstance(failure, StreamTerminatedError):
            # Sent away or lost: a new connection replaces it, on another worker perhaps.
            self._fail(connection)
            if not any(c.ready for c in endpoint.connections):
                self._grow(endpoint)
        elif isinstance(failure, OSError) and not isinstance(failure, TimeoutError):
            self._refused(endpoint)
        if (connection.failed or endpoint.retired) and not connection.in_flight:
            self._drop(connection)

    def elsewhere(self, connection: Connection) -> bool:
        """Whether another endpoint than ``connection``'s may take the call now (not left out)."""
        now = self._clock()
        return any(
            endpoint is not connection.endpoint
            and not endpoint.retired
            and endpoint.down_until <= now
            for endpoint in self.endpoints
        )

    @property
    def in_flight(self) -> int:
        return sum(c.in_flight for e in self.endpoints for c in e.connections)

    # Connections: opened while an endpoint is busy, dialled again after a failure.

    def _connection(self, endpoint: Endpoint) -> Connection:
        channel = self._open_channel(endpoint.address, endpoint.port, endpoint.name)
        return Connection(channel, endpoint)

    def _grow(self, endpoint: Endpoint) -> None:
        """Open one more connection to ``endpoint`` in the background, if it may have one."""
        if endpoint.dialing or endpoint.retired or self._closed:
            return
        if endpoint.usable >= self.policy.per_address:
            return
        endpoint.dialing = True
        self._spawn(self._dial(endpoint))

    async def _dial(self, endpoint: Endpoint) -> None:
        """Open a connection; after a refusal, again after a growing backoff, until one opens."""
        try:
            while not (self._closed or endpoint.retired):
                wait = endpoint.down_until - self._clock()
                if wait > 0:
                    await asyncio.sleep(wait)
                    continue
                connection = self._connection(endpoint)
                endpoint.connections.append(connection)
                try:
                    await asyncio.wait_for(connect(connection.channel), self.policy.connect_timeout)
                except OSError:  # TimeoutError included
                    self._back_off(endpoint)
                    continue
                self._mark_ready(connection)
                return
        finally:
            endpoint.dialing = False

    def _mark_ready(self, connection: Connection) -> None:
        endpoint = connection.endpoint
        endpoint.failures = 0
        endpoint.down_until = 0.0
        if not connection.ready:
            connection.ready = True
            self._ready.append(connection)

    def _fail(self, connection: Connection) -> None:
        connection.failed = True
        if connection.ready:
            connection.ready = False
            self._ready.remove(connection)
        if not connection.in_flight:
            self._drop(connection)

    def _refused(self, endpoint: Endpoint) -> None:
        """The endpoint would not connect: leave it out, and dial it again in the background."""
        self._back_off(endpoint)
        self._grow(endpoint)

    def _back_off(self, endpoint: Endpoint) -> None:
        """Leave the endpoint out for a while, longer each time in a row it refuses."""
        endpoint.failures += 1
        policy = self.policy
        bound = min(policy.initial_backoff * 2 ** (endpoint.failures - 1), policy.max_backoff)
        endpoint.down_until = self._clock() + bound * (0.8 + 0.4 * self._random.random())
        for connection in list(endpoint.connections):
            self._fail(connection)
        # An address that refuses may be a pod that is gone: ask the names again soon.
        if self._resolved_at is not None and self._resolved_at != float("inf"):
            soon = self._clock() - self.policy.resolve_every + _RESOLVE_AFTER_REFUSAL
            self._resolved_at = min(self._resolved_at, soon)

    def _drop(self, connection: Connection) -> None:
        endpoint = connection.endpoint
        if connection in endpoint.connections:
            endpoint.connections.remove(connection)
            connection.channel.close()
        if endpoint.retired and not endpoint.connections and endpoint in self.endpoints:
            self.endpoints.remove(endpoint)

    # Names: resolved on the first call, and again as time passes.

    def _resolve_soon(self) -> None:
        if self._resolving is None and not self._closed:
            self._resolving = self._spawn(self._resolve_quietly())

    async def _resolve_quietly(self) -> None:
        try:
            await self._resolve()
        except OSError:
            self._resolved_at = self._clock()  # keep the addresses known; try at the next turn
        finally:
            self._resolving = None

    async def _resolve(self) -> None:
        async with self._resolve_lock:
            found: dict[tuple[str, int], list[str]] = {}
            failure: OSError | None = None
            for host, port in self.targets:
                if _is_address(host):
                    found[(host, port)] = [host]
                    continue
                try:
                    found[(host, port)] = await (self._resolver or resolve)(host, port)
                except OSError as exc:
                    failure = exc
            self._resolved_at = self._clock()
            for endpoint in self._apply(found):
                self._grow(endpoint)  # a new pod: connect before a call needs it
            if failure is not None and not any(found.values()) and not self.endpoints:
                raise failure

    def _apply(self, found: dict[tuple[str, int], list[str]]) -> list[Endpoint]:
        """Follow what the names stand for now: new addresses join, gone ones retire."""
        known = {(e.name, e.address, e.port): e for e in self.endpoints if not e.retired}
        wanted = {
            (host, address, port): None  # a dict: in the resolver's order
            for (host, port), addresses in found.items()
            for address in addresses
        }
        joined = [Endpoint(*key) for key in wanted if key not in known]
        self.endpoints.extend(joined)
        resolved_names = {(host, port) for (host, port), addresses in found.items() if addresses}
        for key, endpoint in known.items():
            if key not in wanted and (endpoint.name, endpoint.port) in resolved_names:
                endpoint.retired = True
                for connection in list(endpoint.connections):
                    self._fail(connection)
        return joined

    def _names(self) -> str:
        return ", ".join(f"{host}:{port}" for host, port in self.targets)

    # Lifetime.

    def _spawn(self, work: Awaitable[None]) -> asyncio.Task[None]:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._finished)
        return task

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled():
            task.exception()  # a dial's or resolution's end is already accounted for

    def close(self) -> None:
        """Close every connection; dials and resolutions under way stop."""
        self._closed = True
        for task in list(self._tasks):
            task.cancel()
        for endpoint in self.endpoints:
            for connection in endpoint.connections:
                connection.channel.close()
        self._ready.clear()
