"""Turn the bytes of a Request into an upright Pillow image, or say precisely why not."""

from __future__ import annotations

import io

from PIL import Image, ImageOps, UnidentifiedImageError

#: Pillow format names the server decodes. MPO is how Pillow names the JPEGs
#: many phone cameras write (a JPEG with extra preview frames).
ALLOWED_FORMATS = frozenset({"JPEG", "MPO", "PNG", "WEBP", "BMP", "GIF", "TIFF"})
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


def decode_image(data: bytes) -> Image.Image:
    """Decode ``data`` fully and apply its EXIF orientation.

    Raises InvalidImage for every input that is not a complete image in an
    allowed format; the message is safe to send back to the client.
    """
    if not data:
        raise InvalidImage("request.image is empty: send the bytes of an image file")
    try:
        image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise _unidentified(data) from None
    except Image.DecompressionBombError as exc:
        raise InvalidImage(f"request.image is too large to decode: {exc}") from None
    except Exception as exc:
        # Pillow's plugins raise OSError, SyntaxError, ValueError, struct.error
        # and more on damaged headers; all of them mean the same to a client.
        raise _damaged(sniff(data), exc) from None

    if image.format not in ALLOWED_FORMATS:
        raise InvalidImage(
            f"request.image is {image.format}, which is not supported; send {SUPPORTED}"
        )
    try:
        image.load()
    except Image.DecompressionBombError as exc:
        raise InvalidImage(f"request.image is too large to decode: {exc}") from None
    except Exception as exc:
        raise _damaged(image.format, exc) from None
    return _upright(image)


def _upright(image: Image.Image) -> Image.Image:
    try:
        return ImageOps.exif_transpose(image)
    except Exception:
        # Unreadable EXIF: show the pixels as stored, as browsers do.
        return image


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
