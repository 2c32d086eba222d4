"""What every image goes through, in a thread or in an inference process alike.

Decode to an upright image, run the model, put its boxes back in the full
image's pixels, write the answer for the wire. Both backends call these; only
how they time and report the steps differs.
"""

from __future__ import annotations

from emotion.contract import Response
from emotion.decode import Decoded, decode, to_full_size
from emotion.model import Model, encode_response, run_sample


def decode_for(model: Model, data: bytes, max_pixels: int) -> Decoded:
    """``data`` decoded as ``model`` wants it; raises InvalidImage saying why not."""
    return decode(data, min_size=model.min_size, max_pixels=max_pixels)


def infer(model: Model, decoded: Decoded) -> Response:
    """The model's answer for ``decoded``; raises ModelFailure."""
    return run_sample(model, decoded.image)


def written(model: Model, response: Response, decoded: Decoded) -> bytes:
    """``response`` in the full image's pixels, written for the wire; raises ModelFailure."""
    to_full_size(response, decoded)
    return encode_response(response, model)
