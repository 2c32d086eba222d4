"""The default model alone, in-process: where the time goes, and the floor a server can reach.

    python benchmarks/model_floor.py [--seconds 5]

Prints a markdown report: per image, the time to decode, detect and classify,
then single-thread throughput and CPU per image, then two threads sharing the
model with an interpreter per thread versus one interpreter behind a lock.
"""

from __future__ import annotations

import argparse
import functools
import os
import platform
import statistics
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import images
import numpy as np
from numpy.typing import NDArray

from emotion.decode import decode_image
from emotion.models.fer import FerModel, to_rgb
from emotion.models.fer.runtime import Runner

CASES: dict[str, Callable[[], bytes]] = {
    "portrait 512x512 (1 face)": lambda: images.jpeg(images.portrait()),
    "group 1280x853 (10+ faces)": lambda: images.jpeg(images.group()),
    "photo 4000x3000 (group scaled up)": lambda: images.jpeg(images.scene(4000, 3000)),
}


def median_ms(samples: list[float]) -> str:
    return f"{statistics.median(samples) * 1000:.1f}"


def split(model: FerModel, data: bytes, repeat: int) -> tuple[str, str, str, int]:
    decode, detect, classify, faces = [], [], [], 0
    for _ in range(repeat):
        t0 = time.perf_counter()
        image = decode_image(data)
        t1 = time.perf_counter()
        rgb = to_rgb(image)
        found = model.detect(rgb)
        t2 = time.perf_counter()
        gray = rgb.convert("L")
        for face in found:
            model.classify(gray, face)
        t3 = time.perf_counter()
        decode.append(t1 - t0)
        detect.append(t2 - t1)
        classify.append(t3 - t2)
        faces = len(found)
    return median_ms(decode), median_ms(detect), median_ms(classify), faces


def throughput(work: Callable[[], object], seconds: float, threads: int) -> tuple[float, float]:
    """Calls per second and CPU seconds per call, running ``work`` on ``threads`` threads."""
    stop = time.perf_counter() + seconds
    counts = [0] * threads

    def loop(slot: int) -> None:
        while time.perf_counter() < stop:
            work()
            counts[slot] += 1

    cpu0, wall0 = time.process_time(), time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(loop, range(threads)))
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    calls = sum(counts)
    return calls / wall, cpu / calls


class LockedRunner(Runner):
    """One interpreter for every thread, taken in turn under a lock."""

    def __init__(self, model: bytes) -> None:
        self._lock = threading.Lock()
        super().__init__(model)
        # Replace the thread-local slot with a plain one that all threads share.
        self._local = SimpleNamespace(**vars(self._local))  # type: ignore[assignment]

    def __call__(self, *inputs: NDArray[np.float32]) -> list[NDArray[np.float32]]:
        with self._lock:
            return super().__call__(*inputs)


def locked_model() -> FerModel:
    model = FerModel()
    model.load()
    for part in (model._short, model._full, model._classify):
        part._runner = LockedRunner(part._runner._model)
    return model


def infer(model: FerModel, payload: bytes) -> None:
    model.process_sample(decode_image(payload))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()

    model = FerModel()
    started = time.perf_counter()
    model.load()
    load_s = time.perf_counter() - started
    data = {name: make() for name, make in CASES.items()}
    for payload in data.values():
        model.process_sample(decode_image(payload))  # warm up

    print(
        f"# Default model floor ({platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs, Python {platform.python_version()})\n"
    )
    print(f"Model load: {load_s * 1000:.0f} ms.\n")
    print("## Time per image, one thread (median ms)\n")
    print("| image | bytes | faces | decode | detect | classify (all faces) |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, payload in data.items():
        decode, detect, classify, faces = split(model, payload, args.repeat)
        print(f"| {name} | {len(payload):,} | {faces} | {decode} | {detect} | {classify} |")

    print("\n## Throughput of decode + process_sample\n")
    print("| image | threads | interpreters | images/s | CPU ms/image |")
    print("|---|---:|---|---:|---:|")
    shared = locked_model()
    for name, payload in data.items():
        for label, candidate, threads in (
            ("per thread", model, 1),
            ("per thread", model, 2),
            ("one, locked", shared, 2),
        ):
            rate, cpu = throughput(
                functools.partial(infer, candidate, payload), args.seconds, threads
            )
            print(f"| {name} | {threads} | {label} | {rate:.1f} | {cpu * 1000:.1f} |")


if __name__ == "__main__":
    main()
