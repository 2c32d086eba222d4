"""`emotion predict --stream` and `--annotate`, and the frames they read."""

from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path

import pytest
from conftest import EMOTION, TESTS, StartServer, encode, gradient, subprocess_env
from PIL import Image, ImageChops
from sample_models import SizeModel

from emotion import Client
from emotion.annotate import annotate
from emotion.contract import BBox, Expression, Response, Result
from emotion.predict import frames


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


async def test_predict_stream_prints_one_line_per_frame_in_order(
    start_server: StartServer, tmp_path: Path
) -> None:
    server = await start_server(SizeModel())
    folder = tmp_path / "frames"
    folder.mkdir()
    widths = [90, 30, 60, 120, 45]
    for index, width in enumerate(widths):
        (folder / f"{index:03d}.png").write_bytes(encode(gradient(width, 20), "PNG"))

    code, out, err = await run(
        "predict", "--stream", str(folder), "--target", f"127.0.0.1:{server.port}"
    )

    lines = [json.loads(line) for line in out.splitlines()]
    assert (code, err) == (0, "")
    assert [line["frame"] for line in lines] == [0, 1, 2, 3, 4]
    assert [line["faces"][0]["bbox"]["x2"] for line in lines] == widths


async def test_client_stream_takes_an_async_feed(start_server: StartServer) -> None:
    server = await start_server(SizeModel())

    async def camera() -> object:
        for width in (10, 20, 30):
            await asyncio.sleep(0.01)
            yield encode(gradient(width, 10), "PNG")

    async with Client(f"127.0.0.1:{server.port}", timeout=30) as client:
        answers = [a async for a in client.stream(camera())]  # type: ignore[arg-type]

    assert [a.response[0].bbox.x2 for a in answers if a.response[0].bbox] == [10, 20, 30]


async def test_the_client_refuses_an_oversized_image_before_sending_it(
    start_server: StartServer,
) -> None:
    server = await start_server()

    async with Client(f"127.0.0.1:{server.port}", max_image_size=1000) as client:
        with pytest.raises(ValueError, match="image is 2000 bytes; the limit is 1000"):
            await client.predict(bytes(2000))


def test_annotation_boxes_each_face_and_labels_its_top_expression() -> None:
    photo = Image.open(TESTS / "fixtures" / "astronaut.jpg").convert("RGB")
    face = Result(
        bbox=BBox(x1=175, y1=75, x2=275, y2=175),
        expression=Expression(happiness=0.93, neutral=0.07),
    )

    drawn = annotate(photo, Response(response=[face]))

    assert drawn.size == photo.size
    changed = ImageChops.difference(drawn, photo).getbbox()
    assert changed is not None
    left, top, right, bottom = changed
    assert left <= 175
    assert right >= 275
    assert bottom >= 175
    assert top < 75  # the label sits above the box
    # Outside the face and its label, nothing was touched.
    assert (
        ImageChops.difference(
            drawn.crop((300, 300, 512, 512)), photo.crop((300, 300, 512, 512))
        ).getbbox()
        is None
    )


@pytest.mark.parametrize("size", [(96, 96), (4000, 3000)])
def test_labels_grow_with_the_image_but_stay_readable_on_small_ones(size: tuple[int, int]) -> None:
    photo = Image.new("RGB", size, "white")
    w, h = size
    face = Result(
        bbox=BBox(x1=w * 0.3, y1=h * 0.4, x2=w * 0.7, y2=h * 0.9),
        expression=Expression(surprise=1.0),
    )

    drawn = annotate(photo, Response(response=[face]))

    label = ImageChops.difference(drawn, photo).crop((0, 0, w, int(h * 0.4))).getbbox()
    assert label is not None
    height = label[3] - label[1]
    assert height >= 12  # legible on a thumbnail
    assert height >= h / 50  # and not lost on a large photo


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


async def test_client_stream_raises_what_the_images_raised_after_the_answers_so_far(
    start_server: StartServer,
) -> None:
    server = await start_server(SizeModel())

    def frames_then_failure() -> object:
        yield encode(gradient(10, 10), "PNG")
        yield encode(gradient(20, 10), "PNG")
        raise OSError("the camera went away")

    answers: list[Response] = []

    async def collect(client: Client) -> None:
        async for answer in client.stream(frames_then_failure()):  # type: ignore[arg-type]
            answers.append(answer)

    async with Client(f"127.0.0.1:{server.port}", timeout=10) as client:
        with pytest.raises(OSError, match="the camera went away"):
            await collect(client)

    assert len(answers) == 2


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
    assert [json.loads(line)["frame"] for line in stream_out.splitlines()] == [0]
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
