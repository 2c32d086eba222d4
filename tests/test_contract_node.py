"""Old callers in another language: a Node.js client of the original contract is answered as before.

tests/test_contract.py does this for a grpcio client; a second protobuf runtime
(protobuf.js, by way of @grpc/proto-loader and @grpc/grpc-js) shows the answer
does not depend on how one library happens to treat fields it does not know.
`tox -e proto` installs the Node packages (`npm ci`) and runs this file.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import grpc
import pytest
from conftest import TESTS
from support.original import ORIGINAL, generated
from support.served import PIPE, start_serving

from emotion import Response

NODE_CLIENT = ORIGINAL / "node_client.js"
GROUP = TESTS / "fixtures" / "group.jpg"

pytestmark = [
    pytest.mark.subprocess,
    pytest.mark.skipif(
        not (TESTS.parent / "node_modules" / "@grpc" / "grpc-js").is_dir(),
        reason="node_modules/@grpc/grpc-js is missing: run `npm ci` (`tox -e proto` does)",
    ),
]


@pytest.fixture(scope="module")
def original(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ModuleType, Any]]:
    """Modules protoc generates for grpcio from the original contract."""
    with generated(tmp_path_factory.mktemp("original")) as modules:
        yield modules


def as_json(message: Any) -> Any:
    """A protobuf message as the Node client prints it: every field, a missing message as null."""
    fields: dict[str, Any] = {}
    for field in message.DESCRIPTOR.fields:
        value = getattr(message, field.name)
        if field.is_repeated:
            value = [as_json(item) for item in value]
        elif field.message_type is not None:
            value = as_json(value) if message.HasField(field.name) else None
        fields[field.name] = value
    return fields


def call_with_grpcio(original: tuple[ModuleType, Any], target: str, image: bytes) -> Any:
    pb2, pb2_grpc = original
    with grpc.insecure_channel(target) as channel:
        return pb2_grpc.PipelineStub(channel).run_pipeline(pb2.Request(image=image), timeout=30)


async def call_with_node(target: str) -> Any:
    node = await asyncio.create_subprocess_exec(
        "node", str(NODE_CLIENT), target, str(GROUP), stdout=PIPE, stderr=PIPE
    )
    out, err = await asyncio.wait_for(node.communicate(), 60)
    assert node.returncode == 0, err.decode()
    return json.loads(out)


async def test_a_node_client_of_the_original_contract_gets_what_a_grpcio_one_gets(
    original: tuple[ModuleType, Any],
) -> None:
    # The default model, which fills every field added since: confidence and
    # landmarks on each face, and the model's name on the answer.
    served = await start_serving()
    try:
        theirs = await call_with_node(served.target)
        reply = await asyncio.to_thread(
            call_with_grpcio, original, served.target, GROUP.read_bytes()
        )
    finally:
        await served.stop()

    # The server did send the new fields: grpcio kept them aside, unread, and
    # today's contract reads them from the bytes it kept.
    today = Response.parse(reply.SerializeToString())
    assert today.model is not None
    assert today.model.name == "fer"
    assert len(today.response) == 4
    assert all(face.confidence and face.landmarks for face in today.response)

    # The Node client read the same faces, boxes and scores, floats as decoded,
    # and nothing else: the fields it does not know stay out of its answer.
    assert theirs == as_json(reply)
    assert set(theirs) == {"response"}
    assert [set(face) for face in theirs["response"]] == [{"bbox", "expression"}] * 4
    assert [face["bbox"]["x1"] for face in theirs["response"]] == [
        face.bbox.x1 for face in today.response if face.bbox
    ]
