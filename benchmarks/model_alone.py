"""The model alone, in this process: the floors a server is set against.

Measured on one thread and on one thread per CPU: the images per second
every core gets with nothing but the model running (what a server's req/s
should approach), and the CPU each image costs with as many images at once
as the server has in flight (what its CPU per request should approach).

And paced: one image at a time with a pause after each, as a server with one
call in flight sees them. A CPU that idles between images runs the next one
slower (a quarter slower after 3 ms on the development VM); a served call
pays that too, and back to back the model never does.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from emotion.decode import decode
from emotion.model import Model, load_model


def loaded(spec: str) -> Model:
    model = load_model(spec)
    model.load()
    return model


def infer(model: Model, payload: bytes) -> None:
    """A server's work for one request, less the transport: decode as it does, then the model."""
    model.process_sample(decode(payload, min_size=model.min_size).image)


@dataclass(frozen=True)
class Alone:
    """The model alone on some threads: images per second, and CPU ms each image took."""

    rate: float
    cpu_ms: float
    #: The runs this one is the mean of.
    runs: tuple[Alone, ...] = ()
    #: The pause after each image, if paced.
    pause_ms: float = 0.0

    @classmethod
    def mean(cls, *runs: Alone) -> Alone:
        return cls(
            sum(r.rate for r in runs) / len(runs), sum(r.cpu_ms for r in runs) / len(runs), runs
        )


def model_alone(
    model: Model, payload: bytes, seconds: float, threads: int, *, pause: float = 0.0
) -> Alone:
    """decode + process_sample on ``threads`` threads, back to back or ``pause`` seconds apart.

    One loaded model serves every thread, as in a server's worker: the
    default model's Runner gives each thread an interpreter of its own. Each
    thread warms its interpreter first; the clock starts when all have, and
    stops when the last call that began in time has finished. The CPU is the
    whole process's: on a shared core, an image costs more than alone, and a
    server running as many images at once pays the same.
    """
    counts = [0] * threads
    window: list[float] = []
    cpu: list[float] = []

    def start() -> None:
        now = time.perf_counter()
        window[:] = [now, now + seconds]
        cpu.append(time.process_time())

    # A thread that fails to warm up breaks the barrier for the others instead of hanging them.
    ready = threading.Barrier(threads, action=start, timeout=120)

    def loop(slot: int) -> None:
        for _ in range(2):
            infer(model, payload)
        ready.wait()
        while time.perf_counter() < window[1]:
            infer(model, payload)
            counts[slot] += 1
            if pause:
                time.sleep(pause)

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(loop, range(threads)))
    images = max(1, sum(counts))
    return Alone(
        rate=images / (time.perf_counter() - window[0]),
        cpu_ms=(time.process_time() - cpu[0]) / images * 1000,
        pause_ms=pause * 1000,
    )
