"""The contract on the wire: clients built from the original contract get the same answers."""

from __future__ import annotations

import asyncio
import hashlib
import importlib
import importlib.util
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import grpc
import pytest
from conftest import TESTS, StartServer
from google.protobuf.descriptor_pb2 import FileDescriptorSet
from grpc_tools import protoc
from grpclib.client import Channel
from support.original import ORIGINAL, generated
from support.sample_models import ConfidentModel, SizeModel

from emotion import BBox, Expression, PipelineStub, Request, Response, Result, Server
from emotion.contract import EXPRESSION_FIELDS, FILE_DESCRIPTOR, ModelVersion
from emotion.decode import decode_image

PROTOS = TESTS.parent / "protos"
GENERATED = Path(sys.modules["emotion.contract"].__file__ or "").parent / "_generated"


@pytest.fixture(scope="module")
def original(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ModuleType, ModuleType]]:
    """Modules protoc generates for grpcio from the original contract."""
    with generated(tmp_path_factory.mktemp("original")) as modules:
        yield modules


def test_expression_fields_are_the_seven_expressions_in_contract_order() -> None:
    # Tables and JSON list the scores in this order; ties go to the first.
    assert EXPRESSION_FIELDS == (
        "neutral",
        "anger",
        "disgust",
        "fear",
        "happiness",
        "sadness",
        "surprise",
    )


def test_messages_encode_to_identical_bytes(original: tuple[ModuleType, Any]) -> None:
    pb2, _ = original
    ours = Response(
        response=[
            Result(
                bbox=BBox(x1=1.25, y1=2.5, x2=300, y2=400.75),
                expression=Expression(
                    **{name: (i + 1) / 28 for i, name in enumerate(EXPRESSION_FIELDS)}
                ),
            ),
            Result(bbox=BBox(), expression=Expression(surprise=1)),
        ]
    )
    theirs = pb2.Response(
        response=[
            pb2.Result(
                bbox=pb2.BBox(x1=1.25, y1=2.5, x2=300, y2=400.75),
                expression=pb2.Expression(
                    **{n: (i + 1) / 28 for i, n in enumerate(EXPRESSION_FIELDS)}
                ),
            ),
            pb2.Result(bbox=pb2.BBox(), expression=pb2.Expression(surprise=1)),
        ]
    )

    assert bytes(ours) == theirs.SerializeToString()
    assert bytes(Response.parse(theirs.SerializeToString())) == bytes(ours)
    assert (
        bytes(Request(image=b"\xff\xd8jpeg"))
        == pb2.Request(image=b"\xff\xd8jpeg").SerializeToString()
    )


def test_field_numbers_match_the_original_contract(original: tuple[ModuleType, Any]) -> None:
    # Every original field keeps its name, number and type; fields added since
    # take numbers of their own.
    pb2, _ = original
    for name in ("BBox", "Expression", "Result", "Request", "Response"):
        theirs = {
            f.name: (f.number, f.type, f.is_repeated) for f in getattr(pb2, name).DESCRIPTOR.fields
        }
        ours_descriptor = getattr(sys.modules["emotion.contract"], name).DESCRIPTOR
        ours = {f.name: (f.number, f.type, f.is_repeated) for f in ours_descriptor.fields}
        assert {field: ours.get(field) for field in theirs} == theirs, name
        added = {number for field, (number, _, _) in ours.items() if field not in theirs}
        assert not added & {number for number, _, _ in theirs.values()}, name


async def test_a_grpcio_client_of_the_original_contract_gets_the_same_answer(
    original: tuple[ModuleType, Any],
    start_server: StartServer,
    connect: Callable[[Server], Channel],
    jpeg: bytes,
) -> None:
    pb2, pb2_grpc = original
    server = await start_server(SizeModel())

    def call_with_grpcio() -> bytes:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            reply = pb2_grpc.PipelineStub(channel).run_pipeline(pb2.Request(image=jpeg), timeout=10)
            return bytes(reply.SerializeToString())

    theirs = await asyncio.to_thread(call_with_grpcio)
    ours = await PipelineStub(connect(server)).run_pipeline(Request(image=jpeg), timeout=10)

    assert len(ours.response) == 2
    assert Response.parse(theirs) == ours
    assert theirs == bytes(ours)


#: The original contract as the blog post published it: a test that keeps old
#: clients working must keep testing them against that contract, not an edited copy.
ORIGINAL_SHA256 = "6bd8764fc048ab819e243ed200623fe453161451cef033f988ea9bc55f28ff4f"


def test_the_original_contract_kept_here_is_the_original() -> None:
    data = (ORIGINAL / "emotion.proto").read_bytes()

    assert hashlib.sha256(data).hexdigest() == ORIGINAL_SHA256
    assert b"rpc run_pipeline (Request) returns (Response) {}" in data


def _original_call(pb2: ModuleType, pb2_grpc: Any, port: int, image: bytes) -> Any:
    """RunPipeline as the original contract's grpcio client makes it: its parsed reply."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        return pb2_grpc.PipelineStub(channel).run_pipeline(pb2.Request(image=image), timeout=30)


async def test_an_original_client_reads_today_what_it_read_before_the_contract_grew(
    original: tuple[ModuleType, Any], start_server: StartServer, jpeg: bytes
) -> None:
    # A model that fills no new field: what the server sent before the contract
    # grew is the model's own answer, written; the original client gets exactly
    # that, followed by the model's name, a field it skips (protobuf keeps it
    # aside as an unknown field).
    pb2, pb2_grpc = original
    model = SizeModel()
    before = bytes(model.process_sample(decode_image(jpeg)))
    server = await start_server(model)

    reply = await asyncio.to_thread(_original_call, pb2, pb2_grpc, server.port, jpeg)

    assert reply.SerializeToString() == before + bytes(
        Response(model=ModelVersion(name="SizeModel"))
    )
    assert len(reply.response) == 2
    reply.DiscardUnknownFields()
    assert reply.SerializeToString() == before


async def test_an_original_client_reads_the_fields_it_knows_of_a_model_that_fills_new_ones(
    original: tuple[ModuleType, Any], start_server: StartServer, jpeg: bytes
) -> None:
    pb2, pb2_grpc = original
    model = ConfidentModel()
    answer = model.process_sample(decode_image(jpeg))
    known = Response(
        response=[Result(bbox=face.bbox, expression=face.expression) for face in answer.response]
    )
    server = await start_server(model)

    reply = await asyncio.to_thread(_original_call, pb2, pb2_grpc, server.port, jpeg)

    assert [face.bbox.x1 for face in reply.response] == [1, 2, 3, 4]  # as the model gave them
    reply.DiscardUnknownFields()
    assert reply.SerializeToString() == bytes(known)


def test_generated_package_is_marked_and_not_hand_edited() -> None:
    codegen = _load_codegen()
    module = (GENERATED / "emotion" / "v1" / "__init__.py").read_text()

    assert module.startswith("# Generated by the protocol buffer compiler.  DO NOT EDIT!")
    # The README carries the digest tools/codegen.py took of the files it wrote:
    # any change made to them since, by hand or by a formatter, shows here.
    assert (GENERATED / "README").read_text() == codegen.readme(GENERATED), (
        "emotion/_generated differs from what tools/codegen.py wrote: run `tox -e generate`"
    )


def test_generated_package_embeds_the_descriptor_of_protos(tmp_path: Path) -> None:
    # The generated code is current with protos/ (the compiler plugin is not a
    # test dependency, so `tox -e generated` regenerates; this compares the
    # file descriptor the package embeds with what protoc makes of protos/ now).
    descriptors = tmp_path / "emotion.pb"
    assert (
        protoc.main(
            [
                "protoc",
                f"-I{PROTOS}",
                f"--descriptor_set_out={descriptors}",
                str(PROTOS / "emotion" / "v1" / "emotion.proto"),
            ]
        )
        == 0
    )

    (current,) = FileDescriptorSet.FromString(descriptors.read_bytes()).file

    assert current.name == FILE_DESCRIPTOR.name
    assert current.SerializeToString() == FILE_DESCRIPTOR.serialized_pb


def _load_codegen() -> ModuleType:
    """tools/codegen.py, which is a script rather than a module on the path."""
    spec = importlib.util.spec_from_file_location("codegen", TESTS.parent / "tools" / "codegen.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
