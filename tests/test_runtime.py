"""The server process: its CPUs, and the settings it applies to the whole process."""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

import pytest
from conftest import encode, gradient
from PIL import Image
from support.sample_models import GatedModel

from emotion.runtime import apply_process_settings, available_cpus, configure_logging
from emotion.testing import serve_model


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


@pytest.mark.subprocess
async def test_a_call_that_ends_early_is_logged_once_by_emotion_not_again_by_grpclib(
    caplog: pytest.LogCaptureFixture,
) -> None:
    configure_logging("info", "%(message)s")
    model = GatedModel()

    with caplog.at_level(logging.DEBUG):
        async with serve_model(model, timeout=0.2, grace=0) as client:
            with pytest.raises(TimeoutError):
                await client.predict(encode(gradient(), "JPEG"))
            await asyncio.sleep(0.3)
        model.gate.set()

    about_the_call = [
        r for r in caplog.records if r.name in {"emotion.serving.calls", "grpclib.server"}
    ]
    assert [r.name for r in about_the_call] == ["emotion.serving.calls"]
    assert "status=CANCELLED" in about_the_call[0].getMessage() or (
        "status=DEADLINE_EXCEEDED" in about_the_call[0].getMessage()
    )
