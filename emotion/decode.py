"""Turn the bytes of a Request into an upright Pillow image, or say precisely why not."""

from __future__ import annotations

import contextlib
import io
import re
from dataclasses import dataclass

from PIL import Image, ImageOps, UnidentifiedImageError

from emotion.config.limits import DEFAULT_MAX_PIXELS
from emotion.contract import LANDMARK_FIELDS, Response

#: The formats a client may send, as Pillow names them (Describe lists them).
IMAGE_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF")
#: Pillow format names the server decodes. MPO is how Pillow names the JPEGs
#: many phone cameras write (a JPEG with extra preview frames).
ALLOWED_FORMATS = frozenset({*IMAGE_FORMATS, "MPO"})
SUPPORTED = "JPEG, PNG, WebP, BMP, GIF or TIFF"

# Signatures of the allowed formats, to tell "damaged JPEG" from "not an image".
_SIGNATURES = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
)
# Formats Pillow cannot open but clients plausibly send, to name them.
_FOREIGN_SIGNATURES = (
    (b"%PDF", "PDF"),
    (b"<svg", "SVG"),
    (b"<?xml", "XML/SVG"),
    (b"\x00\x00\x00\x0cjP  ", "JPEG 2000"),
)


class InvalidImage(ValueError):
    """The request's bytes are not an image the server accepts; the message says why."""


def sniff(data: bytes) -> str | None:
    """The format named by the first bytes of ``data``, if it is one we know."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    if data[4:8] == b"ftyp":
        brand = data[8:12]
        return "AVIF" if brand in (b"avif", b"avis") else "HEIF/HEIC"
    for signature, name in (*_SIGNATURES, *_FOREIGN_SIGNATURES):
        if data.startswith(signature):
            return name
    return None


@dataclass(frozen=True)
class Decoded:
    """An upright image, and how it relates to the full-size image the client sent.

    ``scale_x`` and ``scale_y`` are full-size pixels per decoded pixel: 1 for a
    full decode, up to 8 when a JPEG was decoded at a reduced scale.
    """

    image: Image.Image
    size: tuple[int, int]
    scale_x: float = 1.0
    scale_y: float = 1.0


def to_full_size(response: Response, decoded: Decoded) -> None:
    """Scale the boxes and landmarks found in a reduced decode to the full image, in place."""
    if decoded.scale_x == 1.0 and decoded.scale_y == 1.0:
        return
    width, height = decoded.size
    for result in response.response:
        box = result.bbox
        if box is not None:
            box.x1 = min(box.x1 * decoded.scale_x, width)
            box.x2 = min(box.x2 * decoded.scale_x, width)
            box.y1 = min(box.y1 * decoded.scale_y, height)
            box.y2 = min(box.y2 * decoded.scale_y, height)
        if result.landmarks is None:
            continue
        for name in LANDMARK_FIELDS:
            point = getattr(result.landmarks, name)
            if point is not None:
                point.x = min(point.x * decoded.scale_x, width)
                point.y = min(point.y * decoded.scale_y, height)


def decode(
    data: bytes, *, min_size: int | None = None, max_pixels: int = DEFAULT_MAX_PIXELS
) -> Decoded:
    """Decode ``data`` and apply its EXIF orientation.

    An image whose header declares more than ``max_pixels`` is refused before
    any pixel is decoded: a few kilobytes can declare gigapixels.

    With ``min_size``, a JPEG is decoded at the smallest of the scales 1/2,
    1/4, 1/8 that keeps its longer side at least ``min_size`` pixels (DCT
    scaling: the skipped work is never done). Other formats decode in full.
    Raises InvalidImage, with a message safe to send to the client, for every
    input that is not a complete image in an allowed format.
    """
    if not data:
        raise InvalidImage("request.image is empty: send the bytes of an image file")
    try:
        image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise _unidentified(data) from None
    except Image.DecompressionBombError as exc:
        # Pillow's own guard, for headers past twice its limit: the same verdict.
        raise _too_many_pixels(str(exc), max_pixels) from None
    except Exception as exc:
        # Pillow's plugins raise OSError, SyntaxError, ValueError, struct.error
        # and more on damaged headers; all of them mean the same to a client.
        raise _damaged(sniff(data), exc) from None

    if image.format not in ALLOWED_FORMATS:
        raise InvalidImage(
            f"request.image is {image.format}, which is not supported; send {SUPPORTED}"
        )
    stored_width, stored_height = image.size
    if stored_width * stored_height > max_pixels:
        raise _too_many_pixels((stored_width, stored_height), max_pixels)
    if min_size is not None and image.format in {"JPEG", "MPO"}:
        _reduce_on_decode(image, min_size)
    try:
        image.load()
    except Image.DecompressionBombError as exc:
        raise InvalidImage(f"request.image is too large to decode: {exc}") from None
    except Exception as exc:
        raise _damaged(image.format, exc) from None

    upright = _upright(image)
    # Turned a quarter by its EXIF orientation: by exif_transpose, or, for a
    # TIFF in some Pillow versions (10.x), already by load(). Either way the
    # sides swapped against the header's, whatever scale the decode used.
    width, height = upright.size
    turned = abs(width * stored_width - height * stored_height) < abs(
        width * stored_height - height * stored_width
    )
    width, height = (stored_height, stored_width) if turned else (stored_width, stored_height)
    return Decoded(
        image=upright,
        size=(width, height),
        scale_x=width / upright.width,
        scale_y=height / upright.height,
    )


def decode_image(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode ``data`` in full and turn it upright; see :func:`decode`."""
    return decode(data, max_pixels=max_pixels).image


def _reduce_on_decode(image: Image.Image, min_size: int) -> None:
    width, height = image.size
    longest = max(width, height)
    # libjpeg's scaled sizes round up: 1/s of L pixels is ceil(L / s).
    scale = next((s for s in (8, 4, 2) if -(-longest // s) >= min_size), None)
    if scale is None:
        return
    # Pillow picks the scale from floor(side / requested side) of both sides:
    # asking for floor(side / scale) makes that quotient at least ``scale``.
    image.draft(None, (max(1, width // scale), max(1, height // scale)))


def _upright(image: Image.Image) -> Image.Image:
    # In place: otherwise Pillow copies every upright image, the usual case.
    # Unreadable EXIF: show the pixels as stored, as browsers do.
    with contextlib.suppress(Exception):
        ImageOps.exif_transpose(image, in_place=True)
    return image


def _too_many_pixels(size: tuple[int, int] | str, limit: int) -> InvalidImage:
    """The refusal for an image over the pixel limit, from its size or Pillow's message."""
    most = f"this server decodes at most {limit / 1e6:g} megapixels"
    if isinstance(size, tuple):
        width, height = size
        return InvalidImage(
            f"request.image is {width}x{height} ({width * height / 1e6:.1f} megapixels); {most}"
        )
    # Pillow's own guard says "Image size (N pixels) exceeds limit of ...".
    found = re.search(r"\((\d+) pixels\)", size)
    declared = f"{int(found.group(1)) / 1e6:.1f} megapixels" if found else "too many pixels"
    return InvalidImage(f"request.image declares {declared}; {most}")


def _unidentified(data: bytes) -> InvalidImage:
    known = sniff(data)
    if known is None:
        return InvalidImage(f"request.image ({len(data)} bytes) is not a {SUPPORTED} image")
    if known in {name for _, name in _SIGNATURES} | {"WEBP"}:
        return InvalidImage(f"request.image is a truncated or damaged {known}: header unreadable")
    return InvalidImage(f"request.image is {known}, which is not supported; send {SUPPORTED}")


def _damaged(image_format: str | None, exc: Exception) -> InvalidImage:
    what = image_format or "image"
    reason = str(exc) or type(exc).__name__
    if "truncated" in reason.lower():
        return InvalidImage(f"request.image is a truncated {what}: {reason}")
    return InvalidImage(f"request.image is a damaged {what}: {reason}")
