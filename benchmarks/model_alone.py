"""The model alone, in this process: the floors a server is set against.

Two of them: the CPU one image costs on one thread (what a server's CPU per
request should approach), and the images per second every core gets with
nothing but the model running (what a server's req/s should approach).
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

from emotion.decode import decode
from emotion.model import Model, load_model


def loaded(spec: str) -> Model:
    model = load_model(spec)
    model.load()
    return model


def infer(model: Model, payload: bytes) -> None:
    """A server's work for one request, less the transport: decode as it does, then the model."""
    model.process_sample(decode(payload, min_size=model.min_size).image)


def model_cpu_per_image(model: Model, payload: bytes, seconds: float) -> float:
    """CPU ms per image of decode + process_sample in this process, one thread."""
    for _ in range(3):
        infer(model, payload)
    count, cpu0, stop = 0, time.process_time(), time.perf_counter() + seconds
    while time.perf_counter() < stop:
        infer(model, payload)
        count += 1
    return (time.process_time() - cpu0) / count * 1000


def model_images_per_second(model: Model, payload: bytes, seconds: float, threads: int) -> float:
    """Images per second of decode + process_sample on ``threads`` threads, back to back.

    One loaded model serves every thread, as in a server's worker: the
    default model's Runner gives each thread an interpreter of its own. Each
    thread warms its interpreter first; the clock starts when all have, and
    stops when the last call that began in time has finished.
    """
    counts = [0] * threads
    window: list[float] = []

    def start() -> None:
        now = time.perf_counter()
        window[:] = [now, now + seconds]

    ready = threading.Barrier(threads, action=start)

    def loop(slot: int) -> None:
        for _ in range(2):
            infer(model, payload)
        ready.wait()
        while time.perf_counter() < window[1]:
            infer(model, payload)
            counts[slot] += 1

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(loop, range(threads)))
    return sum(counts) / (time.perf_counter() - window[0])
