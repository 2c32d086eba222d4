"""decode and decode_image: what the model receives, and the reason given for every refusal."""

from __future__ import annotations

import io
import struct
import time
import zlib

import hypothesis
import hypothesis.strategies as st
import pytest
from conftest import encode, gradient
from PIL import Image, ImageChops, ImageStat
from support.fuzzing import examples

from emotion.contract import BBox, Landmarks, Point, Response, Result
from emotion.decode import Decoded, InvalidImage, decode, decode_image, sniff, to_full_size

LOSSY = {"JPEG", "WEBP"}


def _mean_difference(a: Image.Image, b: Image.Image) -> float:
    """The largest per-channel mean of |a - b|, both seen in RGB."""
    return max(ImageStat.Stat(ImageChops.difference(a.convert("RGB"), b.convert("RGB"))).mean)


@pytest.mark.parametrize(
    ("mode", "image_format"),
    [
        ("RGB", "JPEG"),
        ("L", "JPEG"),
        ("CMYK", "JPEG"),
        ("RGBA", "PNG"),
        ("P", "PNG"),
        ("I;16", "PNG"),
        ("LA", "PNG"),
        ("RGB", "WEBP"),
        ("RGB", "BMP"),
        ("P", "GIF"),
        ("RGB", "TIFF"),
    ],
)
def test_allowed_formats_decode_to_full_size_in_their_own_mode(
    mode: str, image_format: str
) -> None:
    original = gradient(64, 48).convert(mode)
    data = encode(original, image_format)

    image = decode_image(data)

    assert sniff(data) == image_format
    assert image.size == (64, 48)
    assert image.mode == mode
    # The pixels themselves are there: exactly for lossless formats, closely for lossy ones.
    assert _mean_difference(image, original) <= (8 if image_format in LOSSY else 0)


def test_only_the_first_frame_of_an_animation_is_used() -> None:
    frames = [Image.new("RGB", (32, 32), color) for color in ("red", "blue", "green")]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:])

    image = decode_image(data)

    assert image.convert("RGB").getpixel((0, 0)) == (255, 0, 0)


@pytest.mark.parametrize(
    ("orientation", "size"),
    [(1, (40, 30)), (3, (40, 30)), (6, (30, 40)), (8, (30, 40))],
)
def test_exif_orientation_turns_the_image_upright(orientation: int, size: tuple[int, int]) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation

    image = decode_image(encode(gradient(40, 30), "JPEG", exif=exif))

    assert image.size == size


def test_decompression_bomb_is_refused_without_decoding() -> None:
    data = encode(Image.new("1", (20_000, 20_000)), "PNG")

    with pytest.raises(InvalidImage, match=r"declares 400\.0 megapixels"):
        decode_image(data)


@pytest.mark.parametrize(
    ("head", "name"),
    [
        (b"\xff\xd8\xff\xe0", "JPEG"),
        (b"\x89PNG\r\n\x1a\n", "PNG"),
        (b"RIFF\x00\x00\x00\x00WEBPVP8 ", "WEBP"),
        (b"GIF89a", "GIF"),
        (b"\x00\x00\x00\x1cftypavif", "AVIF"),
        (b"%PDF-1.4", "PDF"),
        (b"plain text", None),
    ],
)
def test_sniff_names_formats_by_their_signature(head: bytes, name: str | None) -> None:
    assert sniff(head) == name


def test_a_large_jpeg_is_decoded_at_the_smallest_scale_that_keeps_min_size() -> None:
    data = encode(gradient(4000, 3000), "JPEG")

    full = decode(data)
    at_1000 = decode(data, min_size=1000)
    at_1024 = decode(data, min_size=1024)
    at_128 = decode(data, min_size=128)

    assert (full.image.size, full.scale_x) == ((4000, 3000), 1.0)
    assert (at_1000.image.size, at_1000.scale_x, at_1000.scale_y) == ((1000, 750), 4.0, 4.0)
    assert (at_1024.image.size, at_1024.scale_x) == ((2000, 1500), 2.0)
    assert (at_128.image.size, at_128.scale_x) == ((500, 375), 8.0)
    assert at_128.size == full.size == (4000, 3000)


def test_reduced_decode_keeps_exif_orientation_and_scales_per_displayed_axis() -> None:
    exif = Image.Exif()
    exif[0x0112] = 8
    data = encode(gradient(4001, 2999), "JPEG", exif=exif)

    decoded = decode(data, min_size=500)

    assert decoded.size == (2999, 4001)
    assert decoded.image.size == (375, 501)
    assert (decoded.scale_x, decoded.scale_y) == (2999 / 375, 4001 / 501)


@pytest.mark.parametrize(
    ("image_format", "size"),
    [("PNG", (2000, 1500)), ("WEBP", (2000, 1500)), ("JPEG", (900, 600))],
)
def test_only_jpegs_larger_than_min_size_are_reduced(
    image_format: str, size: tuple[int, int]
) -> None:
    decoded = decode(
        encode(gradient(*size), image_format), min_size=128 if image_format != "JPEG" else 900
    )

    assert decoded.image.size == size
    assert (decoded.scale_x, decoded.scale_y) == (1.0, 1.0)


def test_phone_camera_jpegs_with_preview_frames_mpo_are_accepted() -> None:
    first, preview = gradient(64, 48), gradient(32, 24)
    data = encode(first, "MPO", save_all=True, append_images=[preview])

    image = decode_image(data)

    assert Image.open(io.BytesIO(data)).format == "MPO"
    assert image.size == (64, 48)


def _png_header(width: int, height: int) -> bytes:
    """A PNG whose header declares a size its few bytes of data could never fill."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
    )


@pytest.mark.parametrize(
    ("data", "size"),
    [
        (_png_header(100_000, 100_000), "declares 10000.0"),
        (_png_header(10_000, 6_000), "is 10000x6000 (60.0"),
        (encode(Image.new("1", (8_000, 8_000)), "GIF"), "is 8000x8000 (64.0"),
    ],
    ids=["PNG 10 gigapixels", "PNG 60 megapixels", "GIF 64 megapixels"],
)
def test_images_declaring_more_pixels_than_the_limit_are_refused_before_decoding(
    data: bytes, size: str
) -> None:
    with pytest.raises(InvalidImage) as caught:
        decode(data)

    assert str(caught.value).startswith(f"request.image {size}")
    assert str(caught.value).endswith("; this server decodes at most 50 megapixels")


def test_the_pixel_limit_is_configurable() -> None:
    data = encode(gradient(400, 300), "JPEG")

    assert decode(data, max_pixels=120_000).image.size == (400, 300)
    with pytest.raises(InvalidImage, match=r"at most 0\.119999 megapixels"):
        decode(data, max_pixels=119_999)


FUZZ_SEEDS = {
    name: encode(gradient(48, 32), name) for name in ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
}


@hypothesis.given(st.binary(max_size=2048))
@hypothesis.settings(max_examples=examples(300))
def test_fuzz_random_bytes_are_refused_with_invalid_image_only(data: bytes) -> None:
    message = "decoded"
    try:
        decode(data)
    except InvalidImage as exc:
        message = str(exc)

    assert message == "decoded" or message.startswith("request.image ")


@hypothesis.given(
    st.sampled_from(sorted(FUZZ_SEEDS)),
    st.data(),
)
@hypothesis.settings(max_examples=examples(300))
def test_fuzz_damaged_images_decode_or_are_refused_never_crash(
    name: str, data: st.DataObject
) -> None:
    original = bytearray(FUZZ_SEEDS[name])
    cut = data.draw(st.integers(0, len(original)), label="keep this many bytes")
    damaged = original[:cut]
    for _ in range(data.draw(st.integers(0, 8), label="bytes to change")):
        if damaged:
            where = data.draw(st.integers(0, len(damaged) - 1))
            damaged[where] = data.draw(st.integers(0, 255))
    try:
        image = decode(bytes(damaged)).image
    except InvalidImage:
        return
    assert image.width * image.height <= 50_000_000


@hypothesis.given(
    st.sampled_from(["PNG", "GIF", "BMP", "TIFF", "WEBP", "JPEG"]),
    st.integers(1, 65535),
    st.integers(1, 65535),
)
@hypothesis.settings(max_examples=examples(100))
def test_fuzz_headers_declaring_absurd_sizes_are_refused_quickly(
    name: str, width: int, height: int
) -> None:
    data = _declare_size(FUZZ_SEEDS[name], name, width, height)
    started = time.perf_counter()
    try:
        image = decode(data).image
    except InvalidImage:
        pass
    else:
        assert image.width * image.height <= 50_000_000
    assert time.perf_counter() - started < 5


def _declare_size(data: bytes, name: str, width: int, height: int) -> bytes:
    """Rewrite the width and height a file's header declares, leaving its pixel data alone."""
    out = bytearray(data)
    if name == "PNG":
        return _png_header(width, height)
    if name == "GIF":
        out[6:10] = struct.pack("<HH", width, height)
        at = out.find(b"\x2c")  # the first image descriptor
        if at > 0:
            out[at + 5 : at + 9] = struct.pack("<HH", width, height)
    elif name == "BMP":
        out[18:26] = struct.pack("<ii", width, height)
    elif name == "JPEG":
        at = out.find(b"\xff\xc0")
        if at > 0:
            out[at + 5 : at + 9] = struct.pack(">HH", height, width)
    elif name == "WEBP":
        at = out.find(b"VP8 ")
        if at > 0:
            out[at + 14 : at + 18] = struct.pack("<HH", width & 0x3FFF, height & 0x3FFF)
    elif name == "TIFF":
        return _tiff_declaring(out, width, height)
    return bytes(out)


@pytest.mark.parametrize(
    ("longest", "decoded"),
    [
        (100, 100),  # at min_size: nothing to spare
        (150, 150),  # half would be 75
        (198, 198),  # half would be 99
        (199, 100),  # half is 100 (libjpeg rounds up): enough
        (200, 100),
        (396, 198),  # a quarter would be 99
        (397, 100),  # a quarter is 99.25, rounded up to 100: enough
        (401, 101),
        (799, 100),
        (1000, 125),  # 1/8 is the smallest scale
    ],
)
@pytest.mark.parametrize("portrait", [False, True])
def test_a_jpeg_is_decoded_at_the_smallest_scale_whose_longer_side_reaches_min_size(
    longest: int, decoded: int, portrait: bool
) -> None:
    size = (60, longest) if portrait else (longest, 60)
    result = decode(encode(gradient(*size), "JPEG"), min_size=100)

    assert max(result.image.size) == decoded
    assert result.size == size
    assert result.scale_x * result.image.width == pytest.approx(size[0])
    assert result.scale_y * result.image.height == pytest.approx(size[1])


def _tiff_declaring(tiff: bytearray, width: int, height: int) -> bytes:
    """Set the ImageWidth and ImageLength tags of a TIFF's first directory, as LONG values."""
    order = "<" if tiff[:2] == b"II" else ">"
    (directory,) = struct.unpack_from(f"{order}I", tiff, 4)
    (entries,) = struct.unpack_from(f"{order}H", tiff, directory)
    sizes = {256: width, 257: height}  # ImageWidth, ImageLength
    found = set()
    for entry in range(directory + 2, directory + 2 + 12 * entries, 12):
        (tag,) = struct.unpack_from(f"{order}H", tiff, entry)
        if tag in sizes:
            struct.pack_into(f"{order}HHII", tiff, entry, tag, 4, 1, sizes[tag])  # 4: LONG
            found.add(tag)
    assert found == set(sizes), "the TIFF seed has no size tags to rewrite"
    return bytes(tiff)


@pytest.mark.parametrize("name", sorted(FUZZ_SEEDS))
def test_the_fuzzed_headers_declare_the_drawn_size(name: str) -> None:
    declared = _declare_size(FUZZ_SEEDS[name], name, 300, 200)

    with Image.open(io.BytesIO(declared)) as image:
        assert image.size == (300, 200)


def test_landmarks_found_in_a_reduced_decode_are_scaled_to_the_full_image_like_boxes() -> None:
    reduced = Decoded(Image.new("L", (500, 375)), size=(2000, 1500), scale_x=4.0, scale_y=4.0)
    face = Result(
        bbox=BBox(x1=10, y1=20, x2=30, y2=40),
        landmarks=Landmarks(nose_tip=Point(x=20, y=30), left_ear=Point(x=501, y=376)),
    )
    response = Response(response=[face])

    to_full_size(response, reduced)

    assert face.bbox == BBox(x1=40, y1=80, x2=120, y2=160)
    assert face.landmarks == Landmarks(
        nose_tip=Point(x=80, y=120),
        left_ear=Point(x=2000, y=1500),  # kept within the image, as box edges are
    )
    assert face.landmarks.right_eye is None  # a point the model left unset stays unset
