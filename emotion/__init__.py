"""Typed gRPC inference for facial emotion recognition.

The message classes are generated from protos/emotion/v1/emotion.proto; a model
subclasses :class:`Model` and returns a :class:`Response`.

Names are resolved on first use (PEP 562): a client program that imports
:class:`Client` loads no server, and an inference process loads only what it runs.
"""

import importlib as _importlib
import typing as _typing

if _typing.TYPE_CHECKING:
    from emotion.client import Client, SyncClient
    from emotion.codec import InvalidMessage
    from emotion.config import ClientTls, ConnectionPolicy, Limits, RetryPolicy, ServerConfig
    from emotion.contract import (
        BBox,
        Expression,
        Landmarks,
        Options,
        PipelineStub,
        Point,
        Request,
        Response,
        Result,
        Tracking,
    )
    from emotion.model import Model, ModelLoadError, load_model
    from emotion.serving.server import Server

#: Each public name, and the module that defines it.
_HOMES = {
    "BBox": "emotion.contract",
    "Client": "emotion.client",
    "ClientTls": "emotion.config",
    "ConnectionPolicy": "emotion.config",
    "Expression": "emotion.contract",
    "InvalidMessage": "emotion.codec",
    "Landmarks": "emotion.contract",
    "Limits": "emotion.config",
    "Model": "emotion.model",
    "ModelLoadError": "emotion.model",
    "Options": "emotion.contract",
    "PipelineStub": "emotion.contract",
    "Point": "emotion.contract",
    "Request": "emotion.contract",
    "Response": "emotion.contract",
    "Result": "emotion.contract",
    "RetryPolicy": "emotion.config",
    "Server": "emotion.serving.server",
    "ServerConfig": "emotion.config",
    "SyncClient": "emotion.client",
    "Tracking": "emotion.contract",
    "load_model": "emotion.model",
}

__all__ = [
    "BBox",
    "Client",
    "ClientTls",
    "ConnectionPolicy",
    "Expression",
    "InvalidMessage",
    "Landmarks",
    "Limits",
    "Model",
    "ModelLoadError",
    "Options",
    "PipelineStub",
    "Point",
    "Request",
    "Response",
    "Result",
    "RetryPolicy",
    "Server",
    "ServerConfig",
    "SyncClient",
    "Tracking",
    "load_model",
]


def __getattr__(name: str) -> object:
    try:
        home = _HOMES[name]
    except KeyError:
        raise AttributeError(f"module 'emotion' has no attribute {name!r}") from None
    value = getattr(_importlib.import_module(home), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
