"""A kit for model authors: serve a model as `emotion serve` does, check that it keeps the contract.

:func:`serve_model` runs the model behind the real server and hands a test a
connected client; :func:`check_model` asks it about images of every kind and
checks each answer against the contract's properties; :class:`Sample` makes
those images from two photographs that ship with emotion. The pytest plugin
that comes with emotion runs the ``async def`` tests of modules that import
from here (``emotion.pytest_plugin``).
"""

from emotion.testing.conformance import PROPERTIES, ContractBroken, check_model
from emotion.testing.samples import SAMPLES, Sample
from emotion.testing.serve import serve_model

__all__ = ["PROPERTIES", "SAMPLES", "ContractBroken", "Sample", "check_model", "serve_model"]
