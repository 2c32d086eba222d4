"""What every image goes through, in a thread or in an inference process alike.

Decode to an upright image, run the model, put its boxes back in the full
image's pixels, cut the answer to the request's options, name the model on
it, write it for the wire. Both backends call these; only how they time and
report the steps differs.
"""

from __future__ import annotations

from emotion.contract import Options, Response
from emotion.decode import Decoded, decode, to_full_size
from emotion.model import Model, ModelFailure, apply_options, encode_response, run_sample, stamp


def decode_for(model: Model, data: bytes, max_pixels: int) -> Decoded:
    """``data`` decoded as ``model`` wants it; raises InvalidImage saying why not."""
    return decode(data, min_size=model.min_size, max_pixels=max_pixels)


def infer(model: Model, decoded: Decoded, options: Options | None = None) -> Response:
    """The model's answer for ``decoded``; raises ModelFailure."""
    return run_sample(model, decoded.image, options)


def written(
    model: Model, response: Response, decoded: Decoded, options: Options | None = None
) -> bytes:
    """``response`` in the full image's pixels, cut to ``options``, written; raises ModelFailure.

    Every answer names the model and its version, set here by the server: a
    model cannot leave it out or get it wrong.
    """
    to_full_size(response, decoded)
    try:
        apply_options(response, options)
    except Exception as exc:  # a confidence that is not a number
        raise ModelFailure(
            f"model {model.name} returned a Response that cannot be cut to the request's "
            f"options: {type(exc).__name__}"
        ) from exc
    stamp(response, model)
    return encode_response(response, model)
