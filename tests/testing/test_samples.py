"""emotion.testing.Sample: the images it makes are what it says, as the server decodes them."""

from __future__ import annotations

import io

import hypothesis
import pytest
from conftest import TESTS
from hypothesis import strategies as st
from PIL import Image, ImageChops
from support.fuzzing import examples

from emotion.decode import ALLOWED_FORMATS, decode
from emotion.testing import SAMPLES, Sample
from emotion.testing.samples import FORMATS, PHOTOS, samples

#: Pillow opens a 16-bit grayscale PNG as I;16 or as I, by version.
SIXTEEN_BIT = {"I;16", "I"}


def modes_match(decoded: str, sample: Sample) -> bool:
    return decoded in SIXTEEN_BIT if sample.mode == "I;16" else decoded == sample.mode


def test_the_photographs_as_shipped_are_the_test_fixtures_byte_for_byte() -> None:
    # tests/fixtures/README.md says where they come from, for both copies.
    for photo, file in PHOTOS.items():
        assert Sample(photo).encode() == (TESTS / "fixtures" / file).read_bytes()  # type: ignore[arg-type]


@pytest.mark.parametrize("sample", SAMPLES, ids=str)
def test_each_fixed_sample_decodes_upright_in_its_mode_and_format(sample: Sample) -> None:
    decoded = decode(sample.encode())

    assert decoded.image.format == sample.format or decoded.image.format is None
    assert modes_match(decoded.image.mode, sample)
    assert decoded.size == decoded.image.size == sample.shown_size


@pytest.mark.parametrize("mode", FORMATS)
def test_every_mode_is_stored_as_that_mode_by_each_of_its_formats(mode: str) -> None:
    for image_format in FORMATS[mode]:
        sample = Sample("group", mode=mode, format=image_format, size=40)

        image = Image.open(io.BytesIO(sample.encode()))

        assert image.format == image_format
        assert image_format in ALLOWED_FORMATS
        assert modes_match(image.mode, sample), f"{sample}: {image.mode}"


@pytest.mark.parametrize("orientation", range(1, 9))
def test_each_exif_orientation_shows_the_upright_image(orientation: int) -> None:
    sample = Sample("group", format="PNG", size=66, orientation=orientation)

    decoded = decode(sample.encode())

    assert ImageChops.difference(decoded.image, sample.image()).getbbox() is None


@hypothesis.settings(max_examples=examples(20))
@hypothesis.given(sample=samples(largest=200))
def test_a_drawn_file_turned_by_exif_shows_the_same_pixels_as_the_upright_image(
    sample: Sample,
) -> None:
    lossless = sample.format in {"PNG", "TIFF", "BMP", "GIF"}
    hypothesis.assume(lossless)

    decoded = decode(sample.encode())

    assert decoded.image.size == sample.shown_size
    upright = sample.image()
    difference = ImageChops.difference(decoded.image.convert("RGB"), upright.convert("RGB"))
    assert difference.getbbox() is None


@hypothesis.settings(max_examples=examples(10))
@hypothesis.given(size=st.integers(1, 64), photo=st.sampled_from(tuple(PHOTOS)))
@hypothesis.example(size=1, photo="group")  # 1x0.45: a side rounds to 0
def test_a_size_is_the_longer_side_and_keeps_the_aspect_ratio(size: int, photo: str) -> None:
    width, height = Sample(photo, size=size).shown_size  # type: ignore[arg-type]
    full_width, full_height = Sample(photo).shown_size  # type: ignore[arg-type]

    exact = size * min(full_width, full_height) / max(full_width, full_height)
    assert max(width, height) == size
    assert min(width, height) >= 1
    assert (width >= height) == (full_width >= full_height)
    assert abs(min(width, height) - exact) <= 0.5 or (exact < 1 and min(width, height) == 1)


def test_a_sample_describes_itself_in_words() -> None:
    assert str(Sample("group", mode="I;16", size=100, orientation=6)) == (
        "the group, 16-bit grayscale (I;16) PNG, 100x45, stored turned with EXIF orientation 6"
    )
    assert (
        repr(Sample("portrait", mode="L", format="JPEG"))
        == "Sample('portrait', mode='L', format='JPEG')"
    )
    assert repr(Sample("group", format="JPEG", orientation=3)) == "Sample('group', orientation=3)"


@hypothesis.settings(max_examples=examples(20))
@hypothesis.given(sample=samples())
def test_a_samples_repr_is_the_call_that_makes_it(sample: Sample) -> None:
    assert eval(repr(sample), {"Sample": Sample}) == sample


@pytest.mark.parametrize(
    ("fields", "error"),
    [
        ({"photo": "selfie"}, "photo 'selfie' is not one of portrait, group"),
        ({"mode": "YCbCr"}, "mode 'YCbCr' is not one of"),
        ({"mode": "CMYK", "format": "PNG"}, "PNG does not store mode CMYK; use JPEG or TIFF"),
        ({"size": 0}, "size 0 is not a length in pixels"),
        ({"orientation": 9}, "orientation 9 is not an EXIF orientation"),
        ({"format": "BMP", "orientation": 6}, "BMP carries no EXIF orientation"),
    ],
)
def test_a_sample_that_cannot_be_made_is_refused_when_written(
    fields: dict[str, object], error: str
) -> None:
    with pytest.raises(ValueError, match=error.replace("(", r"\(")):
        Sample(**fields)  # type: ignore[arg-type]
