"""Hides the modules that ``EMOTION_TEST_HIDDEN`` names (comma-separated) from import.

On ``PYTHONPATH``, Python runs this in every process it starts (workers and
inference processes included), so a test sees what a program sees where
those packages are not installed, without uninstalling them.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from importlib.machinery import ModuleSpec
from types import ModuleType


class _Hidden:
    """A meta path finder that answers for the hidden modules first: there are none."""

    def __init__(self, names: tuple[str, ...]) -> None:
        self.names = names

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        if any(fullname == name or fullname.startswith(name + ".") for name in self.names):
            raise ModuleNotFoundError(f"No module named {fullname!r}", name=fullname)
        return None


_names = tuple(filter(None, os.environ.get("EMOTION_TEST_HIDDEN", "").split(",")))
if _names:
    sys.meta_path.insert(0, _Hidden(_names))
