"""decode_image: what the model receives, and the reason given for every refusal."""

from __future__ import annotations

import io

import pytest
from conftest import encode, gradient
from PIL import Image

from emotion.decode import InvalidImage, decode, decode_image, sniff


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
    data = encode(gradient(64, 48).convert(mode), image_format)

    image = decode_image(data)

    assert image.size == (64, 48)
    assert image.format == image_format or image.format is None
    image.getpixel((63, 47))  # fully loaded, not lazily


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

    with pytest.raises(InvalidImage, match="too large to decode"):
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
