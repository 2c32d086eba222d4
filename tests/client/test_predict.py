"""`emotion predict --stream` and `--annotate`, and the frames they read."""

from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path

import pytest
from conftest import EMOTION, TESTS, StartServer, encode, gradient, subprocess_env
from PIL import Image, ImageChops
from support.sample_models import SizeModel

from emotion import Server
from emotion.client.predict import frames
from emotion.contract import LANDMARK_FIELDS
from emotion.models.fer import FerModel


async def run(*args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        *EMOTION,
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=subprocess_env(),
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def animation(path: Path, widths: list[int], image_format: str) -> Path:
    images = [gradient(w, 40).resize((200, 40)) for w in widths]
    for image, width in zip(images, widths, strict=True):
        image.paste((255, 0, 0), (0, 0, width // 4, 10))  # frames must differ to be kept
    images[0].save(path, image_format, save_all=True, append_images=images[1:], duration=40)
    return path


@pytest.mark.parametrize("image_format", ["GIF", "WEBP"])
def test_an_animation_gives_each_of_its_frames(tmp_path: Path, image_format: str) -> None:
    path = animation(tmp_path / f"clip.{image_format.lower()}", [40, 80, 120, 160], image_format)

    found = list(frames(path))

    assert [f.index for f in found] == [0, 1, 2, 3]
    assert all(Image.open(io.BytesIO(f.data)).size == (200, 40) for f in found)


def test_a_folder_gives_its_images_in_name_order(tmp_path: Path) -> None:
    for name in ("b.jpg", "a.png", "c.webp", "notes.txt"):
        (tmp_path / name).write_bytes(b"x")

    assert [f.source.name for f in frames(tmp_path)] == ["a.png", "b.jpg", "c.webp"]


@pytest.mark.subprocess
async def test_predict_stream_prints_one_line_per_frame_in_order(
    start_server: StartServer, tmp_path: Path
) -> None:
    server = await start_server(SizeModel())
    folder = tmp_path / "frames"
    folder.mkdir()
    widths = [90, 30, 60, 120, 45]
    for index, width in enumerate(widths):
        (folder / f"{index:03d}.png").write_bytes(encode(gradient(width, 20), "PNG"))

    code, out, err = await run(  # each frame alone: tests/client/test_predict_tracking.py tracks
        "predict", "--stream", "--no-track", str(folder), "--target", f"127.0.0.1:{server.port}"
    )

    lines = [json.loads(line) for line in out.splitlines()]
    assert (code, err) == (0, "")
    assert [line["frame"] for line in lines] == [0, 1, 2, 3, 4]
    assert [line["faces"][0]["bbox"]["x2"] for line in lines] == widths


@pytest.mark.subprocess
async def test_predict_annotate_writes_the_picture(
    start_server: StartServer, tmp_path: Path
) -> None:
    server = await start_server(SizeModel())
    photo = TESTS / "fixtures" / "grace_hopper.jpg"
    out = tmp_path / "annotated.png"

    code, _, err = await run(
        "predict", str(photo), "--annotate", str(out), "--target", f"127.0.0.1:{server.port}"
    )

    assert (code, err) == (0, "")
    drawn = Image.open(out)
    assert drawn.size == Image.open(photo).size
    assert ImageChops.difference(drawn.convert("RGB"), Image.open(photo).convert("RGB")).getbbox()


@pytest.mark.subprocess
async def test_predict_edge_cases_are_one_line_each_and_the_run_goes_on(
    start_server: StartServer, tmp_path: Path
) -> None:
    server = await start_server(SizeModel())
    target = ("--target", f"127.0.0.1:{server.port}")
    empty = tmp_path / "empty"
    empty.mkdir()
    folder = tmp_path / "frames"
    folder.mkdir()
    (folder / "0.png").write_bytes(encode(gradient(30, 10), "PNG"))
    (folder / "1.jpg").mkdir()  # not a file
    photo = tmp_path / "photo.png"
    photo.write_bytes(encode(gradient(40, 10), "PNG"))
    huge = tmp_path / "huge.jpg"
    huge.write_bytes(bytes(17 * 1024 * 1024))

    stream_code, stream_out, stream_err = await run(
        "predict", "--stream", str(empty), str(folder), *target
    )
    plain_code, plain_out, plain_err = await run("predict", str(huge), str(photo), *target)
    draw_code, _, draw_err = await run(
        "predict", str(photo), "--annotate", str(tmp_path / "out.xyz"), *target
    )
    usage_code, _, usage_err = await run(
        "predict", "--stream", str(photo), "--annotate", "s.png", *target
    )

    assert stream_code == 1
    streamed = [json.loads(line) for line in stream_out.splitlines()]
    assert [line.get("frame") for line in streamed] == [0, None]  # a frame, then its summary
    assert streamed[-1]["frames"] == 1
    assert stream_err.splitlines() == [
        f"emotion predict: {empty}: no images in it",
        f"emotion predict: {folder / '1.jpg'}: Is a directory",
    ]
    assert plain_code == 1
    assert [json.loads(line)["file"] for line in plain_out.splitlines()] == [str(photo)]
    assert plain_err.startswith(f"emotion predict: {huge}: image is 17825792 bytes")
    assert draw_err.startswith(f"emotion predict: {photo}: cannot write ")
    assert draw_code == 1  # the answer was printed, the picture asked for was not
    assert "Traceback" not in stream_err + plain_err + draw_err
    assert usage_code == 2
    assert "with --stream, --annotate names a folder" in usage_err


@pytest.mark.subprocess
async def test_a_folder_without_stream_is_one_call_per_image_in_name_order(
    start_server: StartServer, tmp_path: Path
) -> None:
    server = await start_server(SizeModel())
    folder = tmp_path / "photos"
    folder.mkdir()
    for name, width in (("b.png", 20), ("a.jpg", 30), ("notes.txt", 0)):
        data = encode(gradient(width, 10), "PNG") if width else b"not an image"
        (folder / name).write_bytes(data)
    empty = tmp_path / "empty"
    empty.mkdir()

    code, out, err = await run(
        "predict", str(folder), str(empty), "--annotate", str(tmp_path / "drawn"),
        "--target", f"127.0.0.1:{server.port}",
    )  # fmt: skip

    lines = [json.loads(line) for line in out.splitlines()]
    assert [line["file"] for line in lines] == [str(folder / "a.jpg"), str(folder / "b.png")]
    assert [line["faces"][0]["bbox"]["x2"] for line in lines] == [30, 20]
    assert "frame" not in lines[0]
    assert sorted(p.name for p in (tmp_path / "drawn").iterdir()) == ["a.png", "b.png"]
    assert err == f"emotion predict: {empty}: no images in it\n"
    assert code == 1


@pytest.mark.subprocess
async def test_a_bad_file_in_a_streamed_folder_is_named_by_its_file(
    start_server: StartServer, tmp_path: Path
) -> None:
    server = await start_server(SizeModel())
    folder = tmp_path / "frames"
    folder.mkdir()
    (folder / "0.png").write_bytes(encode(gradient(30, 10), "PNG"))
    (folder / "1.png").write_bytes(encode(gradient(30, 10), "PNG"))
    (folder / "2.jpg").write_bytes(b"truncated \xff\xd8\xff")

    code, out, err = await run(
        "predict", "--stream", str(folder), "--target", f"127.0.0.1:{server.port}"
    )

    assert [json.loads(line)["frame"] for line in out.splitlines()] == [0, 1]
    assert err.startswith(f"emotion predict: {folder}: INVALID_ARGUMENT: {folder / '2.jpg'}: ")
    assert "image 2" not in err
    assert code == 1


@pytest.mark.subprocess
async def test_max_image_size_raises_what_predict_sends(
    start_server: StartServer, tmp_path: Path
) -> None:
    server = await start_server(SizeModel())
    photo = tmp_path / "photo.png"
    photo.write_bytes(encode(gradient(40, 10), "PNG"))
    target = ("--target", f"127.0.0.1:{server.port}")

    small_code, _, small_err = await run("predict", str(photo), "--max-image-size", "100", *target)
    code, out, _ = await run("predict", str(photo), "--max-image-size", "1MiB", *target)

    assert small_code == 1
    assert "this client sends at most 100" in small_err
    assert small_err.rstrip().endswith("see --max-image-size")
    assert (code, json.loads(out)["file"]) == (0, str(photo))


@pytest.mark.subprocess
async def test_tls_to_a_plaintext_server_says_the_server_is_not_serving_tls(
    server: Server,
) -> None:
    photo = TESTS / "fixtures" / "astronaut.jpg"

    code, out, err = await run(
        "predict", str(photo), "--tls", "--target", f"127.0.0.1:{server.port}"
    )

    assert (code, out) == (1, "")
    assert err.startswith(f"emotion predict: cannot reach 127.0.0.1:{server.port} over TLS (")
    assert "is the server serving TLS?" in err
    assert "Traceback" not in err


@pytest.mark.subprocess
async def test_stream_stops_at_a_connection_failure_with_one_line(
    server: Server, tmp_path: Path
) -> None:
    clip = animation(tmp_path / "clip.gif", [40, 80], "GIF")
    target = f"127.0.0.1:{server.port}"

    code, out, err = await run(
        "predict", "--stream", "--tls", str(clip), str(clip), "--target", target
    )

    assert (code, out) == (1, "")
    assert err.splitlines() == [
        f"emotion predict: cannot reach {target} over TLS (WRONG_VERSION_NUMBER): is the server "
        "serving TLS? Without --tls-cert it serves plaintext: leave out --tls"
    ]


@pytest.mark.subprocess
async def test_predict_prints_each_faces_confidence_and_landmarks_and_takes_the_options(
    start_server: StartServer,
) -> None:
    server = await start_server(FerModel())
    group = TESTS / "fixtures" / "group.jpg"
    target = ("--target", f"127.0.0.1:{server.port}")

    code, out, err = await run("predict", str(group), *target)
    one_code, one_out, _ = await run("predict", str(group), "--max-faces", "1", *target)
    sure_code, sure_out, _ = await run("predict", str(group), "--min-confidence", "0.93", *target)
    refused_code, _, refused_err = await run("predict", str(group), "--min-confidence", "2")

    assert (code, err, one_code, sure_code) == (0, "", 0, 0)
    every = json.loads(out)
    assert every["model"] == f"fer {FerModel.version}"
    faces = every["faces"]
    assert len(faces) == 4
    for face in faces:
        assert list(face) == ["bbox", "confidence", "expression", "landmarks"]
        assert 0.5 <= face["confidence"] <= 1
        assert list(face["landmarks"]) == list(LANDMARK_FIELDS)
        x1, y1, x2, y2 = (face["bbox"][k] for k in ("x1", "y1", "x2", "y2"))
        nose_x, nose_y = face["landmarks"]["nose_tip"]
        assert x1 < nose_x < x2
        assert y1 < nose_y < y2
    most_confident = max(faces, key=lambda face: face["confidence"])
    assert json.loads(one_out)["faces"] == [most_confident]
    assert json.loads(sure_out)["faces"] == [f for f in faces if f["confidence"] >= 0.93]
    assert 0 < len(json.loads(sure_out)["faces"]) < 4
    assert refused_code == 2
    assert "--min-confidence" in refused_err
    assert "must be a confidence from 0 to 1, not 2.0" in refused_err
