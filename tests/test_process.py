"""The server process: its CPUs, and the settings it applies to the whole process."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from PIL import Image

from emotion.process import apply_process_settings, available_cpus


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({"cpu.max": "200000 100000\n"}, 2),
        ({"cpu.max": "150000 100000\n"}, 2),
        ({"cpu.max": "50000 100000\n"}, 1),
        ({"cpu.max": "max 100000\n"}, None),
        ({"cpu/cpu.cfs_quota_us": "300000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 3),
        ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
        ({}, None),
    ],
    ids=[
        "v2 2 CPUs",
        "v2 1.5 CPUs",
        "v2 half a CPU",
        "v2 no limit",
        "v1 3 CPUs",
        "v1 no limit",
        "no cgroup",
    ],
)
def test_available_cpus_follows_a_containers_cpu_quota(
    tmp_path: Path, files: dict[str, str], expected: int | None
) -> None:
    for name, content in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(content)
    allowed = len(os.sched_getaffinity(0))

    assert available_cpus(tmp_path) == (allowed if expected is None else min(allowed, expected))


def test_process_settings_raise_pillows_pixel_guard_to_the_limit_and_never_lower_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 89_478_485)

    apply_process_settings(max_pixels=200_000_000)
    raised = Image.MAX_IMAGE_PIXELS
    apply_process_settings(max_pixels=1_000)

    assert raised == 200_000_000
    assert Image.MAX_IMAGE_PIXELS == 200_000_000
