"""A kit for model authors: serve a model as `emotion serve` does, and images to test it with.

:func:`serve_model` runs the model behind the real server and hands a test a
connected client; :class:`Sample` makes test images from two photographs
that ship with emotion.
"""

from emotion.testing.samples import SAMPLES, Sample
from emotion.testing.serve import serve_model

__all__ = ["SAMPLES", "Sample", "serve_model"]
