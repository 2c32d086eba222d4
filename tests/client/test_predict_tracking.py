"""`emotion predict --stream`: ids, smoothed expressions, a summary, tracks drawn alike."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import StartServer
from PIL import Image, ImageDraw
from support.sample_models import SquaresModel
from test_predict import run

from emotion.client.annotate import TRACK_COLOURS


def crossing(folder: Path, frames: int = 8) -> None:
    """A red square moving right and a larger blue one moving left, as PNG files."""
    folder.mkdir()
    for i in range(frames):
        image = Image.new("RGB", (400, 200))
        draw = ImageDraw.Draw(image)
        draw.rectangle((20 + 30 * i, 60, 59 + 30 * i, 99), fill=(255, 0, 0))
        draw.rectangle((330 - 30 * i, 90, 379 - 30 * i, 139), fill=(0, 0, 255))
        image.save(folder / f"{i:03d}.png")


@pytest.mark.subprocess
async def test_predict_stream_track_prints_ids_smoothed_and_a_summary_and_draws_tracks_alike(
    start_server: StartServer, tmp_path: Path
) -> None:
    server = await start_server(SquaresModel())
    folder = tmp_path / "frames"
    crossing(folder)
    drawn = tmp_path / "drawn"

    code, out, err = await run(
        "predict", "--stream", "--smoothing", "0.5", str(folder),
        "--annotate", str(drawn), "--target", f"127.0.0.1:{server.port}",
    )  # fmt: skip

    assert (code, err) == (0, "")
    *lines, last = [json.loads(line) for line in out.splitlines()]
    assert [line["frame"] for line in lines] == list(range(8))
    for line in lines:
        by_width = {round(f["bbox"]["x2"] - f["bbox"]["x1"]): f for f in line["faces"]}
        assert (by_width[40]["track"], by_width[50]["track"]) == (1, 2)
        assert by_width[40]["smoothed"]["happiness"] == pytest.approx(0.5, abs=0.01)
    assert last["file"] == str(folder)
    assert last["frames"] == 8
    assert [t["track"] for t in last["tracks"]] == [1, 2]
    assert last["tracks"][0]["first_frame"] == 0
    assert last["tracks"][0]["last_frame"] == 7
    assert last["tracks"][0]["dominant"] == "neutral"
    assert last["tracks"][0]["mean"]["happiness"] == pytest.approx(0.5, abs=0.01)
    # Each track's box is drawn in its own colour on every frame (the box's left edge).
    for i in range(8):
        picture = Image.open(drawn / f"{i:03d}-{i:04d}.png").convert("RGB")
        assert picture.getpixel((21 + 30 * i, 62)) == TRACK_COLOURS[0]
        assert picture.getpixel((331 - 30 * i, 92)) == TRACK_COLOURS[1]


@pytest.mark.subprocess
async def test_smoothing_implies_track_which_implies_stream(
    start_server: StartServer, tmp_path: Path
) -> None:
    server = await start_server(SquaresModel())
    folder = tmp_path / "frames"
    crossing(folder, frames=2)

    code, out, err = await run(
        "predict", "--smoothing", "2", str(folder), "--target", f"127.0.0.1:{server.port}"
    )

    assert (code, err) == (0, "")
    lines = [json.loads(line) for line in out.splitlines()]
    assert [line.get("frame") for line in lines] == [0, 1, None]
    assert lines[0]["faces"][0]["track"] in {1, 2}
    assert [t["track"] for t in lines[-1]["tracks"]] == [1, 2]
