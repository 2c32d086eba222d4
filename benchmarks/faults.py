"""A deployment's ordinary events, as each client meets them: failed calls and latency added.

    python benchmarks/faults.py                     # every event, every client (~4 min)
    python benchmarks/faults.py --quick             # shorter runs, a smoke test (~2 min)
    python benchmarks/faults.py --compare /tmp/before --rounds 3
                            # that checkout's code, then this one's, 3 times (~22 min)

Against `emotion serve --model emotion.models.mock:MockModel --workers 2` on
127.0.0.1 (an ephemeral port), each client in turn, 8 callers calling the
1280x720 JPEG one call after another for 8 s, each call with a 5 s deadline
(a caller whose call failed waits 0.1 s before the next, so that one failing
fast does not spin); at 3 s one of the events below. Reported per event and
client: the calls that failed, and the p99 latency of the answered calls in
flight during the event's first second, against the p99 of a quiet run of
the same client.

- worker killed: SIGKILL to the worker holding the client's connection;
- inference process killed: SIGKILL to one of them (one per CPU);
- restart: SIGTERM to the server, started again on its port once it exits;
- stream: one StreamPipeline call, a frame every 0.25 s for 32 frames, to a
  server with --max-connection-age 2 (the mock reporting which frame it saw,
  fault_model.py): frames answered, in order;
- SIGINT: a client connected, SIGINT to the server, `emotion serve` again on
  the port once it exits: how long until it serves and the client is answered.

The clients are those the emotion code imported has (fault_callers.py):
emotion.Client with its defaults and with retry=None, emotion.SyncClient
from 8 threads, and grpcio (grpc.aio) with deploy/grpc-service-config.json,
or without one where deploy/ has none. A benchmark, not a test: see
benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from fault_callers import Call, Maker, Session, Streamed, available, default_names
from fault_report import Loaded, Restarted, rounds_tables, run_tables
from images import jpeg, noisy, scene
from servers import HERE, MOCK, children, holding, inference_processes, workers

CALLERS = 8
DEADLINE = 5.0  # seconds, each call's, all its tries included
STREAM_DEADLINE = 30.0  # the stream's, over all its frames
SERVE = ["--workers", "2", "--log-level", "info"]
EVENTS = ("worker killed", "inference process killed", "restart")


@dataclass(frozen=True)
class Plan:
    seconds: float = 8.0  # callers call for this long
    event_at: float = 3.0  # the event, from the callers' start
    quiet: float = 4.0  # the quiet run, the baseline of the p99
    frames: int = 32
    every: float = 0.25  # seconds between frames
    connection_age: float = 2.0


QUICK = Plan(seconds=3.0, event_at=1.0, quiet=2.0, frames=12)


class Server:
    """`emotion serve` in a process of its own, its port learnt from --port-file."""

    def __init__(self, args: list[str], logs: Path, name: str) -> None:
        self.args = args
        self.logs = logs
        self.name = name  # the case, in the log
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self.port_file = logs / f"port-{id(self)}"
        self.env = dict(os.environ)
        # fault_model.py, for the server's workers and inference processes too.
        self.env["PYTHONPATH"] = os.pathsep.join(
            p for p in (os.environ.get("PYTHONPATH"), str(HERE)) if p
        )

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def launch(self) -> None:
        """Start it, on the port it had (or an ephemeral one the first time)."""
        self.port_file.unlink(missing_ok=True)
        with (self.logs / "serve.log").open("ab") as log:
            log.write(f"=== {self.name}: emotion serve {' '.join(self.args)}\n".encode())
            log.flush()
            self.process = subprocess.Popen(
                [sys.executable, "-m", "emotion", "serve", "--port", str(self.port),
                 "--port-file", str(self.port_file), *self.args],
                stdout=log, stderr=subprocess.STDOUT, env=self.env,
            )  # fmt: skip

    async def serving(self, timeout: float = 60) -> bool:
        """Whether it serves (every worker; the port file written) before exit or ``timeout``."""
        assert self.process is not None
        give_up = time.monotonic() + timeout
        while not self.port_file.exists():
            if self.process.poll() is not None or time.monotonic() > give_up:
                return False
            await asyncio.sleep(0.02)
        self.port = int(self.port_file.read_text())
        return True

    async def start(self) -> None:
        self.launch()
        if not await self.serving():
            raise SystemExit(f"emotion serve did not start:\n{self.log_tail()}")

    async def exited(self, timeout: float = 60) -> bool:
        assert self.process is not None
        give_up = time.monotonic() + timeout
        while self.process.poll() is None:
            if time.monotonic() > give_up:
                return False
            await asyncio.sleep(0.02)
        return True

    def signal(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    async def stop(self) -> None:
        """SIGTERM, then SIGKILL for it and every process it started, should it hang."""
        if self.process is None or self.process.poll() is not None:
            return
        tree = _descendants(self.process.pid)
        self.signal(signal.SIGTERM)
        if not await self.exited(30):
            for pid in [*tree, self.process.pid]:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            self.process.wait()

    def log_tail(self, lines: int = 20) -> str:
        text = (self.logs / "serve.log").read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])


def _descendants(pid: int) -> list[int]:
    found = children(pid)
    for child in list(found):
        found.extend(_descendants(child))
    return found


async def restart(server: Server, signum: int, give_up: float = 60) -> tuple[float, float, int]:
    """Stop it with ``signum`` and start it again on its port once it has exited.

    As an operator would, a start that fails (the port still held) is tried
    again every 0.5 s. Seconds until it exited, until it served again, and
    how many starts that took.
    """
    began = time.monotonic()
    server.signal(signum)
    if not await server.exited(give_up):
        raise SystemExit(f"emotion serve still running {give_up} s after {signum}")
    exited = time.monotonic() - began
    starts = 0
    while time.monotonic() - began < give_up:
        starts += 1
        server.launch()
        if await server.serving(give_up):
            return exited, time.monotonic() - began, starts
        await asyncio.sleep(0.5)
    raise SystemExit(f"emotion serve did not start again:\n{server.log_tail()}")


async def event(name: str, server: Server, at: float) -> tuple[str, float | None]:
    """Make event ``name`` happen at ``at`` (time.monotonic).

    What was done, for the report, and for a restart the seconds until the
    server served again.
    """
    await asyncio.sleep(max(0.0, at - time.monotonic()))
    assert server.process is not None
    supervisor = server.process.pid
    if name == "worker killed":
        pids = workers(supervisor)
        serving = holding(pids, server.port)
        pid = (serving or pids)[0]
        os.kill(pid, signal.SIGKILL)
        return f"worker {pid} ({'held' if serving else 'did not hold'} the connection)", None
    if name == "inference process killed":
        pid = inference_processes(supervisor)[0]
        os.kill(pid, signal.SIGKILL)
        return f"inference process {pid}", None
    if name == "restart":
        exited, serving_after, starts = await restart(server, signal.SIGTERM)
        note = f"exited after {exited:.2f} s, serving after {serving_after:.2f} s ({starts} starts)"
        return note, serving_after
    raise ValueError(name)


async def under_load(
    name: str, make: Maker, what: str | None, plan: Plan, image: bytes, logs: Path
) -> Loaded:
    """8 callers of one client for ``plan.seconds`` (or the quiet run's), ``what`` at event_at."""
    server = Server([*SERVE, "--model", MOCK], logs, f"{what or 'quiet'}, {name}")
    await server.start()
    session = make(server.target, DEADLINE, STREAM_DEADLINE)
    try:
        if (error := await session.call(image)) is not None:  # connected, warm
            raise SystemExit(f"{name}: the first call failed: {error}")
        began = time.monotonic()
        seconds = plan.quiet if what is None else plan.seconds
        fired = None if what is None else asyncio.create_task(
            event(what, server, began + plan.event_at)
        )  # fmt: skip
        calls = await session.load(image, CALLERS, began + seconds)
        note, back = ("", None) if fired is None else await fired
    finally:
        await session.close()
        await server.stop()
    return Loaded(what or "quiet", name, began + plan.event_at, calls, note, back)


async def streamed(name: str, make: Maker, plan: Plan, frames: list[bytes], logs: Path) -> Streamed:
    args = [*SERVE, "--model", "fault_model:FrameModel"]
    args += ["--max-connection-age", str(plan.connection_age)]
    server = Server(args, logs, f"stream, {name}")
    await server.start()
    session = make(server.target, DEADLINE, STREAM_DEADLINE)
    try:
        return await session.stream(frames, plan.every)
    finally:
        await session.close()
        await server.stop()


async def interrupted(name: str, make: Maker, image: bytes, logs: Path) -> Restarted:
    """A connected client calls from the SIGINT on, until the new server answers (60 s at most).

    It calls every 0.1 s, as a client with a few calls a second would; the
    old server answers some while it drains, so the answer that counts is
    the first to end after the old server exited.
    """
    server = Server([*SERVE, "--model", MOCK], logs, f"SIGINT, {name}")
    await server.start()
    session: Session = make(server.target, DEADLINE, STREAM_DEADLINE)
    calls: list[Call] = []
    try:
        if (error := await session.call(image)) is not None:
            raise SystemExit(f"{name}: the first call failed: {error}")
        began = time.monotonic()
        old = server.process
        assert old is not None
        restarting = asyncio.create_task(restart(server, signal.SIGINT))
        gone: list[float] = []

        async def old_gone() -> None:
            await asyncio.to_thread(old.wait)
            gone.append(time.monotonic())

        watching = asyncio.create_task(old_gone())
        while time.monotonic() - began < 60:
            start = time.monotonic()
            error = await session.call(image)
            calls.append(Call(start, time.monotonic(), error))
            if error is None and gone and calls[-1].end > gone[0]:
                break
            await asyncio.sleep(0.1)
        exited, serving, starts = await restarting
        await watching
    finally:
        await session.close()
        await server.stop()
    answered = [c.end - began for c in calls if c.error is None and gone and c.end > gone[0]]
    return Restarted(name, exited, serving, starts, answered[0] if answered else None, calls)


async def run(
    names: list[str], makers: dict[str, Maker], plan: Plan, events: list[str], logs: Path
) -> dict[str, object]:
    image = jpeg(noisy(scene(1280, 720), 40), 80)
    frames = [jpeg(scene(1280 - n, 720), 80) for n in range(plan.frames)]
    loaded: list[Loaded] = []
    streams: dict[str, Streamed] = {}
    restarts: list[Restarted] = []
    for what in [None, *[e for e in EVENTS if e in events]]:
        for name in names:
            print(f"{what or 'quiet'}: {name}", file=sys.stderr, flush=True)
            loaded.append(await under_load(name, makers[name], what, plan, image, logs))
    if "stream" in events:
        for name in names:
            print(f"stream: {name}", file=sys.stderr, flush=True)
            streams[name] = await streamed(name, makers[name], plan, frames, logs)
    if "sigint" in events:
        for name in names:
            print(f"SIGINT: {name}", file=sys.stderr, flush=True)
            restarts.append(await interrupted(name, makers[name], image, logs))
    return {
        "plan": asdict(plan),
        "deadline": DEADLINE,
        "loaded": [asdict(r) for r in loaded],
        "streams": {name: asdict(s) for name, s in streams.items()},
        "restarts": [asdict(r) for r in restarts],
    }


def compare(args: argparse.Namespace) -> None:
    """This script on the other checkout's code and on this one's, round after round."""
    codes = {"before": str(Path(args.compare).resolve()), "after": str(HERE.parent)}
    passed = [a for a in sys.argv[1:] if a not in ("--compare", args.compare)]
    passed = _without(_without(passed, "--rounds"), "--json")
    results: dict[str, list[dict[str, object]]] = {code: [] for code in codes}
    folder = Path(tempfile.mkdtemp(prefix="emotion-faults-rounds-"))
    try:
        for number in range(args.rounds):
            for code, path in codes.items():
                print(f"round {number + 1}, {code} ({path})", file=sys.stderr, flush=True)
                out = folder / f"{code}-{number}.json"
                env = {**os.environ, "PYTHONPATH": path}
                command = [sys.executable, str(HERE / "faults.py"), *passed, "--json", str(out)]
                subprocess.run(command, env=env, check=True, stdout=sys.stderr)
                results[code].append(json.loads(out.read_text()))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results))
    print(rounds_tables(results))


def _without(argv: list[str], flag: str) -> list[str]:
    if flag not in argv:
        return argv
    at = argv.index(flag)
    return argv[:at] + argv[at + 2 :]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 s runs, a 12-frame stream")
    parser.add_argument(
        "--clients", nargs="+", help="the clients to run (default: all this code has)"
    )
    parser.add_argument(
        "--events", nargs="+", default=[*EVENTS, "stream", "sigint"],
        choices=[*EVENTS, "stream", "sigint"],
    )  # fmt: skip
    parser.add_argument(
        "--json", help="write the results to this file (with --compare, all rounds)"
    )
    parser.add_argument("--logs", help="keep the servers' logs in this folder")
    parser.add_argument("--compare", help="a checkout of emotion to run against this code")
    parser.add_argument("--rounds", type=int, default=3, help="with --compare: rounds of each")
    args = parser.parse_args()
    if args.compare:
        compare(args)
        return
    makers = available()
    names = [n for n in args.clients or default_names(makers) if n in makers]
    missing = set(args.clients or []) - set(makers)
    if missing:  # with --compare, the older code may lack some
        print(f"this code has no {sorted(missing)}; it has {list(makers)}", file=sys.stderr)
    if not names:
        raise SystemExit("no client to run")
    plan = QUICK if args.quick else Plan()
    # Without retries, writes to a connection the server dropped: asyncio warns once each.
    logging.getLogger("asyncio").setLevel(logging.ERROR)
    logs = Path(args.logs or tempfile.mkdtemp(prefix="emotion-faults-"))
    logs.mkdir(parents=True, exist_ok=True)
    try:
        results = asyncio.run(run(names, makers, plan, args.events, logs))
    finally:
        if args.logs is None:
            shutil.rmtree(logs, ignore_errors=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results))
    print(run_tables(results))


if __name__ == "__main__":
    main()
