"""The original contract (tests/original_contract/emotion.proto), as its grpcio callers have it."""

from __future__ import annotations

import contextlib
import importlib
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

from grpc_tools import protoc

ORIGINAL = Path(__file__).resolve().parent.parent / "original_contract"


@contextlib.contextmanager
def generated(out: Path) -> Iterator[tuple[ModuleType, ModuleType]]:
    """The modules protoc generates into ``out`` for grpcio: emotion_pb2 and emotion_pb2_grpc."""
    arguments = [f"-I{ORIGINAL}", f"--python_out={out}", f"--grpc_python_out={out}"]
    assert protoc.main(["protoc", *arguments, str(ORIGINAL / "emotion.proto")]) == 0
    sys.path.insert(0, str(out))
    try:
        yield importlib.import_module("emotion_pb2"), importlib.import_module("emotion_pb2_grpc")
    finally:
        sys.path.remove(str(out))
        sys.modules.pop("emotion_pb2", None)
        sys.modules.pop("emotion_pb2_grpc", None)
