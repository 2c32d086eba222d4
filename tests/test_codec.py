"""Messages are read with protobuf's parser: valid ones exactly, broken ones refused by name."""

from __future__ import annotations

import struct
from dataclasses import dataclass

import betterproto2
import hypothesis
import hypothesis.strategies as st
import numpy as np
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.descriptor import Descriptor
from grpclib.health.v1.health_pb2 import HealthCheckRequest
from support.fuzzing import examples

from emotion.codec import BY_HAND, Encoded, InvalidMessage, ProtobufCodec, encode, parse
from emotion.contract import BBox, Expression, Request, Response, Result

VARINT_ONE = b"\x08\x01"  # field 1, wire type varint, value 1
FIXED64 = b"\x09" + bytes(8)  # field 1, wire type 64-bit
FIXED32 = b"\x0d" + bytes(4)  # field 1, wire type 32-bit
IMAGE = b"\x0a\x03abc"  # field 1, length-delimited: image=b"abc"


@pytest.mark.parametrize(
    ("data", "wire_type"),
    [
        (VARINT_ONE, "varint"),
        (FIXED64, "64-bit"),
        (FIXED32, "32-bit"),
        (VARINT_ONE + IMAGE, "varint"),
        (IMAGE + VARINT_ONE, "varint"),
    ],
)
def test_a_known_field_with_another_wire_type_is_refused_by_name(
    data: bytes, wire_type: str
) -> None:
    with pytest.raises(InvalidMessage) as caught:
        parse(Request, data)

    assert str(caught.value) == (
        f"not a valid emotion.v1.Request: image (field 1) has wire type {wire_type}, "
        "but it is a bytes (length-delimited) field; was the sender built from another .proto?"
    )


def test_a_wrong_wire_type_deep_in_a_response_names_the_path_to_the_field() -> None:
    bad_result = b"\x0a\x05" + b"\x0a\x03" + b"\x0a\x01x"  # bbox.x1 sent as bytes
    data = bytes(Response(response=[Result()])) + b"\x0a" + bytes([len(bad_result)]) + bad_result

    with pytest.raises(InvalidMessage) as caught:
        parse(Response, data)

    assert caught.value.type_name == "emotion.v1.Response"
    assert caught.value.reason.startswith(
        "response[1].bbox.x1 (field 1) has wire type length-delimited, but it is a float (32-bit)"
    )


@pytest.mark.parametrize(
    "data",
    [
        b"\x0a\x05ab",  # a field longer than the message
        b"\x0a",  # a tag without its length
        b"\x0b",  # a group that never ends
        b"\x07",  # wire type 7 does not exist
        b"\xff" * 11,  # a varint tag past 10 bytes
        b"\x00\x01",  # field number 0
    ],
)
def test_a_broken_encoding_is_refused(data: bytes) -> None:
    with pytest.raises(InvalidMessage) as caught:
        parse(Request, data)

    assert caught.value.reason.startswith("the protobuf encoding is broken")


def test_unknown_field_numbers_are_skipped_so_peers_can_add_fields() -> None:
    # Fields 12 (varint), 13 (bytes) and 14 (32-bit), which no version of Request has yet.
    newer = b"\x60\x05" + b"\x6a\x02hi" + IMAGE + b"\x75" + struct.pack("<f", 1.5)

    assert parse(Request, newer) == Request(image=b"abc")


def test_an_empty_message_is_all_defaults() -> None:
    assert parse(Response, b"") == Response()
    assert parse(Request, b"").image == b""


def test_repeated_fields_nested_messages_and_unset_submessages_survive() -> None:
    response = Response(
        response=[
            Result(bbox=BBox(1.5, 2, 3, 4), expression=Expression(happiness=0.75, fear=0.25)),
            Result(),
            Result(expression=Expression()),
        ]
    )

    parsed = parse(Response, bytes(response))

    assert parsed == response
    assert parsed.response[1].bbox is None
    assert parsed.response[2].expression == Expression()
    assert isinstance(parsed.response[0].bbox, BBox)


float32 = st.floats(width=32, allow_nan=False)


@hypothesis.given(
    st.lists(
        st.builds(
            Result,
            bbox=st.none() | st.builds(BBox, float32, float32, float32, float32),
            expression=st.none() | st.builds(Expression, *[float32] * 7),
        ),
        max_size=8,
    )
)
@hypothesis.settings(max_examples=examples(100))
def test_fuzz_every_response_reads_back_as_written(results: list[Result]) -> None:
    response = Response(response=results)

    written = encode(response)

    assert parse(Response, written) == response
    assert parse(Response, bytes(response)) == response
    # protobuf keeps the sign of -0.0, which betterproto2 drops as equal to the default.
    if b"\x00\x00\x00\x80" not in written:
        assert written == bytes(response)


def test_encoding_writes_present_empty_messages_and_refuses_values_of_the_wrong_type() -> None:
    assert encode(Response(response=[Result(bbox=BBox())])) == b"\n\x02\n\x00"
    assert encode(Request()) == b""
    with pytest.raises(struct.error):
        encode(Response(response=[Result(bbox=BBox(x1="left"))]))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "message",
    [
        # numpy.asarray gives a 0-d array, which protobuf refuses in a float field.
        Response(response=[Result(bbox=BBox(x1=np.asarray(1.5), x2=np.float32(2.5)))]),  # type: ignore[arg-type]
        Request(image=bytearray(b"\xff\xd8")),  # type: ignore[arg-type]
        Request(image=memoryview(b"\xff\xd8")),  # type: ignore[arg-type]
    ],
)
def test_values_that_betterproto2_converts_are_written_as_it_writes_them(
    message: Response | Request,
) -> None:
    assert encode(message) == bytes(message)


@hypothesis.given(st.binary(max_size=64))
@hypothesis.example(VARINT_ONE)
@hypothesis.example(FIXED64)
@hypothesis.example(FIXED32)
@hypothesis.example(VARINT_ONE + IMAGE)
@hypothesis.settings(max_examples=examples(300))
def test_fuzz_any_bytes_give_a_request_with_bytes_or_invalid_message(data: bytes) -> None:
    outcome: Request | InvalidMessage
    try:
        outcome = parse(Request, data)
    except InvalidMessage as exc:
        outcome = exc

    if isinstance(outcome, InvalidMessage):
        assert outcome.type_name == "emotion.v1.Request"
    else:
        assert isinstance(outcome.image, bytes)


def test_the_codec_writes_generated_messages_and_leaves_protobuf_ones_to_protobuf() -> None:
    codec = ProtobufCodec()
    health = HealthCheckRequest(service="emotion.v1.Pipeline")

    assert codec.decode(codec.encode(health, HealthCheckRequest), HealthCheckRequest) == health
    assert codec.decode(codec.encode(Request(image=b"x"), Request), Request) == Request(b"x")
    with pytest.raises(TypeError):
        codec.encode(Response(), Request)
    with pytest.raises(InvalidMessage):
        codec.decode(VARINT_ONE, Request)


def test_a_message_encoded_beforehand_is_sent_as_its_bytes() -> None:
    response = Response(response=[Result(bbox=BBox(x1=1.0, y1=2.0, x2=3.0, y2=4.0))])

    sent = ProtobufCodec().encode(Encoded(bytes(response)), Response)

    assert sent == bytes(response)
    assert parse(Response, sent) == response


_FIELD = descriptor_pb2.FieldDescriptorProto

# Field kinds emotion.proto lacks, declared as betterproto2's compiler writes them.
_TEST_PROTO = descriptor_pb2.FileDescriptorProto(
    name="codec_test.proto",
    package="codectest",
    syntax="proto3",
    enum_type=[
        descriptor_pb2.EnumDescriptorProto(
            name="Mood",
            value=[
                descriptor_pb2.EnumValueDescriptorProto(name="MOOD_UNSPECIFIED", number=0),
                descriptor_pb2.EnumValueDescriptorProto(name="MOOD_GLAD", number=1),
                descriptor_pb2.EnumValueDescriptorProto(name="MOOD_SAD", number=2),
            ],
        )
    ],
    message_type=[
        descriptor_pb2.DescriptorProto(
            name="Moods",
            field=[
                _FIELD(
                    name="mood",
                    number=1,
                    type=_FIELD.TYPE_ENUM,
                    type_name=".codectest.Mood",
                    label=_FIELD.LABEL_OPTIONAL,
                ),
                _FIELD(
                    name="history",
                    number=2,
                    type=_FIELD.TYPE_ENUM,
                    type_name=".codectest.Mood",
                    label=_FIELD.LABEL_REPEATED,
                ),
            ],
        ),
        descriptor_pb2.DescriptorProto(
            name="Parcel",
            field=[
                _FIELD(
                    name="label", number=1, type=_FIELD.TYPE_STRING, label=_FIELD.LABEL_OPTIONAL
                ),
                _FIELD(name="blob", number=2, type=_FIELD.TYPE_BYTES, label=_FIELD.LABEL_OPTIONAL),
                _FIELD(name="count", number=3, type=_FIELD.TYPE_INT32, label=_FIELD.LABEL_OPTIONAL),
                _FIELD(name="spare", number=4, type=_FIELD.TYPE_BYTES, label=_FIELD.LABEL_OPTIONAL),
            ],
        ),
        descriptor_pb2.DescriptorProto(
            name="Tagged",
            field=[
                _FIELD(
                    name="tags",
                    number=1,
                    type=_FIELD.TYPE_MESSAGE,
                    type_name=".codectest.Tagged.TagsEntry",
                    label=_FIELD.LABEL_REPEATED,
                )
            ],
            nested_type=[
                descriptor_pb2.DescriptorProto(
                    name="TagsEntry",
                    field=[
                        _FIELD(
                            name="key",
                            number=1,
                            type=_FIELD.TYPE_STRING,
                            label=_FIELD.LABEL_OPTIONAL,
                        ),
                        _FIELD(
                            name="value",
                            number=2,
                            type=_FIELD.TYPE_INT32,
                            label=_FIELD.LABEL_OPTIONAL,
                        ),
                    ],
                    options=descriptor_pb2.MessageOptions(map_entry=True),
                )
            ],
        ),
    ],
)
_TEST_POOL = descriptor_pool.DescriptorPool()
_TEST_POOL.Add(_TEST_PROTO)


class Mood(betterproto2.Enum):
    UNSPECIFIED = 0
    GLAD = 1
    SAD = 2


@dataclass(eq=False, repr=False)
class Moods(betterproto2.Message):
    @betterproto2.staticproperty
    @staticmethod
    def DESCRIPTOR() -> Descriptor:
        return _TEST_POOL.FindMessageTypeByName("codectest.Moods")

    mood: Mood = betterproto2.field(1, betterproto2.TYPE_ENUM, default_factory=lambda: Mood(0))  # noqa: RUF009
    history: list[Mood] = betterproto2.field(2, betterproto2.TYPE_ENUM, repeated=True)  # noqa: RUF009


@dataclass(eq=False, repr=False)
class Parcel(betterproto2.Message):
    @betterproto2.staticproperty
    @staticmethod
    def DESCRIPTOR() -> Descriptor:
        return _TEST_POOL.FindMessageTypeByName("codectest.Parcel")

    label: str = betterproto2.field(1, betterproto2.TYPE_STRING)
    blob: bytes = betterproto2.field(2, betterproto2.TYPE_BYTES)
    count: int = betterproto2.field(3, betterproto2.TYPE_INT32)
    spare: bytes = betterproto2.field(4, betterproto2.TYPE_BYTES)


@dataclass(eq=False, repr=False)
class Tagged(betterproto2.Message):
    @betterproto2.staticproperty
    @staticmethod
    def DESCRIPTOR() -> Descriptor:
        return _TEST_POOL.FindMessageTypeByName("codectest.Tagged")

    tags: dict[str, int] = betterproto2.field(  # noqa: RUF009
        1,
        betterproto2.TYPE_MAP,
        map_meta=betterproto2.map_meta(betterproto2.TYPE_STRING, betterproto2.TYPE_INT32),
    )


def test_enum_fields_read_back_as_members_of_their_enum() -> None:
    moods = Moods(mood=Mood.SAD, history=[Mood.GLAD, Mood.SAD])

    read = parse(Moods, encode(moods))

    assert read == moods
    assert type(read.mood) is Mood
    assert [type(item) for item in read.history] == [Mood, Mood]


def test_a_message_with_a_map_field_is_refused_by_name() -> None:
    with pytest.raises(TypeError, match=r"codectest\.Tagged\.tags: map"):
        parse(Tagged, b"")


@pytest.mark.parametrize("size", [0, 1, 127, 128, BY_HAND - 1, BY_HAND, 300_000, 3_000_000])
def test_a_framed_request_is_grpcs_prefix_and_protobufs_bytes(size: int) -> None:
    request = Request(image=bytes(range(256)) * (size // 256) + bytes(size % 256))

    sent = ProtobufCodec().framed(request, Request)

    assert sent == b"\0" + struct.pack(">I", len(encode(request))) + encode(request)
    assert parse(Request, sent[5:]) == request


@pytest.mark.parametrize("blob", [b"", b"small", bytes(BY_HAND), b"\xff" * 200_000])
def test_a_framed_message_reads_back_whichever_of_its_bytes_fields_are_written_by_hand(
    blob: bytes,
) -> None:
    parcel = Parcel(label="two", blob=blob, count=7, spare=b"s" * BY_HAND * 2)

    sent = ProtobufCodec().framed(parcel, Parcel)

    assert struct.unpack(">?I", sent[:5]) == (False, len(sent) - 5)
    assert len(sent) == 5 + len(encode(parcel))
    assert parse(Parcel, sent[5:]) == parcel
