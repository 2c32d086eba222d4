"""Ask a server what it serves through grpcio's reflection client, as grpcurl does.

Runs as a subprocess: grpcio-reflection and grpclib register the same
reflection protos, which protobuf refuses to hold twice in one process.
Prints JSON: the listed services, the methods of each, and the fields of
the messages a caller reads by name.
"""

import json
import sys

import grpc
from google.protobuf.descriptor_pool import DescriptorPool
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)


def main(target: str) -> None:
    with grpc.insecure_channel(target) as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        services = sorted(database.get_services())
        pool = DescriptorPool(database)
        methods = {
            name: [method.name for method in pool.FindServiceByName(name).methods]
            for name in services
        }
        fields = {
            name: [f.name for f in pool.FindMessageTypeByName(f"emotion.v1.{name}").fields]
            for name in ("Expression", "Result", "Request", "Response", "DescribeResponse")
        }
        describe = pool.FindMethodByName("emotion.v1.Pipeline.Describe")
        types = [describe.input_type.full_name, describe.output_type.full_name]
    found = {"services": services, "methods": methods, "fields": fields, "describe": types}
    print(json.dumps(found))


if __name__ == "__main__":
    main(sys.argv[1])
