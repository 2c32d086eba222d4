"""Test images for a model's tests: two photographs that ship with emotion, and recipes from them.

Only the two photographs are stored (``data/``, where their README says where
they come from); every other image is made from them when asked: another
mode, another file format, another size, or stored turned with an EXIF
orientation that the server undoes. A :class:`Sample` is the recipe, so a
test or a failure can name the exact image and anyone can make it again.
"""

from __future__ import annotations

import functools
import io
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING, Literal

from PIL import Image

if TYPE_CHECKING:
    from hypothesis.strategies import SearchStrategy

Photo = Literal["portrait", "group"]

#: Each photograph, by the name a Sample gives it: its file in ``data/``.
PHOTOS: dict[str, str] = {"portrait": "astronaut.jpg", "group": "group.jpg"}

#: Each mode a Sample can have, and the formats that store it as that mode
#: (Pillow opens the file in the same mode), the first one preferred.
FORMATS: dict[str, tuple[str, ...]] = {
    "RGB": ("JPEG", "PNG", "WEBP", "BMP", "TIFF"),
    "L": ("PNG", "JPEG", "BMP", "TIFF"),
    "LA": ("PNG", "TIFF"),
    "RGBA": ("PNG", "WEBP", "TIFF"),
    "P": ("PNG", "GIF", "BMP", "TIFF"),
    "CMYK": ("JPEG", "TIFF"),
    "I;16": ("PNG", "TIFF"),
    "1": ("PNG", "BMP", "TIFF"),
}
#: What each mode is, in words.
MODE_NAMES = {
    "RGB": "RGB",
    "L": "grayscale (L)",
    "LA": "grayscale with alpha (LA)",
    "RGBA": "RGBA",
    "P": "palette (P)",
    "CMYK": "CMYK",
    "I;16": "16-bit grayscale (I;16)",
    "1": "black and white (1)",
}
#: The formats whose files carry an EXIF orientation.
EXIF_FORMATS = frozenset({"JPEG", "PNG", "WEBP", "TIFF"})

# How to store an upright image so that EXIF orientation N shows it upright:
# the inverse of the turn a viewer applies for N.
_STORED_TURNED = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,
}
_ORIENTATION_TAG = 0x0112


@dataclass(frozen=True)
class Sample:
    """How to make one test image from the photographs that ship with emotion.

    ``Sample("portrait").encode()`` is the portrait's file as shipped (a
    512x512 JPEG of one face); ``Sample("group")`` is four faces on a
    1320x600 JPEG. The other fields change it: ``mode`` (any of
    :data:`FORMATS`), ``format`` (a format that stores that mode; the
    mode's first by default), ``size`` (the longer side in pixels; the
    aspect ratio is kept) and ``orientation`` (an EXIF orientation, 1 to 8:
    the file stores the pixels turned, and the server turns them back).
    """

    photo: Photo = "portrait"
    mode: str = "RGB"
    format: str = ""
    size: int | None = None
    orientation: int = 1

    def __post_init__(self) -> None:
        if self.photo not in PHOTOS:
            raise ValueError(f"photo {self.photo!r} is not one of {', '.join(PHOTOS)}")
        if self.mode not in FORMATS:
            raise ValueError(f"mode {self.mode!r} is not one of {', '.join(FORMATS)}")
        if not self.format:
            object.__setattr__(self, "format", FORMATS[self.mode][0])
        if self.format not in FORMATS[self.mode]:
            raise ValueError(
                f"{self.format} does not store mode {self.mode}; "
                f"use {' or '.join(FORMATS[self.mode])}"
            )
        if self.size is not None and self.size < 1:
            raise ValueError(f"size {self.size} is not a length in pixels")
        if self.orientation != 1 and self.orientation not in _STORED_TURNED:
            raise ValueError(f"orientation {self.orientation} is not an EXIF orientation (1-8)")
        if self.orientation != 1 and self.format not in EXIF_FORMATS:
            raise ValueError(f"{self.format} carries no EXIF orientation")

    @property
    def shown_size(self) -> tuple[int, int]:
        """(width, height) of the image as shown, after its EXIF orientation: a box's frame."""
        width, height = _photo(self.photo).size
        if self.size is None:
            return width, height
        scale = self.size / max(width, height)
        return max(1, round(width * scale)), max(1, round(height * scale))

    def image(self) -> Image.Image:
        """The image upright, in its mode: what a model is handed for this file."""
        photo = _photo(self.photo)
        if self.size is not None:
            photo = photo.resize(self.shown_size, Image.Resampling.BILINEAR, reducing_gap=2.0)
        return _in_mode(photo, self.mode)

    def encode(self) -> bytes:
        """The bytes of the image file, as a client sends them."""
        if self == Sample(self.photo):
            return _photo_file(self.photo)
        stored = self.image()
        # Fast settings: check_model makes dozens of these, and their size does not matter.
        params: dict[str, object] = {"quality": 90} if self.format in {"JPEG", "WEBP"} else {}
        if self.format == "PNG":
            params["compress_level"] = 1
        if self.orientation != 1:
            stored = stored.transpose(_STORED_TURNED[self.orientation])
            exif = Image.Exif()
            exif[_ORIENTATION_TAG] = self.orientation
            params["exif"] = exif.tobytes()
        buffer = io.BytesIO()
        stored.save(buffer, self.format, **params)
        return buffer.getvalue()

    def __repr__(self) -> str:
        """The call that makes this Sample, its default fields left out."""
        fields = [repr(self.photo)]
        if self.mode != "RGB":
            fields.append(f"mode={self.mode!r}")
        if self.format != FORMATS[self.mode][0]:
            fields.append(f"format={self.format!r}")
        if self.size is not None:
            fields.append(f"size={self.size}")
        if self.orientation != 1:
            fields.append(f"orientation={self.orientation}")
        return f"Sample({', '.join(fields)})"

    def __str__(self) -> str:
        width, height = self.shown_size
        text = f"the {self.photo}, {MODE_NAMES[self.mode]} {self.format}, {width}x{height}"
        if self.orientation != 1:
            text += f", stored turned with EXIF orientation {self.orientation}"
        return text


#: One image of each kind a model must answer: both photographs, each mode
#: that changes what a model sees, a file stored turned, a tiny and a large
#: image. check_model runs all of them first, whatever it draws after.
SAMPLES: tuple[Sample, ...] = (
    Sample("portrait"),
    Sample("group"),
    Sample("portrait", mode="L"),
    Sample("group", mode="RGBA"),
    Sample("portrait", mode="P"),
    Sample("group", mode="CMYK"),
    Sample("portrait", mode="I;16"),
    Sample("group", orientation=6),
    Sample("group", size=12),
    Sample("group", size=4096),
)


def samples(*, largest: int = 1600) -> SearchStrategy[Sample]:
    """Samples for hypothesis: any photo, mode, format, orientation, size up to ``largest``."""
    from hypothesis import strategies as st

    def in_mode(mode: str) -> SearchStrategy[Sample]:
        formats = st.sampled_from(FORMATS[mode])
        return formats.flatmap(
            lambda image_format: st.builds(
                Sample,
                photo=st.sampled_from(tuple(PHOTOS)),
                mode=st.just(mode),
                format=st.just(image_format),
                size=st.none() | st.integers(1, largest),
                orientation=(st.integers(1, 8) if image_format in EXIF_FORMATS else st.just(1)),
            )
        )

    return st.sampled_from(tuple(FORMATS)).flatmap(in_mode)


@functools.cache
def _photo_file(photo: str) -> bytes:
    return (resources.files("emotion.testing") / "data" / PHOTOS[photo]).read_bytes()


@functools.cache
def _photo(photo: str) -> Image.Image:
    with Image.open(io.BytesIO(_photo_file(photo))) as image:
        return image.convert("RGB")


def _in_mode(image: Image.Image, mode: str) -> Image.Image:
    if mode in {"RGBA", "LA"}:
        # An alpha that varies, so that how a model flattens it matters.
        alpha = Image.linear_gradient("L").resize(image.size).point(lambda v: 96 + v * 5 // 8)
        converted = image.convert(mode)
        converted.putalpha(alpha)
        return converted
    if mode == "P":
        return image.quantize(256, method=Image.Quantize.FASTOCTREE)
    if mode == "I;16":
        # The full 16-bit range, not 8-bit values in a 16-bit image.
        return image.convert("L").convert("I").point(lambda v: v * 257).convert("I;16")
    return image.convert(mode)
