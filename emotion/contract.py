"""The emotion.v1 contract, as generated from protos/emotion/v1/emotion.proto.

Every other module imports messages, the service base and the stub from here,
so the generated package's layout is known in exactly one place.
"""

import dataclasses

from emotion._generated.emotion.v1 import (
    EMOTION_V1_EMOTION_PROTO_DESCRIPTOR,
    BBox,
    DescribeRequest,
    DescribeResponse,
    Expression,
    Landmarks,
    ModelDescription,
    ModelVersion,
    Options,
    PipelineBase,
    PipelineStub,
    Point,
    Request,
    Response,
    Result,
    ServerLimits,
    StreamSummary,
    Tracking,
    TrackSummary,
)

#: The `emotion.v1.Pipeline` method path the generated stub calls.
RUN_PIPELINE_PATH = "/emotion.v1.Pipeline/RunPipeline"

#: The streaming method: many images in, one Response per image out, in order.
STREAM_PIPELINE_PATH = "/emotion.v1.Pipeline/StreamPipeline"

#: What the server serves and accepts: model, version, limits.
DESCRIBE_PATH = "/emotion.v1.Pipeline/Describe"

#: The method path a client generated from the original contract calls: that
#: contract spelled the RPC `run_pipeline`. Served as an alias so those clients
#: keep working; new clients use RUN_PIPELINE_PATH.
LEGACY_RUN_PIPELINE_PATH = "/emotion.v1.Pipeline/run_pipeline"

#: Protobuf file descriptor of emotion.proto, for server reflection.
FILE_DESCRIPTOR = EMOTION_V1_EMOTION_PROTO_DESCRIPTOR

#: The Expression fields in the order emotion.proto declares them (read from
#: the generated dataclass, so a field added to the contract appears here).
EXPRESSION_FIELDS: tuple[str, ...] = tuple(field.name for field in dataclasses.fields(Expression))

#: The Landmarks points in the order emotion.proto declares them.
LANDMARK_FIELDS: tuple[str, ...] = tuple(field.name for field in dataclasses.fields(Landmarks))

__all__ = [
    "DESCRIBE_PATH",
    "EXPRESSION_FIELDS",
    "FILE_DESCRIPTOR",
    "LANDMARK_FIELDS",
    "LEGACY_RUN_PIPELINE_PATH",
    "RUN_PIPELINE_PATH",
    "STREAM_PIPELINE_PATH",
    "BBox",
    "DescribeRequest",
    "DescribeResponse",
    "Expression",
    "Landmarks",
    "ModelDescription",
    "ModelVersion",
    "Options",
    "PipelineBase",
    "PipelineStub",
    "Point",
    "Request",
    "Response",
    "Result",
    "ServerLimits",
    "StreamSummary",
    "TrackSummary",
    "Tracking",
]
