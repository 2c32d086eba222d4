"""Benchmark images, made on the fly from the test portraits so nothing large is committed."""

from __future__ import annotations

import io
import random
from pathlib import Path

from PIL import Image

FIXTURES = Path(__file__).resolve().parent.parent / "tests" / "fixtures"


def portrait(name: str = "astronaut.jpg") -> Image.Image:
    return Image.open(FIXTURES / name).convert("RGB")


def group(width: int = 1280, height: int = 853, face_width: int = 100) -> Image.Image:
    """Copies of the two portraits, faces about ``face_width`` pixels wide, on a grey canvas."""
    canvas = Image.new("RGB", (width, height), (110, 120, 130))
    sources = [
        (portrait("astronaut.jpg"), (175, 70, 278, 178)),
        (portrait("grace_hopper.jpg"), (162, 125, 366, 340)),
    ]
    gap, x, y, row, index = 16, 16, 16, 0, 0
    while True:
        source, (x1, y1, x2, y2) = sources[index % 2]
        index += 1
        face = x2 - x1
        cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
        region = (
            max(0, round(cx - face)),
            max(0, round(cy - face)),
            min(source.width, round(cx + face)),
            min(source.height, round(cy + 1.2 * face)),
        )
        scale = face_width / face
        part = source.crop(region)
        part = part.resize((round(part.width * scale), round(part.height * scale)))
        if x + part.width > width - gap:
            x, y, row = gap, y + row + gap, 0
        if y + part.height > height - gap:
            return canvas
        canvas.paste(part, (x, y))
        x += part.width + gap
        row = max(row, part.height)


def scene(width: int, height: int) -> Image.Image:
    """A photo-like picture of the given size: the group, resized, with its detail."""
    return group(1280, round(1280 * height / width)).resize(
        (width, height), Image.Resampling.BICUBIC
    )


def jpeg(image: Image.Image, quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def noise_jpeg(width: int = 1200, height: int = 960) -> bytes:
    """A JPEG of about 1.3 MB: random pixels, which JPEG cannot compress away."""
    pixels = random.Random(0).randbytes(width * height * 3)
    return jpeg(Image.frombytes("RGB", (width, height), pixels), quality=95)


def noisy(image: Image.Image, amount: int) -> Image.Image:
    """Add fine noise, which JPEG cannot compress away: makes files realistically large."""
    noise = Image.effect_noise(image.size, amount).convert("RGB")
    return Image.blend(image, noise, 0.12)


def make_images(quick: bool) -> dict[str, bytes]:
    """The serving benchmark's images for the mock model, by the name its report uses."""
    cases = {
        "small JPEG 320x240": jpeg(noisy(scene(320, 240), 40), 85),
        "medium JPEG 1280x720": jpeg(noisy(scene(1280, 720), 40), 80),
        "large JPEG 4000x3000": jpeg(noisy(scene(4000, 3000), 30), 80),
        "huge JPEG 4000x3000": jpeg(noisy(scene(4000, 3000), 90), 97),
        "PNG 1280x720": png(scene(1280, 720)),
    }
    if quick:
        del cases["PNG 1280x720"]
    return cases
