"""The model alone, in this process: the floor a server's CPU per request is set against."""

from __future__ import annotations

import time

from emotion.decode import decode
from emotion.model import load_model


def model_cpu_per_image(spec: str, payload: bytes, seconds: float) -> float:
    """CPU ms per image of decode + process_sample in this process, one thread."""
    model = load_model(spec)
    model.load()
    for _ in range(3):
        model.process_sample(decode(payload, min_size=model.min_size).image)
    count, cpu0, stop = 0, time.process_time(), time.perf_counter() + seconds
    while time.perf_counter() < stop:
        model.process_sample(decode(payload, min_size=model.min_size).image)
        count += 1
    return (time.process_time() - cpu0) / count * 1000
