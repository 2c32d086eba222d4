"""Typed gRPC inference for facial emotion recognition.

The message classes are generated from protos/emotion/v1/emotion.proto; a model
subclasses :class:`Model` and returns a :class:`Response`.
"""

from emotion.client import Client
from emotion.config import ServerConfig
from emotion.contract import BBox, Expression, PipelineStub, Request, Response, Result
from emotion.model import Model, ModelLoadError, load_model
from emotion.server import Server

__all__ = [
    "BBox",
    "Client",
    "Expression",
    "Model",
    "ModelLoadError",
    "PipelineStub",
    "Request",
    "Response",
    "Result",
    "Server",
    "ServerConfig",
    "load_model",
]
