"""Typed gRPC inference for facial emotion recognition.

The message classes are generated from protos/emotion/v1/emotion.proto; a model
subclasses :class:`Model` and returns a :class:`Response`.
"""

from emotion.client.client import Client
from emotion.codec import InvalidMessage
from emotion.config import ClientTls, Limits, ServerConfig
from emotion.contract import BBox, Expression, PipelineStub, Request, Response, Result
from emotion.model import Model, ModelLoadError, load_model
from emotion.serving.server import Server

__all__ = [
    "BBox",
    "Client",
    "ClientTls",
    "Expression",
    "InvalidMessage",
    "Limits",
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
