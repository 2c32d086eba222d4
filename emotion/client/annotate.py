"""Draw a Response onto its image: a box per face, its landmarks, its top expression and confidence.

Readable at any size.
"""

from __future__ import annotations

from PIL import Image, ImageDraw, ImageFont

from emotion.contract import EXPRESSION_FIELDS, LANDMARK_FIELDS, Response, Result

#: One colour per expression, distinct for the common colour blindnesses
#: (Okabe-Ito), so the label is not the only cue.
COLOURS = {
    "neutral": (153, 153, 153),
    "anger": (213, 94, 0),
    "disgust": (0, 158, 115),
    "fear": (204, 121, 167),
    "happiness": (240, 228, 66),
    "sadness": (0, 114, 178),
    "surprise": (230, 159, 0),
}


#: One colour per track in a tracked stream, so a person keeps theirs from
#: frame to frame whatever they express; ids past the end wrap around.
TRACK_COLOURS = (
    (230, 159, 0),
    (86, 180, 233),
    (0, 158, 115),
    (240, 228, 66),
    (0, 114, 178),
    (213, 94, 0),
    (204, 121, 167),
    (255, 255, 255),
)


def top_expression(scores: dict[str, float]) -> tuple[str, float]:
    name = max(EXPRESSION_FIELDS, key=lambda field: scores.get(field, 0.0))
    return name, scores.get(name, 0.0)


def label(result: Result, name: str, score: float) -> str:
    """A face's label: its track, its top expression, and how sure the detector is of the face."""
    track = "" if result.track_id is None else f"#{result.track_id} "
    if result.confidence is None:
        return f"{track}{name} {score:.0%}"
    return f"{track}{name} {score:.0%}, face {result.confidence:.0%}"


def annotate(image: Image.Image, response: Response) -> Image.Image:
    """A copy of ``image`` (upright, as the boxes assume) with each face boxed and labelled.

    Each landmark the model found is a dot in the face's colour, ringed in
    black or white so it shows on skin of any tone. A tracked face is drawn
    in its track's colour, labelled with its id and its smoothed expression.

    Line width and text size follow the image's size, with a floor, so labels
    stay legible on thumbnails and are not lost on 12-megapixel photos.
    """
    canvas = image.convert("RGB")
    draw = ImageDraw.Draw(canvas)
    longer = max(canvas.size)
    line = max(2, round(longer / 300))
    pad = max(2, line)
    fonts: dict[int, ImageFont.FreeTypeFont | ImageFont.ImageFont] = {}
    for result in response.response:
        if result.bbox is None:
            continue
        box = result.bbox
        # As large as the photo warrants, but no wider than suits the face,
        # so neighbours' labels in a group photo do not pile up; never tiny.
        size = max(12, round(min(longer / 45, (box.x2 - box.x1) / 5)))
        font = fonts.setdefault(size, ImageFont.load_default(size=size))
        expression = result.smoothed_expression or result.expression
        scores = (
            {}
            if expression is None
            else {field: getattr(expression, field) for field in EXPRESSION_FIELDS}
        )
        name, score = top_expression(scores)
        colour = COLOURS[name] if result.track_id is None else track_colour(result.track_id)
        draw.rectangle((box.x1, box.y1, box.x2, box.y2), outline=colour, width=line)
        _dots(draw, result, colour, radius=line + 1)
        text = label(result, name, score)
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        width, height = right - left + 2 * pad, bottom - top + 2 * pad
        # Above the box if there is room, else just inside its top edge.
        y = box.y1 - height if box.y1 - height >= 0 else box.y1
        x = min(max(0.0, box.x1), max(0.0, canvas.width - width))
        draw.rectangle((x, y, x + width, y + height), fill=colour)
        draw.text((x + pad - left, y + pad - top), text, fill=_ink(colour), font=font)
    return canvas


def track_colour(track_id: int) -> tuple[int, int, int]:
    return TRACK_COLOURS[(track_id - 1) % len(TRACK_COLOURS)]


def _dots(
    draw: ImageDraw.ImageDraw, result: Result, colour: tuple[int, int, int], radius: int
) -> None:
    if result.landmarks is None:
        return
    for name in LANDMARK_FIELDS:
        point = getattr(result.landmarks, name)
        if point is not None:
            corners = (point.x - radius, point.y - radius, point.x + radius, point.y + radius)
            draw.ellipse(corners, fill=colour, outline=_ink(colour))


def _ink(background: tuple[int, int, int]) -> tuple[int, int, int]:
    """Black or white, whichever reads better on ``background``."""
    red, green, blue = background
    return (0, 0, 0) if 0.299 * red + 0.587 * green + 0.114 * blue > 140 else (255, 255, 255)
